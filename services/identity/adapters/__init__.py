"""Everything identity does that touches the outside: the store, the hash, the signing keys, counters."""

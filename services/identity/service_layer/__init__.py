"""Identity's handlers: load, decide (with the domain rules), store (state and events in one write)."""

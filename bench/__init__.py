"""Benchmarks (``make bench``): measured on this machine, in one run, never as timed tests."""

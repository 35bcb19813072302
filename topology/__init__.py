"""Topology model, parsers and the exact GPU-set allocator. Pure: no I/O libraries."""

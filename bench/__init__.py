"""Performance benchmarks of the coordinator against the bare docker SDK (``make bench``)."""

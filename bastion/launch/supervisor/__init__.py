"""The multi-port external load-balancing mode: one server per rank, probed and restarted."""

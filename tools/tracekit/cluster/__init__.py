"""Whole clusters on one machine: network namespaces, the process supervisor, a private Redis, the demo, the
chaos run, real-cluster setup and synthetic logs. The top layer: may import every other area."""

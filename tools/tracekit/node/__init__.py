"""What runs on one node: the adapter around an application, CPU binding and cgroups, /proc readers, the
collector and its PID sentinels, node metadata and test clips. Imports only ``core``."""

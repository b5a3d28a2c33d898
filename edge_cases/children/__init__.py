"""Small programs the scenarios run as real processes (a daemon that ignores SIGTERM, idlers)."""

# What the GPU-failure scenario's watchdog (`gpu_watchdog`) says of GPU1: SIMULATED.
LOST_GPU_FINDING = "Xid 79: GPU has fallen off the bus (SIMULATED)"

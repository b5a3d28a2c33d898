"""Small programs the scenarios run as real processes (a daemon that ignores SIGTERM, idlers)."""

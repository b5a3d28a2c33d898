"""study-runner: hundreds of independent experiments that survive each other's failures."""

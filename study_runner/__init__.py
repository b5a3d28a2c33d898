"""study-runner: hundreds of independent experiments that survive each other's failures."""

from study_runner.executor import ResilientExecutor

__all__ = ["ResilientExecutor"]

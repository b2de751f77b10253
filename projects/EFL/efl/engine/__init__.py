"""Trainer pieces of the EFL project: hooks, the checkpointer, and the LazyConfig training path (lazy.py)."""
from .checkpoint import EFLCheckpointer
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .lazy import launch_lazy_config

__all__ = [
    "EFLCheckpointer",
    "FULL_MODEL",
    "FullModelGradientClipping",
    "ReportNonFiniteStatistics",
    "RevertStatisticsOfSkippedSteps",
    "launch_lazy_config",
]

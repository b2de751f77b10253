"""Trainer pieces of the EFL project: hooks and the checkpointer."""
from .checkpoint import EFLCheckpointer
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps

__all__ = [
    "EFLCheckpointer",
    "FULL_MODEL",
    "FullModelGradientClipping",
    "ReportNonFiniteStatistics",
    "RevertStatisticsOfSkippedSteps",
]

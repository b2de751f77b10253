"""Trainer pieces of the EFL project: hooks, the checkpointer and epoch-based schedules."""
from .checkpoint import EFLCheckpointer
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .schedule import EpochSchedule, resolve_epoch_schedule, with_epoch_schedule

__all__ = [
    "EFLCheckpointer",
    "EpochSchedule",
    "FULL_MODEL",
    "FullModelGradientClipping",
    "ReportNonFiniteStatistics",
    "RevertStatisticsOfSkippedSteps",
    "resolve_epoch_schedule",
    "with_epoch_schedule",
]

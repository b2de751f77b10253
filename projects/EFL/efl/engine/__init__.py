"""Trainer pieces of the EFL project: hooks, the checkpointer, epoch-based schedules, the output-directory lock
and the launcher."""
from .checkpoint import EFLCheckpointer, WeightsMismatchError
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .launch import launch
from .lock import OutputDirInUseError, OutputDirLock
from .schedule import EpochSchedule, resolve_epoch_schedule, with_epoch_schedule

__all__ = [
    "EFLCheckpointer",
    "EpochSchedule",
    "FULL_MODEL",
    "FullModelGradientClipping",
    "OutputDirInUseError",
    "OutputDirLock",
    "ReportNonFiniteStatistics",
    "RevertStatisticsOfSkippedSteps",
    "WeightsMismatchError",
    "launch",
    "resolve_epoch_schedule",
    "with_epoch_schedule",
]

"""
Trainer pieces of the EFL project: hooks, the checkpointer, epoch-based schedules, the output-directory lock, the
launcher, and the LazyConfig training path (lazy.py).
"""
from .checkpoint import EFLCheckpointer, WeightsMismatchError
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .launch import launch
from .lazy import launch_lazy_config
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
    "launch_lazy_config",
    "resolve_epoch_schedule",
    "with_epoch_schedule",
]

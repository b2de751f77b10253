"""Trainer pieces of the EFL project: hooks, the checkpointer, the output-directory lock and the launcher."""
from .checkpoint import EFLCheckpointer, WeightsMismatchError
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .launch import launch
from .lock import OutputDirInUseError, OutputDirLock

__all__ = [
    "EFLCheckpointer",
    "FULL_MODEL",
    "FullModelGradientClipping",
    "OutputDirInUseError",
    "OutputDirLock",
    "ReportNonFiniteStatistics",
    "RevertStatisticsOfSkippedSteps",
    "WeightsMismatchError",
    "launch",
]

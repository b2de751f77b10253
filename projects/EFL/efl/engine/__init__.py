"""
The one training path (training.py), built from plain values whichever config system they came from, and its
pieces: the checkpointer with safe loading, the hooks, schedules in epochs, the output directory's lock and the
launcher. Nothing here reads a config: the config front-ends (efl.config) turn a config into a Recipe.
"""
from .checkpoint import EFLCheckpointer, WeightsMismatchError, reset_efl_statistics
from .hooks import FULL_MODEL, FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .launch import launch, launch_run
from .lock import OutputDirInUseError, OutputDirLock
from .schedule import EpochSchedule, IterationSchedule, resolve_epoch_schedule
from .signals import EXIT_PREEMPTED, STOP_SIGNALS, Preempted
from .training import Recipe, RunSettings, TestSet, Training, build_training, evaluate, evaluate_weights, run, train

__all__ = [
    "EXIT_PREEMPTED",
    "EFLCheckpointer",
    "EpochSchedule",
    "FULL_MODEL",
    "FullModelGradientClipping",
    "IterationSchedule",
    "OutputDirInUseError",
    "OutputDirLock",
    "Preempted",
    "Recipe",
    "ReportNonFiniteStatistics",
    "RevertStatisticsOfSkippedSteps",
    "RunSettings",
    "STOP_SIGNALS",
    "TestSet",
    "Training",
    "WeightsMismatchError",
    "build_training",
    "evaluate",
    "evaluate_weights",
    "launch",
    "launch_run",
    "reset_efl_statistics",
    "resolve_epoch_schedule",
    "run",
    "train",
]

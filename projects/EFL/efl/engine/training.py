"""
The one training path of the project, for every config system: a :class:`Recipe` (what a config front-end turns
its config into: plain settings and the builders of the model, optimizer, training loader, LR schedule and test
sets) is trained or evaluated here, the same way whichever config it came from.

A run, in each process: register the datasets, detectron2's ``default_setup`` (logging, seed, config.yaml), then
- training: the training loader (resumable, skipping unreadable images, checking every annotation's class), the
  model (given its frequency groups), the optimizer, the schedule (epochs resolved into iterations from the
  loader's sampler), DistributedDataParallel, detectron2's SimpleTrainer or AMPTrainer with the project's hooks,
  EFLCheckpointer (safe, fitting, atomic, resuming from a readable file), and the sampler continued where the
  checkpoint left it;
- evaluation (``--eval-only``): the model, its weights loaded strictly and safely, every test set evaluated.
A stop signal (SIGTERM, SIGUSR1, SIGINT) ends a training with a checkpoint of its last completed iteration, and an
evaluation before it writes anything (efl.engine.signals).
"""
import abc
import logging
import os
import sys
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_setup, default_writers, hooks
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from fvcore.common.param_scheduler import ParamScheduler

from ..data import lvis_frequency_groups, naming_malformed_dataset_files, register_datasets
from ..data.train_loader import LoaderCall, ResumableSampler, build_resumable_train_loader
from ..errors import SettingNames
from .checkpoint import EFLCheckpointer, reset_efl_statistics
from .hooks import FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .schedule import EpochSchedule, IterationSchedule, resolve_and_log
from .signals import EXIT_PREEMPTED, Preempted, StopOnSignal, StoppableEvaluation, stopping_on_signals

__all__ = [
    "Recipe",
    "RunSettings",
    "TestSet",
    "Training",
    "build_training",
    "evaluate",
    "evaluate_weights",
    "run",
    "train",
]

logger = logging.getLogger(__name__)


class RunSettings(NamedTuple):
    """What a run is, in plain values (the builders of its parts are the :class:`Recipe`'s)."""

    names: SettingNames  # how messages name the settings
    output_dir: str
    device: str
    num_classes: Optional[int]  # the model's, when the config says (checks of the data)
    train_datasets: Tuple[str, ...]  # registered names, where the config names them
    test_datasets: Tuple[str, ...]
    register: Tuple[Tuple[str, str, str, str], ...]  # (name, format, json_file, image_root) to register
    batch_size: int  # images per iteration, all processes together
    max_iter: Optional[int]  # the length in iterations, unless ``epochs``
    epochs: Optional[EpochSchedule]  # the length in epochs, resolved when training starts
    weights: str  # to start from (or evaluate)
    allow_partial_weights: bool = False
    reset_efl_statistics: bool = False
    filter_empty: bool = True  # training images without annotations are left out
    amp: bool = False
    clip_gradients: Optional[Tuple[float, float]] = None  # (max_norm, norm_type) over all gradients together
    checkpoint_period: int = 5000
    max_to_keep: Optional[int] = None
    eval_period: int = 0  # 0: once, after the last iteration
    log_period: int = 20
    ddp: Mapping = {}  # DistributedDataParallel's keyword arguments


class TestSet(NamedTuple):
    """A dataset to evaluate on, and how to build its loader and evaluator (the loader first: it may generate the
    embedded synthetic set, whose annotations the evaluator reads)."""

    name: str
    build_loader: Callable[[], DataLoader]
    build_evaluator: Callable[[], DatasetEvaluator]


Scheduler = Union[ParamScheduler, torch.optim.lr_scheduler.LRScheduler]


class Recipe(abc.ABC):
    """
    A config, turned into what the engine runs: :attr:`settings` and the builders below, which run in each
    process. A config front-end (efl.config) implements one per config system; it must pickle (launch hands it to
    the worker processes).
    """

    settings: RunSettings
    #: the config as its system holds it, for detectron2's default_setup (config.yaml, seed, logging)
    config: object

    @abc.abstractmethod
    def build_model(self, frequency_groups: Optional[Sequence[int]]) -> nn.Module:
        """The model, on its device; an EFL detector gets ``frequency_groups`` (None for evaluation)."""

    @abc.abstractmethod
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer of ``model``'s parameters."""

    @abc.abstractmethod
    def train_loader(self) -> LoaderCall:
        """The training loader's build function and its arguments (``dataset`` as a list of records)."""

    @abc.abstractmethod
    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer, resolved: Optional[IterationSchedule]) -> Scheduler:
        """The LR schedule (an fvcore ParamScheduler or a torch LR scheduler), with ``resolved`` iterations when the
        settings count in epochs."""

    @abc.abstractmethod
    def test_sets(self) -> List[TestSet]:
        """The datasets to evaluate on."""

    @abc.abstractmethod
    def test_mapper(self) -> Callable[[Dict], Dict]:
        """The test loader's mapper (a DatasetMapper): how an image is resized and converted for the model, for
        inference outside a test loader (tools/predict.py, tools/export.py)."""


class Training(NamedTuple):
    """A training run ready to start: ``trainer.train(start_iter, max_iter)``."""

    trainer: SimpleTrainer  # or AMPTrainer, with the project's hooks
    checkpointer: EFLCheckpointer
    sampler: ResumableSampler  # the training loader's, continued where the loaded checkpoint left it
    start_iter: int
    max_iter: int


def build_training(recipe: Recipe, resume: bool, trust_pickle: bool = False) -> Training:
    """
    Everything :func:`train` runs, built and loaded: from ``recipe``'s weights, or with ``resume`` from the newest
    readable checkpoint of its output directory; ``trust_pickle``: its weights may be a file whose unpickling runs
    code.
    """
    settings = recipe.settings
    loader_call = recipe.train_loader()  # reads the training set, whose metadata the frequency groups come from
    groups = None
    if settings.train_datasets and settings.num_classes is not None:
        groups = lvis_frequency_groups(settings.train_datasets[0], settings.num_classes)
    model = recipe.build_model(groups)
    optimizer = recipe.build_optimizer(model)
    data_loader, sampler = build_resumable_train_loader(loader_call, getattr(model, "num_classes", None), settings.names)
    max_iter, resolved = settings.max_iter, None
    if settings.epochs is not None:
        resolved = resolve_and_log(
            settings.epochs, sampler.epoch_size, settings.batch_size, getattr(sampler.sampler, "rounding", None)
        )
        max_iter = resolved.max_iter
    scheduler = recipe.build_lr_scheduler(optimizer, resolved)
    on_gpu = next(model.parameters()).device.type == "cuda"
    # DistributedDataParallel gets device_ids only on GPUs: DDP refuses them for a model on the CPU (gloo).
    model = create_ddp_model(model, **{**settings.ddp, "device_ids": [comm.get_local_rank()] if on_gpu else None})
    trainer = (AMPTrainer if settings.amp else SimpleTrainer)(model, data_loader, optimizer)
    checkpointer = EFLCheckpointer(
        model,
        settings.output_dir,
        allow_partial=settings.allow_partial_weights,
        trust_pickle=trust_pickle,
        names=settings.names,
        trainer=trainer,
    )
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            FullModelGradientClipping(*settings.clip_gradients) if settings.clip_gradients else None,
            RevertStatisticsOfSkippedSteps() if settings.amp else None,
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=scheduler),
            hooks.PeriodicCheckpointer(checkpointer, settings.checkpoint_period, max_to_keep=settings.max_to_keep)
            if main_process
            else None,
            hooks.EvalHook(settings.eval_period, lambda: evaluate(model, recipe.test_sets())),
            ReportNonFiniteStatistics(),
            hooks.PeriodicWriter(default_writers(settings.output_dir, max_iter), period=settings.log_period)
            if main_process
            else None,
            StopOnSignal(),
        ]
    )
    checkpointer.resume_or_load(settings.weights, resume=resume)
    resumed = resume and checkpointer.has_checkpoint()
    start_iter = trainer.iter + 1 if resumed else 0
    # Continue the sampler's index stream where the checkpoint left it (stock detectron2 restarts it).
    sampler.skip = start_iter * (settings.batch_size // comm.get_world_size())
    if settings.reset_efl_statistics and not resumed:
        reset_efl_statistics(model, settings.names.reset_statistics)
    return Training(trainer, checkpointer, sampler, start_iter, max_iter)


def train(recipe: Recipe, resume: bool, trust_pickle: bool = False) -> None:
    """
    Train ``recipe`` (see :func:`build_training`). When a stop signal arrives (efl.engine.signals), the main process
    writes a checkpoint of the last completed iteration and :class:`Preempted` is raised in every process.
    """
    training = build_training(recipe, resume, trust_pickle)
    trainer = training.trainer
    try:
        trainer.train(training.start_iter, training.max_iter)
    except Preempted as stop:
        # The iteration trainer.iter is complete (a stop is decided after a step, or in an evaluation after one).
        name = f"model_{trainer.iter:07d}"
        if comm.is_main_process():
            training.checkpointer.save(name, iteration=trainer.iter)
        comm.synchronize()
        raise Preempted(stop.signum, trainer.iter, os.path.join(recipe.settings.output_dir, f"{name}.pth")) from None


def evaluate(model: nn.Module, test_sets: Sequence[TestSet]) -> Dict[str, Dict]:
    """Evaluate ``model`` on every test set; the results by dataset name."""
    results = OrderedDict()
    for test_set in test_sets:
        data_loader = test_set.build_loader()
        evaluation = StoppableEvaluation(test_set.build_evaluator())  # writes nothing when a stop signal comes
        results[test_set.name] = inference_on_dataset(model, evaluation.loader(data_loader), evaluation)
        if comm.is_main_process():
            logger.info(f"Evaluation results for {test_set.name} in csv format:")
            print_csv_format(results[test_set.name])
    return results


def evaluate_weights(recipe: Recipe, resume: bool, trust_pickle: bool = False) -> Dict[str, Dict]:
    """Evaluate ``recipe``'s weights (with ``resume``, the newest readable checkpoint of its output directory)."""
    settings = recipe.settings
    model = recipe.build_model(None)
    EFLCheckpointer(
        model,
        settings.output_dir,
        allow_partial=settings.allow_partial_weights,
        trust_pickle=trust_pickle,
        names=settings.names,
    ).resume_or_load(settings.weights, resume=resume)
    return evaluate(model, recipe.test_sets())


def run(args, recipe: Recipe) -> Optional[Dict]:
    """
    One process's work, as train_net.py launches it (``args``: its command line): train, or with
    ``args.eval_only`` evaluate. ``recipe`` was built and checked once, before the processes started. A process
    stopped by a signal (:class:`Preempted`) ends with EXIT_PREEMPTED when it is one of several (its launcher
    reports the stop), and raises it otherwise.
    """
    settings = recipe.settings
    register_datasets(settings.register, settings.names.register)  # launch's worker processes start afresh
    default_setup(recipe.config, args)
    setup_logger(settings.output_dir, distributed_rank=comm.get_rank(), name="efl")  # our modules' messages too
    try:
        with stopping_on_signals(), naming_malformed_dataset_files(settings.train_datasets + settings.test_datasets):
            if args.eval_only:
                return evaluate_weights(recipe, args.resume, args.trust_pickle)
            train(recipe, args.resume, args.trust_pickle)
    except Preempted as stop:
        if comm.is_main_process():
            logger.warning(stop.message())
        if comm.get_world_size() > 1:
            sys.exit(EXIT_PREEMPTED)
        raise
    return None

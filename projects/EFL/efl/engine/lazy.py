"""
Training and evaluation from a LazyConfig (``.py``) file, the config system of detectron2's newer models (FCOS
among them). train_net.py loads and checks every ``.py`` config once (efl.lazy_config, efl.checks), then runs
:func:`main` here in each process; ``.yaml`` configs keep its yacs Trainer. Both paths use the same pieces: the
resumable training loader that skips unreadable images and checks every annotation's class (efl.data.train_loader),
epoch-based schedules (efl.engine.schedule), EFLCheckpointer (safe, fitting, resuming from a readable file), the
step hooks (full-model gradient clipping, undoing the statistics of AMP-skipped steps), the report of non-finite
statistics, and the evaluators of efl.evaluation named by the config.

A config holds detectron2's nodes (as in its model_zoo ``configs/common``): ``model``; ``dataloader.train``, a
``build_detection_train_loader`` call (``sampler`` optional: TrainingSampler by default, or
efl.data.samplers.RepeatFactorSampler for repeat factors with ceil or stochastic rounding); ``dataloader.test`` and
``dataloader.evaluator``; ``optimizer`` (its ``params.model`` is set here); ``lr_multiplier``; and ``train``
(output_dir, init_checkpoint, max_iter, amp, ddp, checkpointer, eval_period, log_period, device, seed). This
project reads more keys, all optional:

    train.max_epochs = 24  # count in epochs: train.max_iter and lr_multiplier's iterations are set from the data
    train.epoch_steps = [16, 22]  # the milestones of lr_multiplier's MultiStepParamScheduler, in epochs
    train.warmup_epochs = 1.0  # the length of its WarmupParamScheduler, in epochs
    train.allow_partial_weights = True  # load weights that do not fill the model (fine-tuning)
    train.clip_gradients = dict(max_norm=35.0, norm_type=2.0)  # clip the norm of all gradients together
    train.reset_efl_statistics = True  # start the EFL statistics afresh after loading train.init_checkpoint
    dataloader.register = [("mine_train", "lvis", "/data/mine/train.json", "/data/mine/images")]  # your datasets
"""
import logging
from typing import Dict, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from detectron2.config import instantiate
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from ..config_keys import LAZY_KEYS
from ..data import naming_malformed_dataset_files, register_datasets
from ..data.samplers import epoch_size_of
from ..data.train_loader import CheckAnnotatedClasses, ResumableSampler, SkipUnreadableImages
from ..errors import ConfigError
from ..lazy_config import lazy_dataset_names
from ..modeling.efl_detector import leave_class_check_to_the_loader
from .checkpoint import EFLCheckpointer, reset_efl_statistics
from .hooks import FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps
from .schedule import with_lazy_epoch_schedule

__all__ = [
    "build_lazy_trainer",
    "build_resumable_lazy_train_loader",
    "evaluate",
    "main",
    "resume_or_load",
    "train",
]

logger = logging.getLogger(__name__)


def build_resumable_lazy_train_loader(
    loader_cfg: DictConfig, num_classes: Optional[int] = None
) -> Tuple[DataLoader, ResumableSampler]:
    """
    Instantiate ``dataloader.train`` as the yacs path builds its loader: a :class:`ResumableSampler` around its
    sampler (TrainingSampler over the dataset when it names none), that knows the sampler's images per epoch;
    :class:`SkipUnreadableImages` around its mapper; and, given the model's ``num_classes``,
    :class:`CheckAnnotatedClasses`.

    Returns:
        the data loader, and its sampler, whose ``skip`` a resumed run sets.
    """
    kwargs = {key: instantiate(value) for key, value in loader_cfg.items() if key != "_target_"}
    if "dataset" not in kwargs or "mapper" not in kwargs:
        raise ConfigError("dataloader.train must give the dataset and the mapper (see detectron2's configs/common)")
    size = len(kwargs["dataset"])
    sampler = kwargs.get("sampler")
    sampler = TrainingSampler(size) if sampler is None else sampler
    sampler = ResumableSampler(sampler, epoch_size_of(sampler, size))
    # A dataset of fewer images than the limit, all unreadable, stops when it has tried each once.
    mapper = SkipUnreadableImages(kwargs["mapper"], min(100, size))
    if num_classes is not None:
        mapper = CheckAnnotatedClasses(mapper, num_classes, LAZY_KEYS.num_classes)
    kwargs.update(sampler=sampler, mapper=mapper)
    build = loader_cfg._target_
    return (locate(build) if isinstance(build, str) else build)(**kwargs), sampler


def evaluate(cfg: DictConfig, model: torch.nn.Module) -> Dict:
    """Run ``dataloader.evaluator`` over ``dataloader.test``; an empty dict when the config has no evaluator."""
    if cfg.dataloader.get("evaluator") is None:
        return {}
    # The test loader first: it generates an embedded synthetic set, whose annotations the evaluator reads.
    data_loader = instantiate(cfg.dataloader.test)
    results = inference_on_dataset(model, data_loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def _checkpointer(cfg: DictConfig, model: torch.nn.Module, trust_pickle: bool, **kwargs) -> EFLCheckpointer:
    return EFLCheckpointer(
        model,
        cfg.train.output_dir,
        allow_partial=bool(cfg.train.get("allow_partial_weights", False)),
        trust_pickle=trust_pickle,
        keys=LAZY_KEYS,
        **kwargs,
    )


def build_lazy_trainer(
    cfg: DictConfig, trust_pickle: bool = False
) -> Tuple[SimpleTrainer, EFLCheckpointer, ResumableSampler]:
    """
    The step-running trainer of ``cfg`` with the hooks of train_net.py's Trainer, its checkpointer (which saves the
    trainer: iteration, optimizer, scheduler; ``trust_pickle``: train.init_checkpoint may run code) and its
    resumable sampler. With ``train.max_epochs``, ``cfg``'s iteration counts are resolved here, in place, from the
    training set's size as the sampler enlarges it.
    """
    model = instantiate(cfg.model).to(cfg.train.device)
    data_loader, sampler = build_resumable_lazy_train_loader(cfg.dataloader.train, getattr(model, "num_classes", None))
    leave_class_check_to_the_loader(model)
    # train.max_epochs: train.max_iter and lr_multiplier's iterations from the data, for everything built below
    with_lazy_epoch_schedule(cfg, sampler.epoch_size, getattr(sampler.sampler, "rounding", None))
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    # DistributedDataParallel gets device_ids only on GPUs: DDP refuses them for a model on the CPU (gloo).
    on_gpu = torch.device(cfg.train.device).type == "cuda"
    ddp = dict(cfg.train.get("ddp") or {}, device_ids=[comm.get_local_rank()] if on_gpu else None)
    model = create_ddp_model(model, **ddp)

    amp = bool(cfg.train.get("amp", {}).get("enabled", False))
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
    checkpointer = _checkpointer(cfg, model, trust_pickle, trainer=trainer)
    clip = cfg.train.get("clip_gradients")
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            FullModelGradientClipping(**clip) if clip else None,
            RevertStatisticsOfSkippedSteps() if amp else None,
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: evaluate(cfg, model)),
            ReportNonFiniteStatistics(),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if main_process
            else None,
        ]
    )
    return trainer, checkpointer, sampler


def resume_or_load(
    cfg: DictConfig, trainer: SimpleTrainer, checkpointer: EFLCheckpointer, sampler: ResumableSampler, resume: bool
) -> int:
    """
    Load ``train.init_checkpoint``, or with ``resume`` the newest readable checkpoint of the output directory, and
    continue the sampler's index stream where that checkpoint left it (stock detectron2 restarts it). With
    ``train.reset_efl_statistics``, weights loaded from ``train.init_checkpoint`` (not a resumed checkpoint) start
    with fresh EFL statistics.

    Returns:
        the iteration to start from.
    """
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    resumed = resume and checkpointer.has_checkpoint()
    start_iter = trainer.iter + 1 if resumed else 0
    sampler.skip = start_iter * (cfg.dataloader.train.total_batch_size // comm.get_world_size())
    if cfg.train.get("reset_efl_statistics") and not resumed:
        reset_efl_statistics(trainer.model, "train.reset_efl_statistics")
    return start_iter


def train(cfg: DictConfig, resume: bool, trust_pickle: bool = False) -> None:
    """Train ``cfg`` from ``train.init_checkpoint``, or with ``resume`` from the last checkpoint of its output_dir."""
    trainer, checkpointer, sampler = build_lazy_trainer(cfg, trust_pickle)
    start_iter = resume_or_load(cfg, trainer, checkpointer, sampler, resume)
    trainer.train(start_iter, cfg.train.max_iter)


def main(args, cfg: DictConfig) -> Optional[Dict]:
    """
    One process's work (train_net.py's arguments ``args``); ``cfg`` was loaded and checked once, before the
    processes started. Returns evaluation results with ``--eval-only``.
    """
    register_datasets(cfg.dataloader.get("register") or ())  # launch's worker processes start afresh
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="efl")  # our modules' messages too
    train_names, test_names = lazy_dataset_names(cfg, args.eval_only)
    with naming_malformed_dataset_files(train_names + test_names):
        if args.eval_only:
            model = instantiate(cfg.model).to(cfg.train.device)
            _checkpointer(cfg, model, args.trust_pickle).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
            return evaluate(cfg, model)
        train(cfg, args.resume, args.trust_pickle)
    return None

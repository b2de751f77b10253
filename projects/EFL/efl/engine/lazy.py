"""
Training and evaluation from a LazyConfig (``.py``) file, the config system of detectron2's newer models (FCOS
among them). train_net.py hands every ``.py`` config here; ``.yaml`` configs keep its yacs Trainer. Both paths use
the same pieces: the resumable training loader that skips unreadable images (efl.data.train_loader),
EFLCheckpointer, the step hooks (full-model gradient clipping, undoing the statistics of AMP-skipped steps), the
report of non-finite statistics, and the evaluators of efl.evaluation named by the config.

A config holds detectron2's nodes (as in its model_zoo ``configs/common``): ``model``; ``dataloader.train``, a
``build_detection_train_loader`` call (``sampler`` optional: TrainingSampler by default); ``dataloader.test`` and
``dataloader.evaluator``; ``optimizer`` (its ``params.model`` is set here); ``lr_multiplier``; and ``train``
(output_dir, init_checkpoint, max_iter, amp, ddp, checkpointer, eval_period, log_period, device, seed). This
project reads two more keys of ``train``, both optional:

    train.clip_gradients = dict(max_norm=35.0, norm_type=2.0)  # clip the norm of all gradients together
    train.reset_efl_statistics = True  # start the EFL statistics afresh after loading train.init_checkpoint
"""
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from detectron2.config import LazyConfig, instantiate
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate

from ..errors import ConfigError
from ..data.train_loader import ResumableSampler, SkipUnreadableImages
from .checkpoint import EFLCheckpointer
from .hooks import FullModelGradientClipping, ReportNonFiniteStatistics, RevertStatisticsOfSkippedSteps

__all__ = [
    "build_lazy_trainer",
    "build_resumable_lazy_train_loader",
    "evaluate",
    "launch_lazy_config",
    "load_lazy_config",
    "main",
    "train",
]

logger = logging.getLogger(__name__)

# The nodes a LazyConfig needs, for training and for --eval-only.
_TRAIN_NODES = ("model", "dataloader.train", "optimizer", "lr_multiplier", "train")
_EVAL_NODES = ("model", "dataloader.test", "dataloader.evaluator", "train")


def load_lazy_config(config_file: str, overrides: List[str], eval_only: bool = False) -> DictConfig:
    """
    The LazyConfig in ``config_file`` with ``overrides`` ("key=value", detectron2's LazyConfig syntax) applied.
    Raises ConfigError when the file is missing or lacks a node the run needs.
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    cfg = LazyConfig.load(config_file)
    LazyConfig.apply_overrides(cfg, overrides)
    needed = _EVAL_NODES if eval_only else _TRAIN_NODES
    for node in needed:
        if _select(cfg, node) is None:
            task = "evaluate" if eval_only else "train"
            raise ConfigError(f"{config_file} has no '{node}': a LazyConfig needs {', '.join(needed)} to {task}")
    weights = cfg.train.get("init_checkpoint") or ""
    if eval_only and not weights:
        raise ConfigError("--eval-only needs the weights to evaluate: add train.init_checkpoint=/path/to/model.pth")
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"train.init_checkpoint file not found: {weights} (give a path, a detectron2:// URL or \"\")")
    return cfg


def _select(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, DictConfig) else None
    return node


def build_resumable_lazy_train_loader(loader_cfg: DictConfig) -> Tuple[DataLoader, ResumableSampler]:
    """
    Instantiate ``dataloader.train`` with a :class:`ResumableSampler` around its sampler (TrainingSampler over the
    dataset when it names none) and :class:`SkipUnreadableImages` around its mapper, as the yacs path does.

    Returns:
        the data loader, and its sampler, whose ``skip`` a resumed run sets.
    """
    kwargs = {key: instantiate(value) for key, value in loader_cfg.items() if key != "_target_"}
    if "dataset" not in kwargs or "mapper" not in kwargs:
        raise ConfigError("dataloader.train must give the dataset and the mapper (see detectron2's configs/common)")
    sampler = kwargs.get("sampler")
    sampler = ResumableSampler(TrainingSampler(len(kwargs["dataset"])) if sampler is None else sampler)
    kwargs.update(sampler=sampler, mapper=SkipUnreadableImages(kwargs["mapper"]))
    build = loader_cfg._target_
    return (locate(build) if isinstance(build, str) else build)(**kwargs), sampler


def evaluate(cfg: DictConfig, model: torch.nn.Module) -> Dict:
    """Run ``dataloader.evaluator`` over ``dataloader.test``; an empty dict when the config has no evaluator."""
    if _select(cfg, "dataloader.evaluator") is None:
        return {}
    # The test loader first: it generates an embedded synthetic set, whose annotations the evaluator reads.
    data_loader = instantiate(cfg.dataloader.test)
    results = inference_on_dataset(model, data_loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_lazy_trainer(cfg: DictConfig) -> Tuple[SimpleTrainer, EFLCheckpointer, ResumableSampler]:
    """
    The step-running trainer of ``cfg`` with the hooks of train_net.py's Trainer, its checkpointer (which saves the
    trainer: iteration, optimizer, scheduler) and its resumable sampler.
    """
    model = instantiate(cfg.model).to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    data_loader, sampler = build_resumable_lazy_train_loader(cfg.dataloader.train)
    # DistributedDataParallel gets device_ids only on GPUs: DDP refuses them for a model on the CPU (gloo).
    on_gpu = torch.device(cfg.train.device).type == "cuda"
    ddp = dict(cfg.train.get("ddp") or {}, device_ids=[comm.get_local_rank()] if on_gpu else None)
    model = create_ddp_model(model, **ddp)

    amp = bool(cfg.train.get("amp", {}).get("enabled", False))
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
    checkpointer = EFLCheckpointer(model, cfg.train.output_dir, trainer=trainer)
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


def train(cfg: DictConfig, resume: bool) -> None:
    """Train ``cfg`` from ``train.init_checkpoint``, or with ``resume`` from the last checkpoint of its output_dir."""
    trainer, checkpointer, sampler = build_lazy_trainer(cfg)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    resumed = resume and checkpointer.has_checkpoint()
    start_iter = trainer.iter + 1 if resumed else 0
    # Continue the sampler's index stream where the checkpoint left it (stock detectron2 restarts it).
    sampler.skip = start_iter * (cfg.dataloader.train.total_batch_size // comm.get_world_size())
    if cfg.train.get("reset_efl_statistics") and not resumed:
        getattr(trainer.model, "module", trainer.model).reset_statistics()
        logger.info("train.reset_efl_statistics: the EFL statistics start afresh (g = 1) after loading the weights")
    trainer.train(start_iter, cfg.train.max_iter)


def main(args, cfg: DictConfig) -> Optional[Dict]:
    """One process's work; ``cfg`` was loaded once, before the processes started. Returns evaluation results."""
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        EFLCheckpointer(model, cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        return evaluate(cfg, model)
    train(cfg, args.resume)
    return None


def launch_lazy_config(args) -> Optional[str]:
    """
    train_net.py for a ``.py`` config: load it once, then run :func:`main` in ``args.num_gpus`` processes per
    machine, as the yacs path does.

    Returns:
        None, or the message to exit with when the config cannot run.
    """
    try:
        cfg = load_lazy_config(args.config_file, args.opts, eval_only=args.eval_only)
    except ConfigError as e:
        return f"train_net.py: error: {e}"
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, cfg),
        )
    except ConfigError as e:  # found while building (single process: raised here)
        return f"train_net.py: error: {e}"
    return None

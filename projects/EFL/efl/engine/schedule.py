"""
Epoch-based schedules resolved into detectron2's iterations, for yacs configs (SOLVER.MAX_EPOCHS, EPOCH_STEPS,
WARMUP_EPOCHS) and LazyConfigs (train.max_epochs, epoch_steps, warmup_epochs, resolved into train.max_iter and
the iterations of lr_multiplier).

An epoch is one pass over the training list as the sampler enlarges it (with repeat-factor sampling, each image
counted as often as it is repeated). As in the official EFL code, an epoch lasts ceil(N / B) iterations for N
images per epoch and a global batch of B, and the maximum, the LR steps and the warm-up are
int(epochs x iterations per epoch).

The official loader completes an epoch's last batch with images from the start of the same epoch; detectron2's
samplers are one endless stream, so here that batch continues into the next epoch. Either way an epoch takes
ceil(N / B) iterations.
"""
import logging
import math
from typing import NamedTuple, Optional, Sequence, Tuple

from omegaconf import DictConfig

from detectron2.config import CfgNode

from ..lazy_config import lazy_lr_schedule

__all__ = [
    "EpochSchedule",
    "resolve_epoch_schedule",
    "with_epoch_schedule",
    "with_lazy_epoch_schedule",
]

logger = logging.getLogger(__name__)


class EpochSchedule(NamedTuple):
    """An epoch-based schedule in iterations (detectron2's SOLVER.MAX_ITER, STEPS and WARMUP_ITERS)."""

    iterations_per_epoch: int
    max_iter: int
    steps: Tuple[int, ...]
    warmup_iters: int


def resolve_epoch_schedule(
    images_per_epoch: float,
    batch_size: int,
    max_epochs: float,
    epoch_steps: Sequence[float] = (),
    warmup_epochs: float = 0.0,
) -> EpochSchedule:
    """
    Args:
        images_per_epoch: images in one pass over the (enlarged) training list; under stochastic repeat-factor
            rounding, whose passes vary in length, the expected number (a float).
        batch_size: images per iteration over all processes (SOLVER.IMS_PER_BATCH).
        max_epochs, epoch_steps, warmup_epochs: the schedule in epochs (fractions allowed).
    """
    if images_per_epoch <= 0 or batch_size <= 0:
        raise ValueError(f"an epoch needs images ({images_per_epoch}) and a batch size ({batch_size}) above 0")
    iterations_per_epoch = math.ceil(images_per_epoch / batch_size)
    return EpochSchedule(
        iterations_per_epoch=iterations_per_epoch,
        max_iter=int(max_epochs * iterations_per_epoch),
        steps=tuple(int(e * iterations_per_epoch) for e in epoch_steps),
        warmup_iters=int(warmup_epochs * iterations_per_epoch),
    )


def _describe_epoch(images_per_epoch: float, rounding: Optional[str]) -> str:
    if rounding is None:
        return f"{images_per_epoch:,} images"
    if rounding == "ceil":
        return f"{images_per_epoch:,} images after repeat-factor enlargement (each image ceil(r) times)"
    return (
        f"{images_per_epoch:,.1f} images after repeat-factor enlargement (the expected size under detectron2's "
        "stochastic rounding)"
    )


def _resolve_and_log_epoch_schedule(
    images_per_epoch: float,
    batch_size: int,
    max_epochs: float,
    epoch_steps: Sequence[float],
    warmup_epochs: float,
    rounding: Optional[str],
) -> EpochSchedule:
    """
    :func:`resolve_epoch_schedule`, and one log line that says what it resolved, the same for both config systems.

    Args:
        rounding: how the sampler makes whole repeats of repeat factors ("ceil" or "stochastic", see
            efl.data.samplers), None for a sampler without repeat factors.
    """
    schedule = resolve_epoch_schedule(images_per_epoch, batch_size, max_epochs, epoch_steps, warmup_epochs)
    steps = ", ".join(f"{s:,} (epoch {e:g})" for s, e in zip(schedule.steps, epoch_steps)) or "none"
    logger.info(
        f"{max_epochs:g} epochs of {_describe_epoch(images_per_epoch, rounding)} at batch {batch_size} "
        f"= {schedule.iterations_per_epoch:,} iterations per epoch, {schedule.max_iter:,} iterations; "
        f"LR steps at {steps}; warm-up {schedule.warmup_iters:,} iterations ({warmup_epochs:g} epochs)"
    )
    return schedule


def with_epoch_schedule(cfg: CfgNode, images_per_epoch: Optional[float]) -> CfgNode:
    """
    ``cfg`` itself when SOLVER.MAX_EPOCHS is 0; otherwise a frozen copy whose SOLVER.MAX_ITER, STEPS and
    WARMUP_ITERS are resolved from SOLVER.MAX_EPOCHS, EPOCH_STEPS and WARMUP_EPOCHS, and a log line that says so.
    """
    solver = cfg.SOLVER
    if solver.MAX_EPOCHS <= 0:
        return cfg
    if images_per_epoch is None:
        raise ValueError(
            f"SOLVER.MAX_EPOCHS needs a training sampler with epochs, not {cfg.DATALOADER.SAMPLER_TRAIN!r}: use "
            "TrainingSampler or RepeatFactorTrainingSampler, or count in iterations (SOLVER.MAX_EPOCHS 0)"
        )
    repeats = cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    schedule = _resolve_and_log_epoch_schedule(
        images_per_epoch,
        solver.IMS_PER_BATCH,
        solver.MAX_EPOCHS,
        solver.EPOCH_STEPS,
        solver.WARMUP_EPOCHS,
        cfg.DATALOADER.REPEAT_ROUNDING if repeats else None,
    )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = schedule.max_iter
    cfg.SOLVER.STEPS = schedule.steps
    cfg.SOLVER.WARMUP_ITERS = schedule.warmup_iters
    cfg.freeze()
    return cfg


def with_lazy_epoch_schedule(cfg: DictConfig, images_per_epoch: Optional[float], rounding: Optional[str]) -> None:
    """
    With ``train.max_epochs`` set, resolve ``train.max_epochs``, ``train.epoch_steps`` and ``train.warmup_epochs``
    in ``cfg`` (in place) into ``train.max_iter`` and the iterations of ``lr_multiplier``: the milestones and number
    of updates of its MultiStepParamScheduler and the warm-up length (a fraction of the run) of its
    WarmupParamScheduler, with the same log line as the yacs path. Nothing changes without ``train.max_epochs``.

    Args:
        images_per_epoch: images per epoch of the training loader's sampler (None: a sampler without epochs).
        rounding: the sampler's repeat-factor rounding, None for a sampler without repeat factors.
    """
    train = cfg.train
    max_epochs = train.get("max_epochs")
    if not max_epochs:
        return
    if images_per_epoch is None:
        raise ValueError(
            "train.max_epochs needs a training sampler with epochs: dataloader.train.sampler a TrainingSampler (or "
            "none) or an efl.data.samplers.RepeatFactorSampler, or count in iterations (train.max_epochs=null)"
        )
    schedule = _resolve_and_log_epoch_schedule(
        images_per_epoch,
        cfg.dataloader.train.total_batch_size,
        max_epochs,
        list(train.get("epoch_steps") or ()),
        train.get("warmup_epochs") or 0.0,
        rounding,
    )
    train.max_iter = schedule.max_iter
    parts = lazy_lr_schedule(cfg)
    if parts.multistep is not None:
        parts.multistep.milestones = list(schedule.steps)
        parts.multistep.num_updates = schedule.max_iter
    if parts.warmup is not None:
        parts.warmup.warmup_length = schedule.warmup_iters / max(schedule.max_iter, 1)

"""
Epoch-based schedules resolved into detectron2's iterations.

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

from detectron2.config import CfgNode

__all__ = ["EpochSchedule", "resolve_epoch_schedule", "with_epoch_schedule"]

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


def _describe_epoch(cfg: CfgNode, images_per_epoch: float) -> str:
    if cfg.DATALOADER.SAMPLER_TRAIN != "RepeatFactorTrainingSampler":
        return f"{images_per_epoch:,} images"
    if cfg.DATALOADER.REPEAT_ROUNDING == "ceil":
        return f"{images_per_epoch:,} images after repeat-factor enlargement (each image ceil(r) times)"
    return (
        f"{images_per_epoch:,.1f} images after repeat-factor enlargement (the expected size under detectron2's "
        "stochastic rounding)"
    )


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
    schedule = resolve_epoch_schedule(
        images_per_epoch, solver.IMS_PER_BATCH, solver.MAX_EPOCHS, solver.EPOCH_STEPS, solver.WARMUP_EPOCHS
    )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = schedule.max_iter
    cfg.SOLVER.STEPS = schedule.steps
    cfg.SOLVER.WARMUP_ITERS = schedule.warmup_iters
    cfg.freeze()
    steps = ", ".join(f"{s:,} (epoch {e:g})" for s, e in zip(schedule.steps, solver.EPOCH_STEPS)) or "none"
    logger.info(
        f"{solver.MAX_EPOCHS:g} epochs of {_describe_epoch(cfg, images_per_epoch)} at batch {solver.IMS_PER_BATCH} "
        f"= {schedule.iterations_per_epoch:,} iterations per epoch, {schedule.max_iter:,} iterations; "
        f"LR steps at {steps}; warm-up {schedule.warmup_iters:,} iterations ({solver.WARMUP_EPOCHS:g} epochs)"
    )
    return cfg

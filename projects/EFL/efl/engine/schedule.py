"""
Schedules counted in epochs, resolved into iterations from the training loader's sampler.

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

__all__ = ["EpochSchedule", "IterationSchedule", "resolve_epoch_schedule"]

logger = logging.getLogger(__name__)


class EpochSchedule(NamedTuple):
    """A schedule in epochs (fractions allowed): its length, its LR steps and its warm-up."""

    max_epochs: float
    steps: Tuple[float, ...] = ()
    warmup: float = 0.0


class IterationSchedule(NamedTuple):
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
) -> IterationSchedule:
    """
    Args:
        images_per_epoch: images in one pass over the (enlarged) training list; under stochastic repeat-factor
            rounding, whose passes vary in length, the expected number (a float).
        batch_size: images per iteration over all processes.
        max_epochs, epoch_steps, warmup_epochs: the schedule in epochs (fractions allowed).
    """
    if images_per_epoch <= 0 or batch_size <= 0:
        raise ValueError(f"an epoch needs images ({images_per_epoch}) and a batch size ({batch_size}) above 0")
    iterations_per_epoch = math.ceil(images_per_epoch / batch_size)
    return IterationSchedule(
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


def resolve_and_log(
    epochs: EpochSchedule, images_per_epoch: float, batch_size: int, rounding: Optional[str]
) -> IterationSchedule:
    """
    :func:`resolve_epoch_schedule`, and one log line that says what it resolved.

    Args:
        rounding: how the sampler makes whole repeats of repeat factors ("ceil" or "stochastic", see
            efl.data.samplers), None for a sampler without repeat factors.
    """
    schedule = resolve_epoch_schedule(images_per_epoch, batch_size, epochs.max_epochs, epochs.steps, epochs.warmup)
    steps = ", ".join(f"{s:,} (epoch {e:g})" for s, e in zip(schedule.steps, epochs.steps)) or "none"
    logger.info(
        f"{epochs.max_epochs:g} epochs of {_describe_epoch(images_per_epoch, rounding)} at batch {batch_size} "
        f"= {schedule.iterations_per_epoch:,} iterations per epoch, {schedule.max_iter:,} iterations; "
        f"LR steps at {steps}; warm-up {schedule.warmup_iters:,} iterations ({epochs.warmup:g} epochs)"
    )
    return schedule

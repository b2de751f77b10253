"""
Repeat-factor sampling (LVIS, Gupta et al. 2019) with a choice of how each image's factor becomes a whole number
of repeats per epoch. Image i has the factor r_i = max over its categories c of max(1, sqrt(t / f_c)), f_c being
the fraction of training images that contain c and t the threshold (DATALOADER.REPEAT_THRESHOLD).

- "stochastic" (detectron2's): each epoch, image i is repeated floor(r_i) times, plus once more with probability
  r_i - floor(r_i); the epoch has sum(r_i) images on average, and a different list every time.
- "ceil" (the official EFL code's): image i is repeated ceil(r_i) times in every epoch; the enlarged list is
  fixed and reshuffled every epoch.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Sampler

from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

__all__ = ["REPEAT_ROUNDINGS", "RepeatFactorSampler", "epoch_size_of"]

REPEAT_ROUNDINGS = ("stochastic", "ceil")


class RepeatFactorSampler(RepeatFactorTrainingSampler):
    """
    detectron2's RepeatFactorTrainingSampler with ``rounding`` "stochastic" (its own, the same index stream) or
    "ceil". Like it, an infinite stream of shuffled epochs, the same on every process for the same ``seed``, of
    which each process takes every world-size-th index.

    In a LazyConfig (``dataloader.train.sampler``), with the factors computed from the training set::

        sampler=L(RepeatFactorSampler)(
            repeat_factors=L(RepeatFactorSampler.repeat_factors_from_category_frequency)(
                dataset_dicts="${...dataset}", repeat_thresh=0.001
            ),
            rounding="ceil",
        )
    """

    def __init__(self, repeat_factors: Tensor, *, rounding: str = "stochastic", shuffle: bool = True, seed=None):
        """
        Args:
            repeat_factors: (N,) float factor of each image, from
                :meth:`RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`.
            rounding: one of :data:`REPEAT_ROUNDINGS`.
        """
        if rounding not in REPEAT_ROUNDINGS:
            raise ValueError(f"rounding must be one of {REPEAT_ROUNDINGS}, got {rounding!r}")
        super().__init__(repeat_factors, shuffle=shuffle, seed=seed)
        self.rounding = rounding
        self._repeats = torch.ceil(repeat_factors).long()  # (N,), used by "ceil"
        # float64, so that the expected size of a large set does not depend on the order of a float32 sum
        self._expected_size = repeat_factors.double().sum().item()

    @property
    def epoch_size(self) -> float:
        """Images per epoch: exact (an int) for "ceil", expected for "stochastic"."""
        return int(self._repeats.sum()) if self.rounding == "ceil" else self._expected_size

    def _get_epoch_indices(self, generator: torch.Generator) -> Tensor:
        if self.rounding == "stochastic":
            return super()._get_epoch_indices(generator)
        return torch.repeat_interleave(torch.arange(len(self._repeats)), self._repeats)


def epoch_size_of(sampler: Sampler, dataset_size: int) -> Optional[float]:
    """
    Images per epoch of a training sampler over a dataset of ``dataset_size`` images, all processes together: the
    (enlarged) size of a :class:`RepeatFactorSampler` (expected for stochastic rounding), the dataset's size for
    detectron2's TrainingSampler, None for any other (no epochs).
    """
    if isinstance(sampler, RepeatFactorSampler):
        return sampler.epoch_size
    if type(sampler) is TrainingSampler:  # not its subclasses, e.g. RandomSubsetTrainingSampler
        return dataset_size
    return None

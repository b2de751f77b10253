"""
detectron2's training data loader, made resumable and tolerant of the odd unreadable image:
- the sampler (TrainingSampler or RepeatFactorTrainingSampler alike) can skip what a resumed run had already
  consumed, so that a run resumed at iteration N sees the images an uninterrupted run would have seen;
- an image that cannot be read is skipped with a warning naming it; many consecutive failures stop training with
  a message, since they mean a wrong image folder rather than a bad file.
"""
import itertools
import logging
from typing import Callable, Dict, Iterator, Optional, Tuple

from torch.utils.data import DataLoader, Sampler

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data.build import _train_loader_from_config

from ..errors import ConfigError

__all__ = ["ResumableSampler", "SkipUnreadableImages", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


class ResumableSampler(Sampler):
    """Wrap an infinite per-process sampler; ``skip`` indices of its stream are dropped when iteration starts."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


class SkipUnreadableImages:
    """A dataset mapper that returns None (detectron2's training loader then drops the item) for unreadable images."""

    def __init__(self, mapper: Callable[[Dict], Optional[Dict]], max_consecutive_failures: int = 100):
        self.mapper = mapper
        self.max_consecutive_failures = max_consecutive_failures
        self._failures = 0

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        try:
            mapped = self.mapper(dataset_dict)
        except OSError as e:  # missing file, unreadable or truncated image (PIL's errors are OSErrors)
            self._failures += 1
            if self._failures >= self.max_consecutive_failures:
                raise ConfigError(
                    f"{self._failures} images in a row could not be read, the last {dataset_dict['file_name']!r} "
                    f"({e}): check the dataset's image folder (see README, 'Data')"
                ) from None
            logger.warning(f"Skipping training image {dataset_dict['file_name']!r}, which cannot be read: {e}")
            return None
        self._failures = 0
        return mapped


def build_resumable_train_loader(cfg: CfgNode) -> Tuple[DataLoader, ResumableSampler]:
    """detectron2's training loader for ``cfg``, with a :class:`ResumableSampler` and :class:`SkipUnreadableImages`."""
    kwargs = _train_loader_from_config(cfg, DatasetMapper(cfg, True))
    sampler = ResumableSampler(kwargs.pop("sampler"))
    # A dataset of fewer images than the limit, all unreadable, stops when it has tried each once.
    kwargs["mapper"] = SkipUnreadableImages(kwargs["mapper"], min(100, len(kwargs["dataset"])))
    return build_detection_train_loader(sampler=sampler, **kwargs), sampler

"""
detectron2's training data loader, made resumable, tolerant of the odd unreadable image, and the one place where
the annotated classes are checked:
- the sampler (TrainingSampler or a repeat-factor sampler alike) can skip what a resumed run had already
  consumed, so that a run resumed at iteration N sees the images an uninterrupted run would have seen, and knows
  how many images an epoch has (for schedules in epochs);
- an image that cannot be read is skipped with a warning naming it; many consecutive failures stop training with
  a message, since they mean a wrong image folder rather than a bad file;
- every annotation's class is checked against the model's number of classes, on the CPU in the loader's
  workers: the detectors and their losses trust their labels, and so never read them back from a GPU.
"""
import itertools
import logging
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from detectron2.data.samplers import TrainingSampler

from ..errors import ConfigError, SettingNames
from .samplers import epoch_size_of

__all__ = [
    "CheckAnnotatedClasses",
    "LoaderCall",
    "ResumableSampler",
    "SkipUnreadableImages",
    "build_resumable_train_loader",
    "out_of_range_classes",
]

logger = logging.getLogger(__name__)


class LoaderCall(NamedTuple):
    """A training loader as a config describes it: its build function (detectron2's
    ``build_detection_train_loader`` or one with its arguments) and the arguments (``dataset``: a list of
    records; ``mapper``; ``sampler``: None for detectron2's TrainingSampler; ``total_batch_size``; ...)."""

    build: Callable[..., DataLoader]
    arguments: Dict


class ResumableSampler(Sampler):
    """
    Wrap an infinite per-process sampler; ``skip`` indices of its stream are dropped when iteration starts.
    ``epoch_size``: the images in one pass over the (enlarged) training list, all processes together; the expected
    number when passes vary in length; None for a sampler without epochs.
    """

    def __init__(self, sampler: Sampler, epoch_size: Optional[float] = None):
        self.sampler = sampler
        self.epoch_size = epoch_size
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
                    f"({e}): check the dataset's image folder (docs/datasets.md)"
                ) from None
            logger.warning(f"Skipping training image {dataset_dict['file_name']!r}, which cannot be read: {e}")
            return None
        self._failures = 0
        return mapped


def out_of_range_classes(classes: Tensor, num_classes: int) -> Optional[List[int]]:
    """
    None when every class of ``classes`` (any shape, integer) lies in [0, num_classes); otherwise the sorted classes
    it holds.
    """
    if not classes.numel():
        return None
    lo, hi = torch.stack(classes.aminmax()).tolist()
    if 0 <= lo and hi < num_classes:
        return None
    return sorted(set(classes.tolist()))


class CheckAnnotatedClasses:
    """
    A dataset mapper that raises ValueError, naming the image, for an annotation whose class is not in
    [0, num_classes). It runs on the CPU, in the loader's workers.
    """

    def __init__(self, mapper: Callable[[Dict], Optional[Dict]], num_classes: int, key: str = "num_classes"):
        """
        Args:
            mapper: detectron2's dataset mapper (or a wrapper of it).
            num_classes: C, the model's.
            key: the setting that gives C, named in the message.
        """
        self.mapper = mapper
        self.num_classes = num_classes
        self.key = key

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        mapped = self.mapper(dataset_dict)
        instances = None if mapped is None else mapped.get("instances")
        if instances is not None and instances.has("gt_classes"):
            found = out_of_range_classes(instances.gt_classes, self.num_classes)
            if found is not None:
                raise ValueError(
                    f"Training image {dataset_dict.get('file_name')!r} has annotations of classes {found}, outside "
                    f"[0, {self.num_classes}): the dataset's category ids must map to 0..{self.num_classes - 1} "
                    f"({self.key} is {self.num_classes})"
                )
        return mapped


def build_resumable_train_loader(
    call: LoaderCall, num_classes: Optional[int], names: SettingNames = SettingNames()
) -> Tuple[DataLoader, ResumableSampler]:
    """
    The loader of ``call``, with a :class:`ResumableSampler` around its sampler (TrainingSampler over the dataset
    when it has none), which knows the images per epoch; :class:`SkipUnreadableImages` around its mapper; and, for
    a model of ``num_classes`` classes, :class:`CheckAnnotatedClasses` (``names.num_classes`` in its message).

    Returns:
        the data loader, and its sampler, whose ``skip`` a resumed run sets.
    """
    arguments = dict(call.arguments)
    if "dataset" not in arguments or "mapper" not in arguments:
        raise ConfigError("the training loader must be given its dataset and its mapper (see detectron2's configs/common)")
    size = len(arguments["dataset"])
    sampler = arguments.get("sampler")
    sampler = TrainingSampler(size) if sampler is None else sampler
    sampler = ResumableSampler(sampler, epoch_size_of(sampler, size))
    # A dataset of fewer images than the limit, all unreadable, stops when it has tried each once.
    mapper = SkipUnreadableImages(arguments["mapper"], min(100, size))
    if num_classes is not None:
        mapper = CheckAnnotatedClasses(mapper, num_classes, names.num_classes)
    arguments.update(sampler=sampler, mapper=mapper)
    return call.build(**arguments), sampler

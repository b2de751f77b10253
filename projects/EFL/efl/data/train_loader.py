"""
detectron2's training data loader, made resumable and tolerant of the odd unreadable image:
- the sampler (TrainingSampler or RepeatFactorTrainingSampler alike) can skip what a resumed run had already
  consumed, so that a run resumed at iteration N sees the images an uninterrupted run would have seen, and knows
  how many images an epoch has (for SOLVER.MAX_EPOCHS);
- repeat-factor sampling rounds as DATALOADER.REPEAT_ROUNDING says (:class:`RepeatFactorSampler`);
- an image that cannot be read is skipped with a warning naming it; many consecutive failures stop training with
  a message, since they mean a wrong image folder rather than a bad file;
- every annotation's class is checked against the number of classes, in the loader's workers, so that the loss
  need not read its labels' range on the GPU every step.
"""
import itertools
import logging
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.build import _train_loader_from_config

from ..config_keys import YACS_KEYS
from ..errors import ConfigError
from .samplers import build_epoch_sampler

__all__ = [
    "CheckAnnotatedClasses",
    "ResumableSampler",
    "SkipUnreadableImages",
    "build_resumable_train_loader",
    "out_of_range_classes",
]

logger = logging.getLogger(__name__)


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
                    f"({e}): check the dataset's image folder (see README, 'Data')"
                ) from None
            logger.warning(f"Skipping training image {dataset_dict['file_name']!r}, which cannot be read: {e}")
            return None
        self._failures = 0
        return mapped


def out_of_range_classes(classes: Tensor, num_classes: int) -> Optional[List[int]]:
    """
    None when every class of ``classes`` (any shape, integer) lies in [0, num_classes); otherwise the sorted classes
    it holds. One read of the values (free for a CPU tensor, a host sync for a GPU one).
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
    [0, num_classes). It runs on the CPU, in the loader's workers: the EFL detectors trained on this loader rely on
    it instead of checking their ground-truth classes every step (EFLDetectorMixin.check_gt_classes).
    """

    def __init__(self, mapper: Callable[[Dict], Optional[Dict]], num_classes: int, key: str = YACS_KEYS.num_classes):
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


def build_resumable_train_loader(cfg: CfgNode) -> Tuple[DataLoader, ResumableSampler]:
    """
    detectron2's training loader for ``cfg``, with a :class:`ResumableSampler`, :class:`SkipUnreadableImages` and
    :class:`CheckAnnotatedClasses`.
    """
    # the images detectron2's training loader reads (those without annotations dropped as configured)
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    sampler, epoch_size = build_epoch_sampler(cfg, dataset)
    kwargs = _train_loader_from_config(cfg, DatasetMapper(cfg, True), dataset=dataset, sampler=sampler)
    sampler = ResumableSampler(kwargs.pop("sampler"), epoch_size)
    # A dataset of fewer images than the limit, all unreadable, stops when it has tried each once.
    kwargs["mapper"] = CheckAnnotatedClasses(
        SkipUnreadableImages(kwargs["mapper"], min(100, len(dataset))), cfg.MODEL.RETINANET.NUM_CLASSES
    )
    return build_detection_train_loader(sampler=sampler, **kwargs), sampler

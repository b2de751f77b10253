"""LVIS frequency groups of a registered dataset's classes, from its metadata."""
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import ConfigError
from ..modeling import FREQUENCY_GROUPS
from .registration import registered_source

__all__ = ["FREQUENCY_GROUPS", "class_image_count", "frequency_group_of", "lvis_frequency_groups"]
# LVIS: rare classes are in at most 10 training images, common ones in 11 to 100, frequent ones in more.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100


def frequency_group_of(image_count: int) -> int:
    """0 (rare), 1 (common) or 2 (frequent) for a class in ``image_count`` training images."""
    return 0 if image_count <= RARE_MAX_IMAGES else (1 if image_count <= COMMON_MAX_IMAGES else 2)


def class_image_count(dataset_name: str) -> Optional[List[Dict]]:
    """
    The ``class_image_count`` metadata of a dataset ([{"id": category id, "image_count": n}], as detectron2's
    LVIS v1 has it); a dataset of DATASETS.REGISTER is loaded for it when it was not yet. None when it has none.
    """
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("class_image_count") is None and registered_source(dataset_name) is not None:
        DatasetCatalog.get(dataset_name)  # its loader counts them
    return metadata.get("class_image_count")


def lvis_frequency_groups(dataset_name: str, num_classes: int) -> Optional[List[int]]:
    """
    LVIS frequency group of each contiguous class id (0 rare: <= 10 training images, 1 common: 11-100,
    2 frequent: > 100), from the dataset's ``class_image_count`` metadata; None when it has none. What an EFL
    detector is given as its ``frequency_groups``.
    """
    counts = class_image_count(dataset_name)
    if counts is None:
        return None
    if len(counts) != num_classes:
        raise ConfigError(f"Dataset '{dataset_name}' has {len(counts)} categories but the model has {num_classes} classes")
    id_map = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id")
    id_map = id_map or {c["id"]: c["id"] - 1 for c in counts}
    groups = [0] * num_classes
    for c in counts:
        groups[id_map[c["id"]]] = frequency_group_of(c["image_count"])
    return groups

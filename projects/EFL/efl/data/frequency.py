"""LVIS frequency groups of a registered dataset's classes, from its metadata."""
from typing import List, Optional

from detectron2.data import MetadataCatalog

__all__ = ["FREQUENCY_GROUPS", "frequency_group_of", "lvis_frequency_groups"]

FREQUENCY_GROUPS = ("rare", "common", "frequent")
# LVIS: rare classes are in at most 10 training images, common ones in 11 to 100, frequent ones in more.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100


def frequency_group_of(image_count: int) -> int:
    """0 (rare), 1 (common) or 2 (frequent) for a class in ``image_count`` training images."""
    return 0 if image_count <= RARE_MAX_IMAGES else (1 if image_count <= COMMON_MAX_IMAGES else 2)


def lvis_frequency_groups(dataset_name: str, num_classes: int) -> Optional[List[int]]:
    """
    LVIS frequency group of each contiguous class id (0 rare: <= 10 training images, 1 common: 11-100,
    2 frequent: > 100), from the dataset's ``class_image_count`` metadata; None when it has none.
    """
    metadata = MetadataCatalog.get(dataset_name)
    counts = metadata.get("class_image_count")
    if counts is None:
        return None
    if len(counts) != num_classes:
        raise ValueError(
            f"Dataset '{dataset_name}' has {len(counts)} categories but the model has {num_classes} classes "
            f"(MODEL.RETINANET.NUM_CLASSES): set it to {len(counts)}"
        )
    id_map = metadata.get("thing_dataset_id_to_contiguous_id") or {c["id"]: c["id"] - 1 for c in counts}
    groups = [0] * num_classes
    for c in counts:
        groups[id_map[c["id"]]] = frequency_group_of(c["image_count"])
    return groups

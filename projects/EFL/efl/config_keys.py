"""
How messages name a setting in each config system: the same check tells a yacs user to set
``MODEL.ALLOW_PARTIAL_WEIGHTS True`` and a LazyConfig user ``train.allow_partial_weights=True``.
"""
from typing import NamedTuple

__all__ = ["ConfigKeys", "LAZY_KEYS", "YACS_KEYS"]


class ConfigKeys(NamedTuple):
    """The names of the settings that messages mention, and how an override is written."""

    output_dir: str
    weights: str
    allow_partial_weights: str
    architecture: str
    num_classes: str
    device: str
    batch_size: str
    max_iter: str
    max_epochs: str
    epoch_steps: str
    warmup_epochs: str
    filter_empty: str
    register: str
    override_format: str  # "{key} {value}" (yacs) or "{key}={value}" (LazyConfig)

    def setting(self, key: str, value) -> str:
        """``key`` set to ``value`` as one writes it on the command line."""
        return self.override_format.format(key=key, value=value)


YACS_KEYS = ConfigKeys(
    output_dir="OUTPUT_DIR",
    weights="MODEL.WEIGHTS",
    allow_partial_weights="MODEL.ALLOW_PARTIAL_WEIGHTS",
    architecture="MODEL.META_ARCHITECTURE",
    num_classes="MODEL.RETINANET.NUM_CLASSES",
    device="MODEL.DEVICE",
    batch_size="SOLVER.IMS_PER_BATCH",
    max_iter="SOLVER.MAX_ITER",
    max_epochs="SOLVER.MAX_EPOCHS",
    epoch_steps="SOLVER.EPOCH_STEPS",
    warmup_epochs="SOLVER.WARMUP_EPOCHS",
    filter_empty="DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    register="DATASETS.REGISTER",
    override_format="{key} {value}",
)

LAZY_KEYS = ConfigKeys(
    output_dir="train.output_dir",
    weights="train.init_checkpoint",
    allow_partial_weights="train.allow_partial_weights",
    architecture="model._target_",
    num_classes="model.num_classes",
    device="train.device",
    batch_size="dataloader.train.total_batch_size",
    max_iter="train.max_iter",
    max_epochs="train.max_epochs",
    epoch_steps="train.epoch_steps",
    warmup_epochs="train.warmup_epochs",
    filter_empty="dataloader.train.dataset.filter_empty",
    register="dataloader.register",
    override_format="{key}={value}",
)

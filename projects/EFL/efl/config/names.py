"""How each config system names the settings that messages mention: one table, a column per system."""
from ..errors import SettingNames

__all__ = ["LAZY_NAMES", "YACS_NAMES"]

# SettingNames field: (yacs, LazyConfig)
_NAMES = {
    "output_dir": ("OUTPUT_DIR", "train.output_dir"),
    "weights": ("MODEL.WEIGHTS", "train.init_checkpoint"),
    "allow_partial_weights": ("MODEL.ALLOW_PARTIAL_WEIGHTS", "train.allow_partial_weights"),
    "architecture": ("MODEL.META_ARCHITECTURE", "model._target_"),
    "num_classes": ("MODEL.RETINANET.NUM_CLASSES", "model.num_classes"),
    "device": ("MODEL.DEVICE", "train.device"),
    "batch_size": ("SOLVER.IMS_PER_BATCH", "dataloader.train.total_batch_size"),
    "max_iter": ("SOLVER.MAX_ITER", "train.max_iter"),
    "max_epochs": ("SOLVER.MAX_EPOCHS", "train.max_epochs"),
    "epoch_steps": ("SOLVER.EPOCH_STEPS", "train.epoch_steps"),
    "warmup_epochs": ("SOLVER.WARMUP_EPOCHS", "train.warmup_epochs"),
    "filter_empty": ("DATALOADER.FILTER_EMPTY_ANNOTATIONS", "dataloader.train.dataset.filter_empty"),
    "register": ("DATASETS.REGISTER", "dataloader.register"),
    "reset_statistics": ("MODEL.EFL.RESET_STATISTICS", "train.reset_efl_statistics"),
    "override_format": ("{key} {value}", "{key}={value}"),  # how an override is written on the command line
}
YACS_NAMES = SettingNames(**{field: names[0] for field, names in _NAMES.items()})
LAZY_NAMES = SettingNames(**{field: names[1] for field, names in _NAMES.items()})

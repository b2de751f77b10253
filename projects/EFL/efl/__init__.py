"""
Equalized Focal Loss for detectron2.

- ``efl.losses``: EqualizedFocalLoss and EqualizedQualityFocalLoss; torch only, usable in any detector.
- With detectron2 installed, importing ``efl`` also registers the detectron2 parts: the meta-architectures
  ``EFLRetinaNet`` and ``ImprovedRetinaNet``, the backbone ``build_retinanet_resnet_fpn_lateral_p6p7_backbone``,
  and the embedded synthetic long-tailed datasets (``efl.modeling``, ``efl.data``, ``efl.engine``,
  ``efl.evaluation``, ``efl.config``, ``efl.checks``); it also exports ``EFLFCOS``, the LazyConfig model of FCOS
  with EFL (not registered: detectron2 has no yacs config for FCOS).
"""
from .losses import EqualizedFocalLoss, EqualizedQualityFocalLoss, check_efl_hyperparameters

__all__ = ["EqualizedFocalLoss", "EqualizedQualityFocalLoss", "check_efl_hyperparameters"]

try:
    import detectron2  # noqa: F401
except ImportError:  # only the loss is available; an error inside our detectron2 side still surfaces below
    pass
else:
    from .checks import ConfigError, check_config
    from .config import add_efl_config, load_config
    from .data import lvis_frequency_groups, register_datasets, register_synthetic_lvis
    from .engine import FullModelGradientClipping
    from .evaluation import LVISEvaluator, build_evaluator
    from .modeling import EFLFCOS, EFLDetectorMixin, EFLRetinaNet, ImprovedRetinaNet

    __all__ += [
        "ConfigError",
        "EFLDetectorMixin",
        "EFLFCOS",
        "EFLRetinaNet",
        "FullModelGradientClipping",
        "ImprovedRetinaNet",
        "LVISEvaluator",
        "add_efl_config",
        "build_evaluator",
        "check_config",
        "load_config",
        "lvis_frequency_groups",
        "register_datasets",
        "register_synthetic_lvis",
    ]

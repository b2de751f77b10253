"""
Equalized Focal Loss for detectron2.

- ``efl.losses``: EqualizedFocalLoss and EqualizedQualityFocalLoss; torch only, usable in any detector.
- With detectron2 installed, importing ``efl`` also registers the detectron2 parts: the meta-architectures
  ``EFLRetinaNet`` and ``ImprovedRetinaNet``, the backbone ``build_retinanet_resnet_fpn_lateral_p6p7_backbone``
  and the embedded synthetic long-tailed datasets. Its layers, each importing only those before it:
  ``efl.modeling`` (the detectors), ``efl.data`` (datasets, samplers, the training loader), ``efl.engine`` (the one
  training path), ``efl.config`` (the yacs and LazyConfig front-ends). ``EFLFCOS`` is the LazyConfig model of FCOS
  with EFL (not registered: detectron2 has no yacs config for FCOS).
"""
from .errors import ConfigError
from .losses import EqualizedFocalLoss, EqualizedQualityFocalLoss, check_efl_hyperparameters

__all__ = ["ConfigError", "EqualizedFocalLoss", "EqualizedQualityFocalLoss", "check_efl_hyperparameters"]

try:
    import detectron2  # noqa: F401
except ImportError:  # only the loss is available; an error inside our detectron2 side still surfaces below
    pass
else:
    from .config import add_efl_config, build_evaluator, check, load, load_config, recipe_of
    from .data import lvis_frequency_groups, register_datasets, register_synthetic_lvis
    from .engine import FullModelGradientClipping
    from .evaluation import LVISEvaluator
    from .modeling import EFLFCOS, EFLDetectorMixin, EFLRetinaNet, ImprovedRetinaNet

    __all__ += [
        "EFLDetectorMixin",
        "EFLFCOS",
        "EFLRetinaNet",
        "FullModelGradientClipping",
        "ImprovedRetinaNet",
        "LVISEvaluator",
        "add_efl_config",
        "build_evaluator",
        "check",
        "load",
        "load_config",
        "lvis_frequency_groups",
        "recipe_of",
        "register_datasets",
        "register_synthetic_lvis",
    ]

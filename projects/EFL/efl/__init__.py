"""
Equalized Focal Loss for detectron2. Importing this package registers the meta-architectures ``EFLRetinaNet``
and ``ImprovedRetinaNet``, the backbone ``build_retinanet_resnet_fpn_lateral_p6p7_backbone``, and the embedded
synthetic long-tailed datasets.
"""
from .checks import ConfigError, check_config
from .config import add_efl_config
from .data import register_synthetic_lvis
from .evaluation import LVISEvaluator, build_evaluator
from .hooks import FullModelGradientClipping
from .improved_baseline import ImprovedRetinaNet
from .loss import EqualizedFocalLoss, EqualizedQualityFocalLoss, check_efl_hyperparameters
from .retinanet import EFLRetinaNet, lvis_frequency_groups

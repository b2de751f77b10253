"""
The detectron2 side of EFL: the detectors (EFLRetinaNet and ImprovedRetinaNet are registered in
META_ARCH_REGISTRY on import; EFLFCOS is built by LazyConfig), their head, neck and assignment, and the seam they
share (:class:`EFLDetectorMixin`).
"""
from .atss import atss_assign
from .efl_detector import CLS_LOSSES, FREQUENCY_GROUPS, EFLDetectorMixin, build_cls_loss
from .fcos import EFLFCOS
from .head import IoURetinaNetHead
from .improved_baseline import ImprovedRetinaNet
from .neck import LateralP6P7, PaddedFPN, build_retinanet_resnet_fpn_lateral_p6p7_backbone
from .retinanet import EFLRetinaNet

__all__ = [
    "CLS_LOSSES",
    "EFLDetectorMixin",
    "EFLFCOS",
    "EFLRetinaNet",
    "FREQUENCY_GROUPS",
    "ImprovedRetinaNet",
    "IoURetinaNetHead",
    "LateralP6P7",
    "PaddedFPN",
    "atss_assign",
    "build_cls_loss",
    "build_retinanet_resnet_fpn_lateral_p6p7_backbone",
]

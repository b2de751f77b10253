"""
The detectron2 side of EFL: the detectors (registered in META_ARCH_REGISTRY on import), their head, neck and
assignment, and the seam they share (:class:`EFLDetectorMixin`).
"""
from .atss import atss_assign
from .efl_detector import CLS_LOSSES, EFLDetectorMixin, build_cls_loss
from .head import IoURetinaNetHead
from .improved_baseline import ImprovedRetinaNet
from .neck import LateralP6P7, PaddedFPN, build_retinanet_resnet_fpn_lateral_p6p7_backbone
from .retinanet import EFLRetinaNet

__all__ = [
    "CLS_LOSSES",
    "EFLDetectorMixin",
    "EFLRetinaNet",
    "ImprovedRetinaNet",
    "IoURetinaNetHead",
    "LateralP6P7",
    "PaddedFPN",
    "atss_assign",
    "build_cls_loss",
    "build_retinanet_resnet_fpn_lateral_p6p7_backbone",
]

"""
Equalized Focal Loss and Equalized Quality Focal Loss, with the per-class gradient statistics that drive them.

This package imports torch only (and Triton, on CUDA, where it is installed): ``from efl.losses import
EqualizedFocalLoss`` works in any PyTorch detector, without detectron2.
"""
from .equalized_focal_loss import EqualizedFocalLoss, EqualizedQualityFocalLoss, check_efl_hyperparameters
from .function import IMPLEMENTATIONS, KERNELS
from .targets import DenseTargets

__all__ = [
    "DenseTargets",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "IMPLEMENTATIONS",
    "KERNELS",
    "check_efl_hyperparameters",
]

"""Test-time resizing with OpenCV, as the EFL authors' released models were evaluated."""
import cv2
import numpy as np

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T

__all__ = ["OpenCVResizeShortestEdge", "build_test_loader"]


class OpenCVResizeTransform(T.ResizeTransform):
    """detectron2's ResizeTransform, with the image resized by cv2.resize (INTER_LINEAR) instead of PIL."""

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)


class OpenCVResizeShortestEdge(T.ResizeShortestEdge):
    """detectron2's ResizeShortestEdge (same output size, rounded to nearest), resizing with OpenCV."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        resize = super().get_transform(image)
        if isinstance(resize, T.NoOpTransform):
            return resize
        return OpenCVResizeTransform(resize.h, resize.w, resize.new_h, resize.new_w)


def build_test_loader(cfg: CfgNode, dataset_name: str):
    """detectron2's test loader; with INPUT.TEST_RESIZE_BACKEND "opencv" its resize uses OpenCV."""
    if cfg.INPUT.TEST_RESIZE_BACKEND == "pil":
        return build_detection_test_loader(cfg, dataset_name)
    if cfg.INPUT.TEST_RESIZE_BACKEND != "opencv":
        raise ValueError(f"INPUT.TEST_RESIZE_BACKEND must be 'pil' or 'opencv', got {cfg.INPUT.TEST_RESIZE_BACKEND!r}")
    resize = OpenCVResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return build_detection_test_loader(cfg, dataset_name, mapper=DatasetMapper(cfg, False, augmentations=[resize]))

"""Test-time resizing with OpenCV, as the EFL authors' released models were evaluated."""
import cv2
import numpy as np

from detectron2.data import transforms as T

__all__ = ["OpenCVResizeShortestEdge"]


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

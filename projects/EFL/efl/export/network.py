"""
What is exported of a dense detector: its network (normalisation, padding to the size divisibility, backbone, FPN,
head) as :class:`DetectorNetwork`, and the :class:`NetworkSignature` that an exported file carries so that it is
only ever post-processed by a detector of the same shape.
"""
import json
from typing import List, NamedTuple, Tuple

from torch import Tensor, nn

from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from ..errors import ConfigError, SettingNames
from ..modeling import ImprovedRetinaNet

__all__ = ["DetectorNetwork", "NetworkSignature", "head_outputs"]

# The head's outputs of each detector, in the order it returns them and its forward_inference reads them; the
# first match counts (ImprovedRetinaNet is a RetinaNet).
_HEAD_OUTPUTS = (
    (ImprovedRetinaNet, ("logits", "deltas", "iou_logits")),
    (FCOS, ("logits", "deltas", "centerness")),
    (RetinaNet, ("logits", "deltas")),
)


def head_outputs(detector: nn.Module, names: SettingNames = SettingNames()) -> Tuple[str, ...]:
    """
    The names of ``detector``'s head outputs (per level each), in the order its head returns them.

    Raises:
        ConfigError: for a detector this package cannot export (any other than RetinaNet's and FCOS's kind).
    """
    for detector_class, outputs in _HEAD_OUTPUTS:
        if isinstance(detector, detector_class):
            return outputs
    supported = ", ".join(c.__name__ for c, _ in _HEAD_OUTPUTS)
    raise ConfigError(
        f"{names.architecture} is {type(detector).__name__}: only dense detectors ({supported} and their "
        "subclasses, such as EFLRetinaNet and EFLFCOS) are exported"
    )


class DetectorNetwork(DenseDetector):
    """
    The network of a dense detector, sharing its modules: detectron2's preprocessing (normalisation, padding to the
    backbone's size divisibility), the backbone and the head; without the loss, its EFL statistics and the
    inference (anchors, top-k, NMS), which :func:`efl.export.postprocess_outputs` runs on what this returns.
    """

    def __init__(self, detector: DenseDetector):
        super().__init__(
            detector.backbone,
            detector.head,
            detector.head_in_features,
            pixel_mean=detector.pixel_mean.flatten().tolist(),
            pixel_std=detector.pixel_std.flatten().tolist(),
        )
        self.to(detector.device)

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        """
        Args:
            image: (3, h, w) float32, one image resized as the test loader resizes it, in the model's input format
                (BGR or RGB, 0-255), neither normalised nor padded.

        Returns:
            the head's per-level outputs, output by output (:func:`head_outputs`) and level by level within each:
            (1, A*C, Hi, Wi) class logits, (1, A*4, Hi, Wi) box deltas, and for ImprovedRetinaNet (1, A, Hi, Wi)
            IoU logits, for FCOS (1, 1, Hi, Wi) centerness logits; Hi x Wi is level i's grid over the padded image.
        """
        images = self.preprocess_image([{"image": image}])
        features = self.backbone(images.tensor)
        predictions = self.head([features[f] for f in self.head_in_features])
        return tuple(level for output in predictions for level in output)


class NetworkSignature(NamedTuple):
    """The shape of a detector's network outputs, stored with an export and compared with the post-processing
    detector's: another class count or anchor layout would decode the outputs into wrong boxes without an error."""

    architecture: str  # the detector's class
    num_classes: int
    features: Tuple[str, ...]  # the levels the head reads, e.g. ("p3", ..., "p7")
    outputs: Tuple[str, ...]  # head_outputs
    anchors: Tuple[int, ...]  # anchors per location on each level

    @classmethod
    def of(cls, detector: DenseDetector, names: SettingNames = SettingNames()) -> "NetworkSignature":
        return cls(
            type(detector).__name__,
            detector.num_classes,
            tuple(detector.head_in_features),
            head_outputs(detector, names),
            tuple(detector.anchor_generator.num_anchors),
        )

    def output_names(self) -> List[str]:
        """The names of the exported outputs, in :meth:`DetectorNetwork.forward`'s order: "logits_p3", ..."""
        return [f"{output}_{feature}" for output in self.outputs for feature in self.features]

    def to_json(self) -> str:
        return json.dumps(self._asdict())

    @classmethod
    def from_json(cls, text: str) -> "NetworkSignature":
        """Raises ValueError (or a subclass) when ``text`` is no signature."""
        fields = json.loads(text)
        if not isinstance(fields, dict) or set(fields) != set(cls._fields):
            raise ValueError(f"expected the fields {', '.join(cls._fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def check_fits(self, detector: DenseDetector, exported: str, names: SettingNames = SettingNames()) -> None:
        """
        Raises:
            ConfigError: naming the first difference, when ``detector`` (built from the config) is not the detector
                that ``exported`` (a file) was exported from.
        """
        built = NetworkSignature.of(detector, names)
        if built.num_classes != self.num_classes:
            raise ConfigError(
                f"{exported} was exported with {self.num_classes} classes, but the config has {built.num_classes} "
                f"({names.num_classes}): predict with the config it was exported from"
            )
        for field in self._fields:
            if getattr(built, field) != getattr(self, field):
                raise ConfigError(
                    f"{exported} was exported from another detector than the config builds ({field}: "
                    f"{getattr(self, field)} in the file, {getattr(built, field)} from the config): predict with the "
                    "config it was exported from"
                )

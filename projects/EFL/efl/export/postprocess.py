"""
The post-processing shared by every way of running a detector's network (PyTorch eager, TorchScript, ONNX
Runtime): the detector's own detectron2 inference (anchors, score threshold, top-k per level, box decoding,
class-wise NMS, detections per image) on the network's raw outputs, then the rescaling to the original image.
It stays outside the exported graph: traced, it would bake the sizes of one input (the top-k of min(k, Hi x Wi x A)
per level, the number of anchors) into the graph.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances

__all__ = ["Network", "SplitDetector", "postprocess_outputs"]

# A detector's network, however it runs: (3, h, w) image -> its flat outputs (DetectorNetwork.forward).
Network = Callable[[Tensor], Sequence[Tensor]]


def postprocess_outputs(
    detector: DenseDetector, outputs: Sequence[Tensor], image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> Instances:
    """
    Args:
        detector: the detector the network belongs to (in eval mode); only its inference runs.
        outputs: the network's outputs for one image, as :meth:`DetectorNetwork.forward` returns them: K outputs
            (logits, deltas[, IoU or centerness logits]) of L levels each, (1, A*k, Hi, Wi) tensors, output-major.
        image_size: (h, w) of the image the network was given, before padding.
        output_size: (H, W) of the original image, which the boxes are scaled to.

    Returns:
        the detections: ``pred_boxes`` (XYXY, in output_size pixels), ``scores``, ``pred_classes`` (contiguous ids).
    """
    device = detector.device
    levels = len(detector.head_in_features)
    outputs = [x.to(device) for x in outputs]
    predictions = [outputs[k : k + levels] for k in range(0, len(outputs), levels)]
    # forward_inference reads the images' sizes only, and the features' grid sizes (for the anchors), which the
    # logits share.
    images = ImageList(torch.empty(0, device=device), [tuple(image_size)])
    (instances,) = detector.forward_inference(images, predictions[0], predictions)
    return detector_postprocess(instances, *output_size)


class SplitDetector:
    """
    A dense detector run as its network (exported or not) followed by :func:`postprocess_outputs`. Called as a
    detectron2 model in eval mode (batched inputs in, ``[{"instances": ...}]`` out), so that detectron2's
    ``inference_on_dataset`` evaluates it and a predictor draws its detections.
    """

    def __init__(self, network: Network, detector: DenseDetector):
        """
        Args:
            network: computes ``detector``'s network outputs (a :class:`DetectorNetwork`, a TorchScript module, an
                ONNX Runtime session: :func:`efl.export.load_network`).
            detector: in eval mode, for its inference.
        """
        self.network = network
        self.detector = detector

    @torch.no_grad()
    def __call__(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """
        Args:
            batched_inputs: as a test loader gives them: each a dict with "image", (3, h, w) resized, in the model's
                input format, and optionally the original "height" and "width".
        """
        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            image_size = tuple(image.shape[-2:])
            output_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            outputs = self.network(image.float())
            results.append({"instances": postprocess_outputs(self.detector, outputs, image_size, output_size)})
        return results

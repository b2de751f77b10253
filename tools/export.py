#!/usr/bin/env python
"""
Export a trained dense detector's network (EFLRetinaNet, ImprovedRetinaNet, EFLFCOS) to TorchScript or ONNX, for
tools/predict.py --model and for your own deployment (docs/deploy.md).

    python tools/export.py --config-file configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml --format onnx \\
        --output exported/ MODEL.WEIGHTS output/demo/retinanet_R_18_FPN_demo_efl/model_final.pth
    python tools/export.py --config-file configs/Synthetic/fcos_R_18_demo_efl.py --format torchscript \\
        --output exported/ train.init_checkpoint=output/demo/fcos_R_18_demo_efl/model_final.pth

The exported graph takes one image, a (3, H, W) float32 tensor resized as the config's test loader resizes it, in
the model's input format (BGR or RGB, 0-255), of any H and W; it normalises and pads it, runs the backbone and the
head, and returns the head's raw per-level outputs (logits, box deltas, and the IoU logits of ImprovedRetinaNet
or the centerness of FCOS). The post-processing (anchors, top-k, NMS) stays outside, in the detector's own code
(efl.export.postprocess_outputs). --output gets model.onnx or model.ts (with detectron2's TorchScript IR dumps);
the file records the detector it came from, which predict.py checks against its config.

The config is a yacs ``.yaml`` (overrides KEY VALUE) or a LazyConfig ``.py`` (overrides key=value); its weights
(MODEL.WEIGHTS, train.init_checkpoint) load as train_net.py's --eval-only loads them, strictly and safely
(--trust-pickle for a file whose unpickling runs code). The export is traced on the CPU; the written file is then
run on an image of another size than the traced one, and its outputs compared with PyTorch's.
"""
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from efl import ConfigError
from efl.export import FORMATS, DetectorNetwork, Network, NetworkSignature, export_network, load_network

import predict  # tools/, beside this script

# The image traced, (3, H, W), and the image of another size and padding the exported file is checked on: not
# square, and every level of a P3-P7 pyramid larger than 1 x 1.
TRACED_SIZE = (256, 320)
CHECKED_SIZE = (160, 224)
# The largest difference from PyTorch's outputs, relative to their largest magnitude, that float rounding explains;
# an export that baked the traced size into its graph differs by the order of the outputs themselves.
TOLERANCE = 1e-2


def relative_difference(network: DetectorNetwork, exported: Network, size: Tuple[int, int]) -> float:
    """
    The largest absolute difference between the outputs of ``network`` and ``exported`` on a random (3, *size) image,
    relative to the largest absolute output of ``network``.

    Raises:
        ConfigError: when their shapes differ or the difference exceeds TOLERANCE: the export does not generalise
            from the traced size.
    """
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = [x.cpu() for x in network(image)]
    outputs = [x.cpu() for x in exported(image)]
    shapes = [tuple(x.shape) for x in outputs] == [tuple(x.shape) for x in expected]
    difference = max((x - y).abs().max().item() for x, y in zip(outputs, expected)) if shapes else float("inf")
    difference /= max(x.abs().max().item() for x in expected)
    if difference > TOLERANCE:
        raise ConfigError(
            f"the exported network does not generalise from the traced {TRACED_SIZE[0]} x {TRACED_SIZE[1]} image: on "
            f"a {size[0]} x {size[1]} one its outputs differ from PyTorch's"
            + ("" if shapes else " in shape")
        )
    return difference


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Returns the exported file."""
    parser = predict.argument_parser(__doc__)
    parser.add_argument("--format", required=True, choices=tuple(FORMATS))
    parser.add_argument("--output", required=True, type=Path, help="folder to write the exported model to")
    args, opts = predict.parse_with_overrides(parser, argv)
    try:
        recipe = predict.build_config(args.config_file, opts, "cpu")
        names = recipe.settings.names
        detector = predict.load_detector(recipe, args.trust_pickle)
        signature = NetworkSignature.of(detector, names)
        network = DetectorNetwork(detector)
        path = export_network(network, signature, torch.rand(3, *TRACED_SIZE) * 255, args.format, str(args.output))
        difference = relative_difference(network, load_network(path, detector, "cpu", names), CHECKED_SIZE)
    except (predict.InputError, ConfigError) as e:
        sys.exit(f"export.py: error: {e}")
    print(
        f"{path}: {signature.architecture}, {signature.num_classes} classes, outputs {', '.join(signature.outputs)} "
        f"of {', '.join(signature.features)}; on a {CHECKED_SIZE[0]} x {CHECKED_SIZE[1]} image its outputs differ from "
        f"PyTorch's by at most {difference:.1e} of their largest magnitude"
    )
    return Path(path)


if __name__ == "__main__":
    main()

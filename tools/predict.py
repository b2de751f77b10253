#!/usr/bin/env python
"""
Draw a trained model's detections on your own images.

    python tools/predict.py --config-file configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml \\
        MODEL.WEIGHTS output/demo/retinanet_R_18_FPN_demo_efl/model_final.pth \\
        --input photo.jpg more_photos/ --output predictions/ --confidence 0.5

Every image (a file, or each image file in a folder) is written to --output as <name>.png, with the detections
scoring at least --confidence drawn by detectron2's Visualizer: boxes, class names from the metadata of the
config's DATASETS.TEST[0] (else DATASETS.TRAIN[0]) and scores. Config overrides (KEY VALUE pairs, such as
MODEL.WEIGHTS) may stand anywhere before --input. The weights load as train_net.py's --eval-only loads them: they
must fit the model exactly (MODEL.ALLOW_PARTIAL_WEIGHTS True relaxes that), and a file that needs full unpickling is
refused unless --trust-pickle.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from detectron2.config import CfgNode, get_cfg
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from efl import ConfigError, add_efl_config
from efl.data import register_datasets
from efl.engine import EFLCheckpointer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Smaller images are drawn enlarged to this shorter side, so that class names and scores stay legible.
MIN_DRAWING_SIZE = 480


class InputError(Exception):
    """A problem with the command line's inputs, reported in one line."""


def build_config(config_file: str, opts: Sequence[str], device: str = "auto") -> CfgNode:
    """The config of a model to predict with: ``config_file`` with ``opts`` applied, on ``device`` (auto: GPU if any)."""
    if not Path(config_file).is_file():
        raise InputError(f"config file not found: {config_file}")
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(config_file)
    if len(opts) % 2:
        raise InputError(f"config overrides come in KEY VALUE pairs, got {' '.join(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError) as e:
        raise InputError(f"bad config override: {e}") from e
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.DEVICE = device
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise InputError("no weights to predict with: pass MODEL.WEIGHTS path/to/model_final.pth")
    if "://" not in weights and not Path(weights).is_file():
        raise InputError(f"MODEL.WEIGHTS file not found: {weights}")
    cfg.freeze()
    register_datasets(cfg.DATASETS.REGISTER)  # for the class names of the user's own sets
    return cfg


def build_predictor(cfg: CfgNode, trust_pickle: bool = False) -> DefaultPredictor:
    """detectron2's DefaultPredictor, with cfg.MODEL.WEIGHTS loaded by EFLCheckpointer (strict and safe)."""
    predictor = DefaultPredictor(_without_weights(cfg))
    EFLCheckpointer(
        predictor.model, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS, trust_pickle=trust_pickle
    ).load(cfg.MODEL.WEIGHTS)
    return predictor


def _without_weights(cfg: CfgNode) -> CfgNode:
    # DefaultPredictor's own checkpointer would load any file, fitting or not: it gets nothing to load
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def dataset_metadata(cfg: CfgNode) -> Metadata:
    """The metadata (class names) of the config's test set, else of its training set."""
    names = tuple(cfg.DATASETS.TEST) or tuple(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0]) if names else Metadata()


def image_paths(inputs: Sequence[str]) -> List[Path]:
    """The image files named by ``inputs`` (files, or folders whose image files are taken in name order)."""
    paths = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {name}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"input not found: {name}")
    return paths


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR image, the layout DefaultPredictor takes."""
    try:
        return read_image(str(path), format="BGR")
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def drawing_scale(image: np.ndarray) -> float:
    """How much to enlarge an (H, W, C) image for drawing: to MIN_DRAWING_SIZE on its shorter side, never shrunk."""
    return max(1.0, MIN_DRAWING_SIZE / min(image.shape[:2]))


def draw_detections(
    predictor: DefaultPredictor, image: np.ndarray, metadata: Metadata, confidence: float
) -> np.ndarray:
    """
    Args:
        image: (H, W, 3) uint8 BGR.
        confidence: the lowest score drawn.

    Returns:
        (H * s, W * s, 3) uint8 RGB, s = drawing_scale(image): the image with the boxes, class names and scores of
        the detections scoring >= confidence.
    """
    instances = predictor(image)["instances"].to("cpu")
    instances = instances[instances.scores >= confidence]
    visualizer = Visualizer(image[:, :, ::-1], metadata, scale=drawing_scale(image), instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, nargs="+", help="image files and folders of images")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the drawings to")
    parser.add_argument("--confidence", type=float, default=0.5, help="lowest score drawn (default 0.5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load weights that need full unpickling (runs code from the file)"
    )
    # Overrides may stand between the flags (as in `--config-file C MODEL.WEIGHTS W --input ...`).
    args, opts = parser.parse_known_args(argv)
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        paths = image_paths(args.input)
        outputs = [args.output / f"{p.stem}.png" for p in paths]
        if len(set(outputs)) < len(outputs):
            raise InputError("two inputs have the same name; their drawings would overwrite each other")
        cfg = build_config(args.config_file, opts, args.device)
        predictor = build_predictor(cfg, args.trust_pickle)
        metadata = dataset_metadata(cfg)
        args.output.mkdir(parents=True, exist_ok=True)
        for path, output in zip(paths, outputs):
            drawing = draw_detections(predictor, load_image(path), metadata, args.confidence)
            Image.fromarray(drawing).save(output)
            print(f"{path} -> {output}")
    except (InputError, ConfigError) as e:
        sys.exit(f"predict.py: error: {e}")


if __name__ == "__main__":
    main()

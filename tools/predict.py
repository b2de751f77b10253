#!/usr/bin/env python
"""
Draw a trained model's detections on your own images, or write them to a JSON file.

    python tools/predict.py --config-file configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml \\
        MODEL.WEIGHTS output/demo/retinanet_R_18_FPN_demo_efl/model_final.pth \\
        --input photo.jpg more_photos/ --output predictions/ --confidence 0.5
    python tools/predict.py --config-file configs/Synthetic/fcos_R_18_demo_efl.py \\
        train.init_checkpoint=output/demo/fcos_R_18_demo_efl/model_final.pth --input photo.jpg --json detections.json
    python tools/predict.py --config-file configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml \\
        --model exported/model.onnx --input photos/ --json detections.json

The config is a yacs ``.yaml`` (overrides KEY VALUE) or a LazyConfig ``.py`` (overrides key=value); overrides may
stand anywhere before --input. Images are resized as the config's test loader resizes them. The weights
(MODEL.WEIGHTS, train.init_checkpoint) load as train_net.py's --eval-only loads them: they must fit the model
exactly (MODEL.ALLOW_PARTIAL_WEIGHTS True / train.allow_partial_weights=True relaxes that), and a file that needs
full unpickling is refused unless --trust-pickle. With --model, the network exported by tools/export.py (a .onnx
file runs in ONNX Runtime, a .ts file in TorchScript) replaces the weights: the config then gives the
post-processing, which is the detector's own (docs/deploy.md), and must be the config it was exported from.

Every image (a file, or each image file in a folder) gets the detections scoring at least --confidence:
- with --output, drawn by detectron2's Visualizer into <output>/<name>.png (boxes, class names and scores);
- with --json, written to one file: a list of {"file", "boxes" (XYXY, in the image's pixels), "scores", "classes"
  (contiguous class ids), "names" (their class names)}, one per image.
The class names are those of the config's first test set (else its first training set), read without loading it.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper, Metadata, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

import efl.config
from efl import ConfigError
from efl.data import class_names
from efl.engine import EFLCheckpointer, Recipe
from efl.export import SplitDetector, load_network

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Smaller images are drawn enlarged to this shorter side, so that class names and scores stay legible.
MIN_DRAWING_SIZE = 480


class InputError(Exception):
    """A problem with the command line's inputs, reported in one line."""


def build_config(config_file: str, opts: Sequence[str], device: str = "auto", weights: bool = True) -> Recipe:
    """
    The recipe of the model to predict with: ``config_file`` (a yacs ``.yaml`` or a LazyConfig ``.py``) with
    ``opts`` applied, on ``device`` (auto: the GPU if any; an override of the config's device in ``opts`` wins).
    With ``weights``, the config must name weights that exist; without, it is the config of an exported model
    (whose weights are in its file).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_override = [f"train.device={device}"] if config_file.endswith(".py") else ["MODEL.DEVICE", device]
    # eval_only demands a LazyConfig's weights, which an exported model does not need
    recipe = efl.config.load(config_file, [*device_override, *opts], eval_only=weights)
    settings, names = recipe.settings, recipe.settings.names
    if weights and not settings.weights:
        raise InputError(f"no weights given: pass {names.setting(names.weights, 'path/to/model_final.pth')}")
    if weights and "://" not in settings.weights and not Path(settings.weights).is_file():
        raise InputError(f"{names.weights} file not found: {settings.weights}")
    return recipe


def load_detector(recipe: Recipe, trust_pickle: bool = False) -> nn.Module:
    """
    The config's model in eval mode, with its weights loaded as train_net.py --eval-only loads them: they must fit
    the model exactly (unless the config allows partial weights), and a file whose unpickling runs code is refused
    unless ``trust_pickle``.
    """
    settings = recipe.settings
    model = recipe.build_model(None)
    EFLCheckpointer(
        model, allow_partial=settings.allow_partial_weights, trust_pickle=trust_pickle, names=settings.names
    ).load(settings.weights)
    return model.eval()


class Predictor:
    """
    detectron2's DefaultPredictor for any config and model: an (H, W, 3) BGR image in, the model's output for it
    out (``{"instances": ...}``, at the image's size), the image resized and converted as the config's test loader
    does it (its DatasetMapper's augmentations and image format, BGR or RGB).
    """

    def __init__(self, model, mapper: DatasetMapper):
        """
        Args:
            model: called as a detectron2 model in eval mode: a detector, or a :class:`efl.export.SplitDetector`.
            mapper: the config's test mapper (``Recipe.test_mapper``).
        """
        self.model = model
        self.mapper = mapper

    def __call__(self, image: np.ndarray) -> Dict[str, Instances]:
        height, width = image.shape[:2]
        if self.mapper.image_format == "RGB":
            image = image[:, :, ::-1]
        resized = T.AugInput(image)
        self.mapper.augmentations(resized)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.image.transpose(2, 0, 1)))  # as DatasetMapper makes it
        with torch.no_grad():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]


def build_predictor(recipe: Recipe, trust_pickle: bool = False, model_file: Optional[str] = None) -> Predictor:
    """
    The config's detector with its weights (:func:`load_detector`), or, given ``model_file``, the network that
    tools/export.py exported to it followed by the config's detector's own inference (efl.export.SplitDetector).
    """
    if model_file is None:
        return Predictor(load_detector(recipe, trust_pickle), recipe.test_mapper())
    settings = recipe.settings
    detector = recipe.build_model(None).eval()
    network = load_network(model_file, detector, settings.device, settings.names)
    return Predictor(SplitDetector(network, detector), recipe.test_mapper())


def dataset_metadata(recipe: Recipe) -> Metadata:
    """
    The metadata of the config's first test set, else of its first training set, with its class names
    (``thing_classes``, read without loading the set: efl.data.class_names).
    """
    settings = recipe.settings
    datasets = settings.test_datasets or settings.train_datasets
    if not datasets:
        return Metadata()
    names = class_names(datasets[0])
    if settings.num_classes is not None and len(names) != settings.num_classes:
        raise ConfigError(
            f"dataset '{datasets[0]}' has {len(names)} classes, the model {settings.num_classes} "
            f"({settings.names.num_classes}): their names would not match the predicted classes"
        )
    metadata = MetadataCatalog.get(datasets[0])
    if metadata.get("thing_classes", None) is None:
        metadata.set(thing_classes=names)  # the same names that loading the set sets
    return metadata


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
    """(H, W, 3) uint8 BGR image, the layout Predictor takes."""
    try:
        return read_image(str(path), format="BGR")
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def drawing_scale(image: np.ndarray) -> float:
    """How much to enlarge an (H, W, C) image for drawing: to MIN_DRAWING_SIZE on its shorter side, never shrunk."""
    return max(1.0, MIN_DRAWING_SIZE / min(image.shape[:2]))


def detect(predictor: Predictor, image: np.ndarray, confidence: float) -> Instances:
    """The detections of an (H, W, 3) BGR image scoring >= confidence, on the CPU."""
    instances = predictor(image)["instances"].to("cpu")
    return instances[instances.scores >= confidence]


def draw_instances(image: np.ndarray, instances: Instances, metadata: Metadata) -> np.ndarray:
    """
    Returns:
        (H * s, W * s, 3) uint8 RGB, s = drawing_scale(image): the (H, W, 3) BGR image with the boxes, class names
        (metadata.thing_classes) and scores of ``instances``.
    """
    visualizer = Visualizer(image[:, :, ::-1], metadata, scale=drawing_scale(image), instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()


def draw_detections(predictor: Predictor, image: np.ndarray, metadata: Metadata, confidence: float) -> np.ndarray:
    """:func:`draw_instances` of the detections of ``image`` scoring >= confidence (:func:`detect`)."""
    return draw_instances(image, detect(predictor, image, confidence), metadata)


def detections_record(path: Path, instances: Instances, metadata: Metadata) -> Dict:
    """One image's entry of the --json file."""
    classes = instances.pred_classes.tolist()
    names = metadata.get("thing_classes", None)
    return {
        "file": str(path),
        "boxes": instances.pred_boxes.tensor.tolist(),
        "scores": instances.scores.tolist(),
        "classes": classes,
        "names": [names[c] for c in classes] if names is not None else [str(c) for c in classes],
    }


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The command line of a tool that builds a model from a config (this one, export.py): --config-file and
    --trust-pickle, and config overrides (:func:`parse_with_overrides`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load weights that need full unpickling (runs code from the file)"
    )
    return parser


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> Tuple[argparse.Namespace, List[str]]:
    """``parser``'s arguments, and the config overrides, which may stand between them (as in
    ``--config-file C MODEL.WEIGHTS W --input ...``)."""
    args, opts = parser.parse_known_args(argv)
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, opts


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--model", metavar="FILE", help="a network exported by tools/export.py (.onnx or .ts)")
    parser.add_argument("--input", required=True, nargs="+", help="image files and folders of images")
    parser.add_argument("--output", type=Path, help="folder to write the drawings to")
    parser.add_argument("--json", type=Path, metavar="FILE", help="file to write the detections to")
    parser.add_argument("--confidence", type=float, default=0.5, help="lowest score drawn and written (default 0.5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args, opts = parse_with_overrides(parser, argv)
    if args.output is None and args.json is None:
        parser.error("nothing to write: give --output (drawings), --json (detections) or both")
    try:
        paths = image_paths(args.input)
        outputs = [args.output / f"{p.stem}.png" for p in paths] if args.output else []
        if len(set(outputs)) < len(outputs):
            raise InputError("two inputs have the same name; their drawings would overwrite each other")
        recipe = build_config(args.config_file, opts, args.device, weights=args.model is None)
        predictor = build_predictor(recipe, args.trust_pickle, args.model)
        metadata = dataset_metadata(recipe)
        if args.output:
            args.output.mkdir(parents=True, exist_ok=True)
        records = []
        for k, path in enumerate(paths):
            image = load_image(path)
            instances = detect(predictor, image, args.confidence)
            records.append(detections_record(path, instances, metadata))
            if args.output:
                Image.fromarray(draw_instances(image, instances, metadata)).save(outputs[k])
                print(f"{path} -> {outputs[k]}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(records))
            print(f"{len(records)} images' detections -> {args.json}")
    except (InputError, ConfigError) as e:
        sys.exit(f"predict.py: error: {e}")


if __name__ == "__main__":
    main()

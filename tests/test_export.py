"""
tools/export.py and predict.py --model: each detector (EFLRetinaNet and the improved baseline from yacs configs,
EFLFCOS and a RetinaNet from LazyConfigs), exported to TorchScript and ONNX, detects what PyTorch detects on
validation images at two input sizes; the shared post-processing gives the detectors' own results; the exported
ONNX model's LVIS AP equals PyTorch's; bad model files and mismatched configs stop with one line.
"""
import functools
import json

import numpy as np
import onnx
import pytest
import torch

import detectron2.data.transforms as T
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances, pairwise_iou

import efl.config
import export
import predict
from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, small_recipe
from efl.data import class_names
from efl.export import FORMATS, DetectorNetwork, NetworkSignature, SplitDetector, head_outputs, load_network

IMPROVED_CONFIG = REPO / "configs" / "Synthetic" / "improved_R_18_demo_efl.yaml"
FCOS_CONFIG = REPO / "tests" / "configs" / "fcos_tiny.py"
# config file, its overrides, and the overrides that give it weights
DETECTORS = {
    "retinanet": (DEMO_CONFIG, SMALL_OPTS, lambda weights: ["MODEL.WEIGHTS", str(weights)]),
    "improved": (IMPROVED_CONFIG, SMALL_OPTS, lambda weights: ["MODEL.WEIGHTS", str(weights)]),
    "fcos": (FCOS_CONFIG, [], lambda weights: [f"train.init_checkpoint={weights}"]),
}
# The validation images the networks are compared on: crops that are not square, (top, left, height, width) of the
# 128 px images, each resized to another shorter side (both differ from export.TRACED_SIZE's).
CROPS = {96: (0, 0, 128, 100), 128: (20, 0, 90, 128)}
# The detections compared: PyTorch's first, at least COMPARED[0] of them and at most COMPARED[1] (assert_same).
COMPARED = (5, 20)
# The head's last convs (by head output), and the mean and standard deviation that spread_scores gives their outputs:
# most anchors background, a few scoring high, boxes near their anchors.
LAST_CONVS = {
    "logits": ("cls_score", -3.0, 1.0),
    "deltas": ("bbox_pred", 0.0, 0.2),
    "iou_logits": ("iou_pred", 1.0, 1.0),
    "centerness": ("ctrness", 1.0, 1.0),
}


def with_weights(name, weights):
    """The command line of detector ``name``'s config with ``weights``."""
    config, overrides, naming = DETECTORS[name]
    return ["--config-file", str(config), *overrides, *naming(weights)]


@functools.lru_cache(maxsize=None)
def validation_inputs():
    """Test loader inputs: the CROPS of validation images, resized."""
    records = DatasetCatalog.get("efl_synth_test_val")
    inputs = []
    for record, (size, (top, left, height, width)) in zip(records, CROPS.items()):
        image = predict.load_image(record["file_name"])[top : top + height, left : left + width]
        resized = T.ResizeShortestEdge(size, 256).get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        inputs.append({"image": tensor, "height": height, "width": width})
    return tuple(inputs)


def spread_scores(model):
    """
    ``model`` (untrained, in eval mode) with the outputs of its head's last convs on the validation inputs drawn as
    N(mean, std) of LAST_CONVS, rather than the near-constant logits of the classification prior and the large
    deltas of an untrained backbone's features; FCOS's boxes 4 strides wide rather than points. Comparing an
    untrained model's detections would compare near-ties.
    """
    generator = torch.Generator().manual_seed(0)
    outputs = head_outputs(model)
    convs = [getattr(model.head, LAST_CONVS[output][0]) for output in outputs]
    levels = len(model.head_in_features)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        network = DetectorNetwork(model.eval())
        values = [network(x["image"].float()) for x in validation_inputs()]
        for k, (output, conv) in enumerate(zip(outputs, convs)):
            _, mean, std = LAST_CONVS[output]
            produced = torch.cat([x.flatten() for v in values for x in v[k * levels : (k + 1) * levels]])
            conv.weight *= std / produced.std()
            conv.bias.fill_(mean)
        if isinstance(model, FCOS):  # its deltas are relu'd distances in strides
            model.head.bbox_pred.bias.fill_(2.0)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """
    One thread for torch and ONNX Runtime (efl.export.load_network gives it as many as torch has): the suite's
    processes and other jobs share 2 cores, and oversubscribed threads make these forward passes several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_EXPORTS = {}


def export_detector(name, tmp_path_factory):
    """
    (the PyTorch detector ``name`` with spread scores, its weights file, {format: the file that tools/export.py
    exported them to}), built and exported once per test session.
    """
    if name not in _EXPORTS:
        folder = tmp_path_factory.mktemp(f"export_{name}")
        config, overrides, _ = DETECTORS[name]
        detector = spread_scores(efl.config.load(str(config), overrides).build_model(None))
        weights = folder / "model.pth"
        torch.save({"model": detector.state_dict()}, weights)
        files = {
            fmt: export.main([*with_weights(name, weights), "--format", fmt, "--output", str(folder / fmt)])
            for fmt in FORMATS
        }
        _EXPORTS[name] = detector, weights, files
    return _EXPORTS[name]


@pytest.fixture(scope="module", params=tuple(DETECTORS))
def exported(request, tmp_path_factory):
    return export_detector(request.param, tmp_path_factory)


def assert_same(got: Instances, expected: Instances):
    """
    The detections scoring above a threshold are as many, and pair up one to one: same class, IoU >= 0.99, scores
    within 1e-3. The threshold lies in the widest gap between the scores of PyTorch's COMPARED[0]-th to
    COMPARED[1]-th detections, which float rounding cannot move a detection across.
    """
    first, last = COMPARED
    assert got.image_size == expected.image_size
    assert len(expected) > last and bool((expected.scores[:-1] >= expected.scores[1:]).all())
    gaps = expected.scores[first - 1 : last] - expected.scores[first : last + 1]
    assert gaps.max() > 1e-3, "PyTorch's scores have no gap wider than their tolerance"
    k = first - 1 + int(gaps.argmax())
    threshold = (expected.scores[k] + expected.scores[k + 1]) / 2
    got, expected = got[got.scores > threshold], expected[expected.scores > threshold]
    assert len(got) == len(expected)
    fits = (
        (got.pred_classes[:, None] == expected.pred_classes[None])
        & (pairwise_iou(got.pred_boxes, expected.pred_boxes) >= 0.99)
        & ((got.scores[:, None] - expected.scores[None]).abs() <= 1e-3)
    )
    unpaired = set(range(len(expected)))
    for row in fits:  # in score order, so that each takes its own counterpart
        pair = next((j for j in sorted(unpaired) if row[j]), None)
        assert pair is not None, "a detection without its counterpart"
        unpaired.remove(pair)


def detections(model, inputs):
    with torch.no_grad():
        return model([inputs])[0]["instances"]


@pytest.mark.parametrize("fmt", tuple(FORMATS))
def test_exported_detections_equal_pytorchs_at_two_sizes(exported, fmt):
    detector, _, files = exported
    split = SplitDetector(load_network(str(files[fmt]), detector), detector)
    for inputs in validation_inputs():
        expected = detections(detector, inputs)
        assert expected.image_size == (inputs["height"], inputs["width"])
        assert_same(detections(split, inputs), expected)


def test_the_shared_postprocessing_gives_the_detectors_own_results(exported):
    detector, _, _ = exported
    split = SplitDetector(DetectorNetwork(detector), detector)
    for inputs in validation_inputs():
        expected, got = detections(detector, inputs), detections(split, inputs)
        assert len(expected) > 0 and got.image_size == expected.image_size
        assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)
        assert torch.equal(got.scores, expected.scores) and torch.equal(got.pred_classes, expected.pred_classes)


def test_the_exported_graphs_hold_no_loss_state(exported):
    detector, _, files = exported
    assert any(key.startswith("cls_loss.") for key in detector.state_dict())  # what the exports must leave out
    exported_keys = set(load_network(str(files["torchscript"]), detector).state_dict())
    network = DetectorNetwork(detector)
    assert exported_keys == {name for name, _ in [*network.named_parameters(), *network.named_buffers()]}
    assert not any(key.startswith("cls_loss.") or key == "loss_normalizer" for key in exported_keys)
    initializers = [i.name for i in onnx.load(str(files["onnx"])).graph.initializer]
    assert initializers and not any("cls_loss" in name or "loss_normalizer" in name for name in initializers)


def test_a_lazyconfig_retinanet_exports(tmp_path):
    # the LVIS R-50 RetinaNet LazyConfig at a tiny size: 8 classes, one 64-channel conv per head branch; export.py
    # stops unless the file's outputs on an image of another size equal PyTorch's
    config = str(REPO / "configs" / "LVISv1" / "retinanet_R_50_FPN_24ep_efl.py")
    overrides = ["model.num_classes=8", "model.head.conv_dims=[64]", "train.device=cpu"]
    torch.save({"model": efl.config.load(config, overrides).build_model(None).state_dict()}, tmp_path / "model.pth")
    weights = f"train.init_checkpoint={tmp_path / 'model.pth'}"
    path = export.main(["--config-file", config, *overrides, weights, "--format", "onnx", "--output", str(tmp_path)])
    assert NetworkSignature.from_json(onnx.load(str(path)).metadata_props[0].value) == NetworkSignature(
        "EFLRetinaNet", 8, ("p3", "p4", "p5", "p6", "p7"), ("logits", "deltas"), (9,) * 5
    )


def test_the_exported_onnx_model_has_pytorchs_lvis_ap(trained_demo, tmp_path):
    out, _ = trained_demo
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    args = ["--config-file", str(DEMO_CONFIG), *SMALL_OPTS, *weights, "--format", "onnx", "--output", str(tmp_path)]
    path = export.main(args)
    recipe = small_recipe(*weights, "OUTPUT_DIR", tmp_path)
    detector = predict.load_detector(recipe)
    (test_set,) = recipe.test_sets()
    metrics, scores = {}, {}
    for name, model in (("pytorch", detector), ("onnx", SplitDetector(load_network(str(path), detector), detector))):
        scores[name] = []

        def recording(inputs, model=model, scores=scores[name]):
            outputs = model(inputs)
            scores += [score for output in outputs for score in output["instances"].scores.tolist()]
            return outputs

        loader = test_set.build_loader()  # first: it generates the set, whose file the evaluator reads
        metrics[name] = inference_on_dataset(recording, loader, test_set.build_evaluator())["bbox"]
    assert metrics["onnx"].keys() == metrics["pytorch"].keys()
    for metric, value in metrics["pytorch"].items():
        assert metrics["onnx"][metric] == pytest.approx(value, abs=0.1), metric
    # the 4-iteration model's AP is low: its detections show the evaluation saw the same ones
    assert len(scores["onnx"]) == len(scores["pytorch"]) > 24
    np.testing.assert_allclose(sorted(scores["onnx"]), sorted(scores["pytorch"]), atol=1e-4)


def instances_of(record, image_size):
    """The detections of a predict.py --json record."""
    instances = Instances(image_size)
    instances.pred_boxes = Boxes(torch.tensor(record["boxes"]))
    instances.scores = torch.tensor(record["scores"])
    instances.pred_classes = torch.tensor(record["classes"])
    return instances


def test_predict_with_an_exported_lazyconfig_model_writes_pytorchs_detections(tmp_path_factory, tmp_path):
    # predict.py's command lines: FCOS's LazyConfig with the weights, and with the ONNX network exported from them
    _, weights, files = export_detector("fcos", tmp_path_factory)
    image = DatasetCatalog.get("efl_synth_test_val")[0]["file_name"]
    run = ["--input", image, "--confidence", "0"]
    predict.main([*with_weights("fcos", weights), *run, "--json", str(tmp_path / "pytorch.json")])
    exported = ["--config-file", str(FCOS_CONFIG), "--model", str(files["onnx"])]
    predict.main([*exported, *run, "--json", str(tmp_path / "onnx.json")])
    (expected,), (got,) = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("pytorch", "onnx"))
    assert got["file"] == expected["file"] == image
    names = class_names("efl_synth_test_val")
    assert got["names"] == [names[c] for c in got["classes"]]
    assert_same(instances_of(got, (128, 128)), instances_of(expected, (128, 128)))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "image.png").write_bytes(b"not a png")
    (folder / "random.ts").write_bytes(bytes(range(256)) * 8)
    torch.save({"model": {}}, folder / "model_final.pth")
    return folder


def stops_with(tool, argv, message):
    """``tool``.main(argv) stops with one line, "<tool>.py: error: ..." holding ``message``."""
    with pytest.raises(SystemExit) as stop:
        tool.main([str(a) for a in argv])
    line = stop.value.code
    assert isinstance(line, str) and "\n" not in line and line.startswith(f"{tool.__name__}.py: error: "), line
    assert message in line, line


def test_predict_stops_with_one_line_for_a_bad_model_file_or_image(tmp_path_factory, bad_files, tmp_path):
    _, _, files = export_detector("retinanet", tmp_path_factory)
    config = ["--config-file", DEMO_CONFIG, *SMALL_OPTS]
    run = ["--input", DatasetCatalog.get("efl_synth_test_val")[0]["file_name"], "--json", tmp_path / "out.json"]
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(files["onnx"].read_bytes()[:50_000])
    stops_with(predict, [*config, "--model", bad_files / "model_final.pth", *run], "is a checkpoint, not an exported")
    stops_with(predict, [*config, "--model", truncated, *run], f"cannot load ONNX model {truncated}: ")
    stops_with(predict, [*config, "--model", bad_files / "random.ts", *run], "cannot load TorchScript model")
    for fmt in FORMATS:
        stops_with(
            predict,
            [*config, "MODEL.RETINANET.NUM_CLASSES", 18, "--model", files[fmt], *run],
            "was exported with 8 classes, but the config has 18 (MODEL.RETINANET.NUM_CLASSES)",
        )
    stops_with(
        predict,
        ["--config-file", IMPROVED_CONFIG, *SMALL_OPTS, "--model", files["onnx"], *run],
        "was exported from another detector than the config builds (architecture: EFLRetinaNet in the file",
    )
    bad_image = ["--input", bad_files / "image.png", "--json", tmp_path / "out.json"]
    stops_with(predict, [*config, "--model", files["onnx"], *bad_image], "cannot read image")
    assert not (tmp_path / "out.json").exists()


def test_export_stops_with_one_line_for_missing_or_unfitting_weights(bad_files, tmp_path):
    run = ["--format", "onnx", "--output", tmp_path]
    stops_with(export, [*with_weights("retinanet", tmp_path / "nope.pth"), *run], "MODEL.WEIGHTS file not found")
    stops_with(export, [*with_weights("fcos", bad_files / "model_final.pth"), *run], "missing")
    assert not list(tmp_path.iterdir())

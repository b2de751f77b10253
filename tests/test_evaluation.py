"""Evaluators: LVIS evaluation runs on numpy >= 1.24, ground truth scores AP 100, the right evaluator per type."""
import json

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import LVISEvaluator as D2LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from conftest import small_cfg
from efl.config import build_evaluator
from efl.evaluation import LVISEvaluator, numpy_float_alias


@pytest.fixture(autouse=True, scope="module")
def _generated():
    DatasetCatalog.get("efl_synth_test_val")  # generates the embedded set, whose annotation file evaluators read


def test_np_float_exists_only_inside_the_alias():
    assert not hasattr(np, "float"), "numpy >= 1.24 has no np.float; the test relies on that"
    with numpy_float_alias():
        assert np.float is float
    assert not hasattr(np, "float")


def ground_truth_as_detections(record):
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.ones(len(boxes))
    instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
    return {"instances": instances}


def test_lvis_evaluator_gives_ap_100_for_the_ground_truth(tmp_path):
    name = "efl_synth_test_val"
    evaluator = build_evaluator(small_cfg(), name, str(tmp_path))
    assert isinstance(evaluator, LVISEvaluator) and isinstance(evaluator, D2LVISEvaluator)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        evaluator.process([{"image_id": record["image_id"]}], [ground_truth_as_detections(record)])
    results = evaluator.evaluate()["bbox"]

    for metric in ("AP", "APr", "APc", "APf"):
        assert results[metric] == pytest.approx(100.0), metric
    assert not hasattr(np, "float")
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["bbox"] == results


def test_lvis_evaluator_scores_a_wrong_class_zero(tmp_path):
    name = "efl_synth_test_val"
    evaluator = build_evaluator(small_cfg(), name, str(tmp_path))
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        outputs = ground_truth_as_detections(record)
        outputs["instances"].pred_classes = (outputs["instances"].pred_classes + 1) % 8
        evaluator.process([{"image_id": record["image_id"]}], [outputs])
    assert evaluator.evaluate()["bbox"]["AP"] < 5.0


def test_coco_type_datasets_get_the_coco_evaluator(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    register_coco_instances("efl_test_coco_type", {}, str(tmp_path / "coco.json"), str(tmp_path))
    try:
        evaluator = build_evaluator(small_cfg(), "efl_test_coco_type", str(tmp_path))
        assert isinstance(evaluator, COCOEvaluator)
        assert evaluator._max_dets_per_image == [1, 10, 50]
    finally:
        DatasetCatalog.remove("efl_test_coco_type")
        MetadataCatalog.remove("efl_test_coco_type")


def test_datasets_of_other_types_are_refused_with_a_message():
    DatasetCatalog.register("efl_test_no_type", list)
    try:
        with pytest.raises(ValueError, match="LVIS- and COCO-type"):
            build_evaluator(small_cfg(), "efl_test_no_type")
    finally:
        DatasetCatalog.remove("efl_test_no_type")

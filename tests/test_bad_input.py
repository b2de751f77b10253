"""Bad data: empty datasets stop with a message, unreadable images are skipped by name, degenerate boxes dropped."""
import copy
import logging

import pytest
import torch

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.structures import BoxMode

from conftest import small_cfg, small_recipe
from efl import ConfigError, check
from efl.data.samplers import RepeatFactorSampler
from efl.data.train_loader import ResumableSampler, SkipUnreadableImages, build_resumable_train_loader


@pytest.fixture
def registered(request):
    """Register datasets for one test (name -> list of records), copying the test set's metadata."""
    names = []

    def register(name, records):
        DatasetCatalog.register(name, lambda: copy.deepcopy(records))
        source = MetadataCatalog.get("efl_synth_test_train")
        MetadataCatalog.get(name).set(thing_classes=source.thing_classes, evaluator_type="lvis")
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_empty_dataset_stops_with_a_message(registered):
    name = registered("efl_test_empty", [])
    with pytest.raises(ConfigError, match="has no images"):
        check(small_recipe("DATASETS.TRAIN", (name,), "DATASETS.TEST", ()))


def test_dataset_without_any_annotation_stops_with_a_message(registered):
    records = [dict(r, annotations=[]) for r in DatasetCatalog.get("efl_synth_test_train")[:5]]
    name = registered("efl_test_unannotated", records)
    with pytest.raises(ConfigError, match="FILTER_EMPTY_ANNOTATIONS"):
        check(small_recipe("DATASETS.TRAIN", (name,), "DATASETS.TEST", ()))


def test_unreadable_images_are_skipped_by_name(tmp_path, caplog):
    records = DatasetCatalog.get("efl_synth_test_train")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    mapper = SkipUnreadableImages(DatasetMapper(small_cfg(), True))
    with caplog.at_level(logging.WARNING):
        assert mapper(dict(records[0], file_name=str(tmp_path / "missing.jpg"))) is None
        assert mapper(dict(records[0], file_name=str(corrupt))) is None
    assert mapper(records[0])["instances"].gt_boxes.tensor.shape[0] == len(records[0]["annotations"])
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "missing.jpg" in messages and "corrupt.jpg" in messages


def test_many_unreadable_images_in_a_row_stop_training(tmp_path):
    record = DatasetCatalog.get("efl_synth_test_train")[0]
    mapper = SkipUnreadableImages(DatasetMapper(small_cfg(), True), max_consecutive_failures=3)
    missing = dict(record, file_name=str(tmp_path / "nowhere.jpg"))
    mapper(missing)
    mapper(missing)
    with pytest.raises(ConfigError, match="3 images in a row could not be read.*image folder"):
        mapper(missing)


def test_training_loader_skips_a_missing_image(registered, tmp_path):
    records = DatasetCatalog.get("efl_synth_test_train")[:6]
    records[2] = dict(records[2], file_name=str(tmp_path / "gone.jpg"))
    name = registered("efl_test_one_missing", records)
    recipe = small_recipe("DATASETS.TRAIN", (name,), "SOLVER.IMS_PER_BATCH", 2)
    loader, _ = build_resumable_train_loader(recipe.train_loader(), 8)
    batches = [batch for batch, _ in zip(loader, range(6))]
    files = {x["file_name"] for batch in batches for x in batch}
    assert len(batches) == 6 and str(tmp_path / "gone.jpg") not in files


def test_degenerate_boxes_are_dropped_before_the_loss():
    record = copy.deepcopy(DatasetCatalog.get("efl_synth_test_train")[0])
    good = len(record["annotations"])
    for bbox in ([20.0, 20.0, 0.0, 10.0], [30.0, 30.0, 5.0, 0.0]):
        record["annotations"].append(
            {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": [[20, 20, 20, 30, 20, 25]]}
        )
    mapped = DatasetMapper(small_cfg(), True)(record)
    instances = mapped["instances"]
    assert len(instances) == good and torch.all(instances.gt_boxes.area() > 0)


@pytest.mark.parametrize("rounding", [None, "stochastic", "ceil"])
def test_resumable_sampler_skips_exactly_what_was_consumed(rounding):
    """The stream a resumed run reads, for detectron2's TrainingSampler and both repeat-factor roundings (the
    killed-and-resumed runs of test_resume.py and test_preemption*.py end bit-identical on top of this)."""
    if rounding is None:
        _, sampler = build_resumable_train_loader(small_recipe("INPUT.RANDOM_FLIP", "none").train_loader(), 8)
    else:
        dataset = DatasetCatalog.get("efl_synth_test_train")
        factors = RepeatFactorSampler.repeat_factors_from_category_frequency(dataset, 0.3)
        sampler = ResumableSampler(RepeatFactorSampler(factors, rounding=rounding, seed=3))
    stream = iter(sampler)
    first = [next(stream) for _ in range(300)]  # more than an epoch of the 120 images, enlarged or not
    sampler.skip = 170
    resumed = iter(sampler)
    assert [next(resumed) for _ in range(130)] == first[170:]

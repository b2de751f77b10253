"""train_net.py end to end on the synthetic set, and the messages it stops with on bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import DEMO_CONFIG, REPO, SMALL_OPTS

LVIS_CONFIG = REPO / "configs" / "LVISv1" / "retinanet_R_50_FPN_24ep_efl.yaml"


def train_net(*args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def read_results(output_dir):
    with open(output_dir / "inference" / "efl_synth_test_val" / "results.json") as f:
        return json.load(f)["bbox"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few iterations of EFLRetinaNet with the project's DefaultTrainer, evaluated at the end."""
    out = tmp_path_factory.mktemp("train")
    run = train_net("--config-file", DEMO_CONFIG, *SMALL_OPTS, "SOLVER.MAX_ITER", 4, "OUTPUT_DIR", out)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_training_then_lvis_evaluation_reports_ap_by_frequency_group(trained):
    out, run = trained
    results = read_results(out)
    for metric in ("AP", "APr", "APc", "APf"):
        assert 0.0 <= results[metric] <= 100.0, (metric, results[metric])
    assert "copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf" in run.stdout + run.stderr
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert {"efl/gamma_rare", "efl/gamma_common", "efl/gamma_frequent"} <= set(metrics[0])

    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert (state["cls_loss.pos_grad"] > 0).any() and (state["cls_loss.neg_grad"] > 0).all()


def test_eval_only_on_a_saved_checkpoint_reproduces_its_results(trained, tmp_path):
    out, _ = trained
    run = train_net(
        "--config-file", DEMO_CONFIG, "--eval-only", *SMALL_OPTS,
        "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert read_results(tmp_path) == pytest.approx(read_results(out))


@pytest.mark.parametrize("cls_loss", ["focal", "efl", "eqfl"])
def test_improved_baseline_trains_and_evaluates(cls_loss, tmp_path):
    config = REPO / "configs" / "Synthetic" / f"improved_R_18_demo_{cls_loss}.yaml"
    run = train_net("--config-file", config, *SMALL_OPTS, "OUTPUT_DIR", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = read_results(tmp_path)
    assert all(0.0 <= results[m] <= 100.0 for m in ("AP", "APr", "APc", "APf"))
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert {"loss_cls", "loss_box_reg", "loss_iou"} <= set().union(*metrics)


def assert_stops_with(run, *fragments):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in run.stderr, run.stderr[-3000:]


def test_missing_lvis_data_says_where_to_put_it(tmp_path):
    run = train_net("--config-file", LVIS_CONFIG, "MODEL.DEVICE", "cpu", env={"DETECTRON2_DATASETS": str(tmp_path)})
    assert_stops_with(
        run,
        f"{tmp_path}/lvis/lvis_v1_train.json",
        "lvis/lvis_v1_{train,val}.json",
        "coco/{train2017,val2017}",
    )


def test_missing_lvis_images_are_reported_when_the_annotations_are_there(tmp_path):
    (tmp_path / "lvis").mkdir()
    for split in ("train", "val"):
        (tmp_path / "lvis" / f"lvis_v1_{split}.json").write_text("{}")
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    run = train_net("--config-file", LVIS_CONFIG, "MODEL.DEVICE", "cpu", env={"DETECTRON2_DATASETS": str(tmp_path)})
    assert_stops_with(run, f"{tmp_path}/coco/val2017")
    assert "lvis_v1_train.json" not in run.stderr.split("missing")[1].split(".")[0]


def test_num_classes_mismatch_names_the_right_value():
    run = train_net("--config-file", DEMO_CONFIG, *SMALL_OPTS, "MODEL.RETINANET.NUM_CLASSES", 1203)
    assert_stops_with(run, "NUM_CLASSES is 1203", "has 8 categories", "MODEL.RETINANET.NUM_CLASSES 8")


@pytest.mark.parametrize(
    "key,value,fragment",
    [("MODEL.EFL.GAMMA_B", 0.0, "MODEL.EFL.GAMMA_B"), ("MODEL.EFL.ALPHA", 2.0, "MODEL.EFL.ALPHA")],
)
def test_out_of_range_hyperparameters_stop_with_the_key(key, value, fragment):
    assert_stops_with(train_net("--config-file", DEMO_CONFIG, *SMALL_OPTS, key, value), fragment)


def test_eval_only_needs_existing_weights(tmp_path):
    run = train_net("--config-file", DEMO_CONFIG, "--eval-only", *SMALL_OPTS, "MODEL.WEIGHTS", tmp_path / "nope.pth")
    assert_stops_with(run, "MODEL.WEIGHTS file not found")


def test_unregistered_dataset_is_named():
    run = train_net("--config-file", DEMO_CONFIG, *SMALL_OPTS, "DATASETS.TRAIN", "('lvis_v2_train',)")
    assert_stops_with(run, "Dataset 'lvis_v2_train' is not registered")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_gpu_suggests_the_cpu():
    run = train_net("--config-file", DEMO_CONFIG, *SMALL_OPTS, "MODEL.DEVICE", "cuda")
    assert_stops_with(run, "MODEL.DEVICE cpu")

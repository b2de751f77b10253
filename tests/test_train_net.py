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
    """train_net.py stopped with one line, ``train_net.py: error: ...`` holding every fragment, and no traceback."""
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("train_net.py: error: ")]
    assert len(errors) == 1, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], run.stderr[-3000:]


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


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["MODEL.EFL.SCAEL", "4"], "unknown config key MODEL.EFL.SCAEL (did you mean MODEL.EFL.SCALE"),
        (["MODEL.IMPROVED_BASELINE.CLS_LOSS", "efl"], "MODEL.IMPROVED_BASELINE.CLS_LOSS was renamed to MODEL.EFL.LOSS"),
        (["MODEL.EFL.SCALE", "four"], "MODEL.EFL.SCALE takes a float such as 8.0, got 'four'"),
        # an int for a float key is accepted: the run goes on to the next mistake
        (["MODEL.EFL.SCALE", "4", "SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER must be at least 1 to train, got 0"),
        (["--num-gpus", "3"], "SOLVER.IMS_PER_BATCH 4 cannot be split evenly over 3 processes"),
    ],
)
def test_config_mistakes_stop_in_one_line_before_any_process_starts(args, fragment, tmp_path):
    flags, opts = (args, []) if args[0].startswith("--") else ([], args)
    run = train_net("--config-file", DEMO_CONFIG, *flags, *SMALL_OPTS, *opts, "OUTPUT_DIR", tmp_path / "out")
    assert_stops_with(run, fragment)
    assert "Command Line Args" not in run.stdout and not (tmp_path / "out").exists()


def test_missing_config_file_stops_in_one_line():
    assert_stops_with(train_net("--config-file", "configs/nope.yaml", *SMALL_OPTS), "config file not found: configs/nope.yaml")


def test_corrupt_weights_stop_in_one_line_without_torch_advice(tmp_path):
    weights = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, weights)
    weights.write_bytes(weights.read_bytes()[:300])
    run = train_net("--config-file", DEMO_CONFIG, "--eval-only", *SMALL_OPTS, "MODEL.WEIGHTS", weights)
    assert_stops_with(run, f"cannot read {weights}", "truncated")
    assert "weights_only" not in run.stderr


def test_ints_are_accepted_for_float_keys_in_files_and_on_the_command_line(tmp_path):
    from efl.config import load_config

    (tmp_path / "s4.yaml").write_text(f"_BASE_: {DEMO_CONFIG}\nMODEL:\n  EFL:\n    SCALE: 4\n")
    assert load_config(str(tmp_path / "s4.yaml")).MODEL.EFL.SCALE == 4.0
    cfg = load_config(str(DEMO_CONFIG), ["MODEL.EFL.SCALE", "4", "MODEL.EFL.GAMMA_B", "1"])
    assert (cfg.MODEL.EFL.SCALE, cfg.MODEL.EFL.GAMMA_B) == (4.0, 1.0) and type(cfg.MODEL.EFL.SCALE) is float


def test_malformed_builtin_lvis_json_is_named_from_inside_the_run(tmp_path):
    """detectron2's own LVIS file is read only by the training process; its JSON error still names the file."""
    (tmp_path / "lvis").mkdir()
    (tmp_path / "lvis" / "lvis_v1_train.json").write_text('{"images": [')
    for folder in ("train2017", "val2017"):
        (tmp_path / "coco" / folder).mkdir(parents=True)
    run = train_net(
        "--config-file", DEMO_CONFIG, *SMALL_OPTS, "MODEL.RETINANET.NUM_CLASSES", "1203",
        "DATASETS.TRAIN", "('lvis_v1_train',)", "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path / "out",
        env={"DETECTRON2_DATASETS": str(tmp_path)},
    )  # fmt: skip
    assert_stops_with(run, f"dataset file {tmp_path}/lvis/lvis_v1_train.json ('lvis_v1_train') is not valid JSON")

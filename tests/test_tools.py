"""The tools: make_tables.py and plot_efl_stats.py on fixture runs, predict.py on an image, experiment.py (and the
demo's figures) on 2-iteration runs."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import demo
import experiment
import make_tables
import plot_efl_stats
import predict
from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, small_cfg


def fake_run(root, name, ap, apr, apc, apf, dataset="lvis_v1_val"):
    run = root / name
    (run / "inference" / dataset).mkdir(parents=True)
    results = {"bbox": {"AP": ap, "AP50": 0.0, "APr": apr, "APc": apc, "APf": apf}}
    (run / "inference" / dataset / "results.json").write_text(json.dumps(results))
    return run


def test_table_puts_the_authors_numbers_and_our_differences_side_by_side(tmp_path):
    ours = fake_run(tmp_path, "improved_baseline_R_50_24ep_efl", 26.0, 21.0, 25.0, 32.4)
    other = fake_run(tmp_path, "improved_baseline_R_50_24ep_efl_s4", 25.25, 18.0, 24.0, 31.0)
    table = make_tables.render([ours, other]).splitlines()
    assert table[0].startswith("| run | AP | APr | APc | APf | authors' AP |")
    assert table[2] == (
        "| improved_baseline_R_50_24ep_efl | 26.0 | 21.0 | 25.0 | 32.4 | 27.5 | 20.2 | 26.1 | 32.4 "
        "| -1.5 | +0.8 | -1.1 | +0.0 |"
    )
    assert table[3] == "| improved_baseline_R_50_24ep_efl_s4 | 25.2 | 18.0 | 24.0 | 31.0 | - | - | - | - | - | - | - | - |"


def test_a_run_without_results_is_named(tmp_path):
    (tmp_path / "not_evaluated").mkdir()
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tables.py"), str(tmp_path / "not_evaluated")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode != 0 and "not_evaluated" in run.stderr and "Traceback" not in run.stderr


def test_a_run_evaluated_on_several_datasets_needs_dataset(tmp_path):
    run = fake_run(tmp_path, "r", 1, 2, 3, 4)
    fake_run(tmp_path, "r2", 1, 2, 3, 4)
    (run / "inference" / "other").mkdir()
    (run / "inference" / "other" / "results.json").write_text((run / "inference" / "lvis_v1_val" / "results.json").read_text())
    with pytest.raises(FileNotFoundError, match="--dataset"):
        make_tables.render([run])
    assert "| r | 1.0 | 2.0 |" in make_tables.render([run], dataset="lvis_v1_val")


def fake_checkpoint(run_dir, pos_neg, scale):
    run_dir.mkdir()
    torch.save({"model": {"cls_loss.pos_neg": pos_neg, "cls_loss.pos_grad": torch.ones(8)}}, run_dir / "model_final.pth")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"MODEL": {"EFL": {"GAMMA_B": 2.0, "SCALE": scale}}}))
    return run_dir / "model_final.pth"


def test_plot_of_focal_g_beside_efl_gamma(tmp_path, capsys):
    # efl_synth_test_train's classes have 104, 25, 4, 102, 8, 40, 12, 2 training images.
    focal = fake_checkpoint(tmp_path / "focal", torch.tensor([1.0, 0.7, 0.3, 0.9, 0.4, 0.8, 0.6, 0.2]), 0.0)
    efl = fake_checkpoint(tmp_path / "efl", torch.linspace(0.1, 1.0, 8), 8.0)
    with open(focal.parent / "metrics.json", "w") as f:
        for iteration in (19, 39):
            f.write(json.dumps({"iteration": iteration, "efl/g_rare": 0.5, "efl/g_frequent": 0.9}) + "\n")
    output = tmp_path / "stats.png"
    summary = plot_efl_stats.main(
        [str(focal), "--gamma-of", str(efl), "--dataset", "efl_synth_test_train", "--output", str(output)]
    )
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000
    assert summary["g_rare"] == pytest.approx(0.3) and summary["g_frequent"] == pytest.approx(0.95)
    assert summary["g_common"] == pytest.approx(0.7)
    assert summary["spearman"] == pytest.approx(1.0)  # g_j ranks the classes exactly as their image counts
    assert "rare 0.300, common 0.700, frequent 0.950; Spearman(g_j, training images) 1.00" in capsys.readouterr().out


def test_spearman_averages_tied_ranks():
    assert plot_efl_stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert plot_efl_stats.spearman([4, 3, 2, 1], [1, 10, 100, 1000]) == pytest.approx(-1.0)
    # ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3): Pearson of the ranks
    assert plot_efl_stats.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])
    assert math.isnan(plot_efl_stats.spearman([1, 1, 1], [1, 2, 3]))


def test_plot_refuses_a_checkpoint_without_efl_statistics(tmp_path):
    torch.save({"model": {"head.cls_score.bias": torch.zeros(8)}}, tmp_path / "focal.pth")
    with pytest.raises(SystemExit, match="no EFL statistics.*SCALE 0.0"):
        plot_efl_stats.main([str(tmp_path / "focal.pth"), "--dataset", "efl_synth_test_train", "--gamma-b", "2", "--scale", "8"])


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory):
    """The test-size demo model, as initialised (predict.py needs weights, not good ones)."""
    from detectron2.modeling import build_model

    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(small_cfg()).state_dict()}, path)
    return path


def predict_args(weights, *args):
    return ["--config-file", str(DEMO_CONFIG), *SMALL_OPTS, "MODEL.WEIGHTS", str(weights), *args]


def test_predict_draws_an_image_and_a_folder(untrained_weights, tmp_path):
    from detectron2.data import DatasetCatalog

    images = [r["file_name"] for r in DatasetCatalog.get("efl_synth_test_val")[:2]]
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.open(images[1]).save(folder / "second.png")
    (folder / "notes.txt").write_text("not an image")  # skipped: not an image suffix
    out = tmp_path / "out"
    predict.main(predict_args(untrained_weights, "--input", images[0], str(folder), "--output", str(out), "--confidence", "0"))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{images[0].rsplit('/', 1)[1][:-4]}.png", "second.png"])
    drawing = np.asarray(Image.open(out / "second.png"))
    assert drawing.shape == (480, 480, 3)  # the 128 px image, enlarged for legible labels
    # With every detection drawn (confidence 0), the drawing differs from the image.
    enlarged = np.asarray(Image.open(images[1]).resize((480, 480), Image.NEAREST)).astype(int)
    assert np.abs(drawing.astype(int) - enlarged).max() > 100


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d / "missing.jpg", "input not found: .*missing.jpg"),
        (lambda d: (d / "broken.jpg").write_text("not a jpeg") and d / "broken.jpg", "cannot read image .*broken.jpg"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no image files .* in folder .*empty"),
    ],
)
def test_predict_stops_with_one_line_for_a_bad_input(untrained_weights, tmp_path, make_input, message):
    path = make_input(tmp_path)
    with pytest.raises(SystemExit, match=f"^predict.py: error: {message}"):
        predict.main(predict_args(untrained_weights, "--input", str(path), "--output", str(tmp_path / "out")))


def test_predict_names_missing_weights(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    args = predict_args(tmp_path / "nope.pth", "--input", str(tmp_path / "image.png"), "--output", str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS file not found: .*nope.pth"):
        predict.main(args)


def test_predict_refuses_weights_that_do_not_fit_the_model(untrained_weights, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    args = predict_args(untrained_weights, "MODEL.RETINANET.NUM_CONVS", "2", "--input", str(tmp_path / "image.png"))
    with pytest.raises(SystemExit, match="^predict.py: error: .*missing"):
        predict.main([*args, "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_predict_reports_a_missing_input_in_one_line_with_a_failing_status(untrained_weights, tmp_path):
    with pytest.raises(SystemExit) as stop:
        predict.main(predict_args(untrained_weights, "--input", "nope.jpg", "--output", str(tmp_path)))
    assert stop.value.code == "predict.py: error: input not found: nope.jpg"  # printed to stderr, exit status 1


@pytest.fixture(scope="module")
def experiment_runs(tmp_path_factory):
    """tools/experiment.py on the test set: one seed of focal loss and EFL, 2 iterations each."""
    out = tmp_path_factory.mktemp("experiment")
    opts = [*SMALL_OPTS, "SOLVER.MAX_ITER", "2"]
    return out, experiment.main(["--seeds", "7", "--device", "cpu", "--output-dir", str(out), *opts])


def test_experiment_trains_each_loss_with_the_seed_and_tabulates_them(experiment_runs):
    out, results = experiment_runs
    assert list(results) == [7] and list(results[7]) == ["focal loss", "EFL"]
    for arm, config in demo.RUNS["retinanet"].items():
        with open(out / "seed7" / config.stem / "config.yaml") as f:
            cfg = yaml.safe_load(f)
        assert cfg["SEED"] == 7 and cfg["MODEL"]["EFL"]["SCALE"] == (0.0 if arm == "focal loss" else 8.0)
        assert 0.0 <= results[7][arm]["g_rare"] <= 1.0 and 0.0 <= results[7][arm]["APr"] <= 100.0
        # gamma_j = gamma_b + s (1 - g_j): 2 for focal loss, at least 2 for EFL
        gamma = 2.0 + (0.0 if arm == "focal loss" else 8.0) * (1.0 - results[7][arm]["g_rare"])
        assert results[7][arm]["gamma_rare"] == pytest.approx(gamma)
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    assert lines[0] == (
        "| seed | loss | AP | APr | APc | APf | g rare | g common | g frequent | γ rare | γ common | γ frequent "
        "| Spearman |"
    )
    assert len(lines) == 2 + 2 + 3 and lines[2].startswith("| 7 | focal loss | ")


def test_experiment_of_the_improved_baseline_has_a_difference_row_for_each_loss(monkeypatch, tmp_path):
    trained = []

    def fake_training(config, run_dir, device, overrides):
        trained.append((config.stem, overrides[-1]))
        return {"AP": 1.0, "APr": 2.0, "APc": 3.0, "APf": 4.0}

    monkeypatch.setattr(experiment, "train_and_evaluate", fake_training)
    monkeypatch.setattr(experiment, "mechanism", lambda run_dir: dict.fromkeys(experiment.STATISTICS, 0.5))
    monkeypatch.setattr(experiment, "datasets_of", lambda run_dir: ("efl_synth_lt_train", "efl_synth_lt_val"))
    args = ["--detector", "improved", "--arms", "EQFL", "--seeds", "1", "2", "--output-dir", str(tmp_path), "X", "1"]
    results = experiment.main(args)
    assert trained == [(f"improved_R_18_demo_{loss}", seed) for seed in "12" for loss in ("focal", "eqfl")]
    assert list(results[1]) == ["focal loss", "EQFL"]
    text = (tmp_path / "results.md").read_text()
    assert "| mean ± std | EQFL - focal loss | +0.0 ± 0.0 |" in text and "Overrides: X 1." in text
    with pytest.raises(SystemExit):
        experiment.main(["--detector", "retinanet", "--arms", "EQFL"])


def test_experiment_table_gives_mean_and_std_over_seeds_and_of_the_paired_difference():
    def run(ap, apr, g_rare):
        return {"AP": ap, "APr": apr, "APc": 30.0, "APf": 40.0, "g_rare": g_rare, "g_common": 0.8, "g_frequent": 1.0,
                "gamma_rare": 2.0, "gamma_common": 2.0, "gamma_frequent": 2.0, "spearman": math.nan}  # fmt: skip

    results = {
        1: {"focal loss": run(20.0, 10.0, 0.4), "EFL": run(21.0, 13.0, 0.9), "EQFL": run(20.0, 11.0, 0.9)},
        2: {"focal loss": run(22.0, 12.0, 0.6), "EFL": run(22.0, 13.0, 0.9), "EQFL": run(24.0, 12.0, 0.9)},
    }
    lines = experiment.render(results).splitlines()
    assert lines[2] == "| 1 | focal loss | 20.0 | 10.0 | 30.0 | 40.0 | 0.40 | 0.80 | 1.00 | 2.00 | 2.00 | 2.00 | - |"
    assert lines[8] == (
        "| mean ± std | focal loss | 21.0 ± 1.4 | 11.0 ± 1.4 | 30.0 ± 0.0 | 40.0 ± 0.0 | 0.50 | 0.80 | 1.00 | 2.00 "
        "| 2.00 | 2.00 | - |"
    )
    # EFL - focal loss per seed: AP +1 and 0, APr +3 and +1; EQFL: AP 0 and +2, APr +1 and 0
    assert lines[11] == "| mean ± std | EFL - focal loss | +0.5 ± 0.7 | +2.0 ± 1.4 | +0.0 ± 0.0 | +0.0 ± 0.0 |" + "  |" * 7
    assert lines[12] == "| mean ± std | EQFL - focal loss | +1.0 ± 1.4 | +0.5 ± 0.7 | +0.0 ± 0.0 | +0.0 ± 0.0 |" + "  |" * 7


def test_demo_figures_of_two_runs(experiment_runs, tmp_path):
    out, results = experiment_runs
    runs = {arm: out / "seed7" / config.stem for arm, config in demo.RUNS["retinanet"].items()}
    demo.plot_ap_by_group(results[7], "efl_synth_test_val", tmp_path / "ap.png")
    demo.plot_rare_detections(runs, "cpu", tmp_path / "rare.png", num_images=2)
    for name in ("ap.png", "rare.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ground truth, focal loss, EFL: 3 rows of 2 images
    width, height = Image.open(tmp_path / "rare.png").size
    assert height > width

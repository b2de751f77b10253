"""tools/make_tables.py and tools/plot_efl_stats.py on fixture runs."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tables = load_tool("make_tables")
plot_efl_stats = load_tool("plot_efl_stats")


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


def test_plot_of_a_checkpoints_statistics(tmp_path):
    pos_neg = torch.linspace(0.1, 1.0, 8)
    torch.save({"model": {"cls_loss.pos_neg": pos_neg, "cls_loss.pos_grad": torch.ones(8)}}, tmp_path / "model_final.pth")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"MODEL": {"EFL": {"GAMMA_B": 2.0, "SCALE": 8.0}}}))
    output = tmp_path / "stats.png"
    plot_efl_stats.main([str(tmp_path / "model_final.pth"), "--dataset", "efl_synth_test_train", "--output", str(output)])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000


def test_plot_refuses_a_checkpoint_without_efl_statistics(tmp_path):
    torch.save({"model": {"head.cls_score.bias": torch.zeros(8)}}, tmp_path / "focal.pth")
    with pytest.raises(SystemExit, match="no EFL statistics"):
        plot_efl_stats.main([str(tmp_path / "focal.pth"), "--dataset", "efl_synth_test_train", "--gamma-b", "2", "--scale", "8"])

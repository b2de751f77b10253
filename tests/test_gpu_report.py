"""benchmarks/gpu_report.py, the one command for every GPU check, tested on the CPU: --dry-run runs every part
(each in a process of its own, as on a GPU; the report's own main runs in the test's process)."""
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_report  # noqa: E402

SECTIONS = [
    "## Environment",
    "## Summary",
    "## CUDA tests",
    "## Loss: forward + backward + statistics",
    "## One training iteration",
    "## Triton tile shapes",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_a_gpu_it_says_so_and_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_report.py", "--output", str(tmp_path / "r.md")])
    assert gpu_report.main() == 2
    stderr = capsys.readouterr().err
    assert "no CUDA GPU" in stderr and "--dry-run" in stderr
    assert not (tmp_path / "r.md").exists()


def test_dry_run_writes_every_part_to_the_file_and_to_stdout(tmp_path, monkeypatch, capsys):
    output = tmp_path / "report" / "gpu_report.md"
    monkeypatch.setattr(sys, "argv", ["gpu_report.py", "--dry-run", "--output", str(output)])
    status = gpu_report.main()
    stdout = capsys.readouterr().out
    assert status == 0, stdout[-6000:]
    text = output.read_text()
    assert stdout.strip() == text.strip()
    assert [line for line in text.splitlines() if line.startswith("## ")] == SECTIONS
    assert "dry run" in text and "torch " in text and "FAILED" not in text and "TIMED OUT" not in text
    assert "1 passed" in text  # the tests
    assert "| 500 | EFL (ours)" in text and "| 500 | floor" in text  # the loss table
    assert text.count("| configuration") == 2 and "autotune picked: BLOCK_C" in text  # the sweep
    for model in ("EFLRetinaNet", "improved baseline (ImprovedRetinaNet, EFL)"):  # the training step, no sync of ours
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {model} ")]
        assert [cell.strip() for cell in row.split("|")[4:7]] == ["0", "11" if model == "EFLRetinaNet" else "2", "0"]


def test_a_failing_or_slow_part_is_reported_and_the_others_still_run(monkeypatch):
    monkeypatch.setattr(gpu_report, "BUDGET_S", 6)
    monkeypatch.setattr(gpu_report, "MIN_PART_S", 1)
    parts = [
        gpu_report.Part("Fails", 30, ["-c", "import sys; print('half a table'); sys.exit(3)"]),
        gpu_report.Part("Works", 30, ["-c", "print('| a | b |')"]),
        gpu_report.Part("Hangs", 30, ["-c", "import time; print('started', flush=True); time.sleep(60)"]),
        gpu_report.Part("Late", 30, ["-c", "print('never')"]),
    ]
    monkeypatch.setattr(gpu_report, "parts", lambda dry_run: parts)
    text, ok = gpu_report.report(dry_run=False)
    assert not ok
    summary, fails, works, hangs, late = text.split("\n## ")[2:]
    assert summary.count("\n- ") == 4 and "Works: passed" in summary and "Late: **SKIPPED**" in summary
    assert "**FAILED** (exit 3)" in fails and "half a table" in fails
    assert "passed" in works and "| a | b |" in works
    assert "**TIMED OUT**" in hangs and "started" in hangs
    assert "**SKIPPED**" in late and "never" not in late

#!/usr/bin/env python
"""
Every GPU check of this project in one command, within 8 minutes, written as one Markdown report to a file and
to stdout:

1. the CUDA tests: the kernels against the float64 formula (loss, gradient, statistics; fp32, fp16, bf16; every
   Triton tile shape; autotuning), the fallback of "auto", AMP, attribution with 2, 3 and 9 anchors per location,
   and the syncs of a training step;
2. benchmarks/bench_loss.py at R = 90,000 and 400,000;
3. benchmarks/bench_train_step.py at 2 x 1024 x 1024: RetinaNet, EFLRetinaNet, the improved baseline;
4. benchmarks/sweep_triton_blocks.py (every Triton tile shape, and autotuning's picks).

Each part runs in its own process under its own time limit (the most important first); one that fails or runs
out of time is reported with the end of its output, and the next one still runs. The exit status is 0 only when every part passed.

    make bench-gpu                                    # python benchmarks/gpu_report.py --output output/gpu_report.md
    python benchmarks/gpu_report.py --dry-run        # the same parts on the CPU at tiny sizes (no GPU figures)
"""
import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 480  # 8 minutes for all parts on a GPU
DRY_RUN_BUDGET_S = 1200  # a busy 2-core CPU
MIN_PART_S = 10  # a part is not started with less time left


class Part(NamedTuple):
    title: str
    budget_s: int
    argv: List[str]  # arguments of the Python interpreter
    env: Dict[str, str] = {}


CUDA_TESTS = [
    "tests/test_kernels.py",
    "tests/test_kernel_fallback.py",
    "tests/test_mixed_precision.py::test_cuda_amp_training_statistics_match_fp32",
    "tests/test_retinanet.py::test_statistics_credit_each_gradient_to_its_own_cell",
    "tests/test_host_syncs.py::test_cuda_training_step_syncs_only_in_detectron2",
]
PYTEST = ["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
# On the CPU: the smallest version of every part, to test this script.
TINY_MODEL = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RETINANET.NUM_CONVS", "1", "MODEL.RETINANET.NUM_CLASSES", "8",
]  # fmt: skip


def parts(dry_run: bool) -> List[Part]:
    if not dry_run:
        return [
            Part("CUDA tests", 180, PYTEST + CUDA_TESTS),
            Part("Loss: forward + backward + statistics", 90,
                 ["benchmarks/bench_loss.py", "--device", "cuda", "--rows", "90000", "400000"]),
            Part("One training iteration", 130,
                 ["benchmarks/bench_train_step.py", "--device", "cuda", "--size", "1024", "--repeat", "10"]),
            Part("Triton tile shapes", 80, ["benchmarks/sweep_triton_blocks.py", "--repeat", "10"]),
        ]  # fmt: skip
    return [
        Part("CUDA tests", 300, PYTEST + ["tests/test_kernels.py::test_plain_rows_match_the_float64_oracle"]),
        Part("Loss: forward + backward + statistics", 300,
             ["benchmarks/bench_loss.py", "--device", "cpu", "--rows", "500", "--repeat", "1", "--same-process"]),
        Part("One training iteration", 300,
             ["benchmarks/bench_train_step.py", "--device", "cpu", "--size", "64", "--repeat", "1", "--same-process",
              "--models", "EFLRetinaNet", "improved baseline (ImprovedRetinaNet, EFL)", "--opts", *TINY_MODEL]),
        Part("Triton tile shapes", 300,
             ["benchmarks/sweep_triton_blocks.py", "--device", "cpu", "--size", "16", "--anchors", "1", "--rows", "16",
              "--classes", "3", "--configs", "2", "--repeat", "1"], {"TRITON_INTERPRET": "1"}),
    ]  # fmt: skip


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as e:  # noqa: BLE001 - a missing package is part of what the report says
        return f"not importable ({type(e).__name__}: {e})"


def environment(dry_run: bool) -> str:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit = commit.stdout.strip()
    except OSError:  # no git on the machine
        commit = ""
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- commit: {commit or 'unknown (no git repository here)'}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {_version('triton')}, "
        f"detectron2 {_version('detectron2')}",
    ]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(
            f"- device: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
            f"{p.multi_processor_count} SMs"
        )
    if dry_run:
        lines.append("- **dry run on the CPU at tiny sizes: it tests this script; none of its figures is a GPU's**")
    return "\n".join(lines)


def run_part(part: Part, timeout: float) -> Tuple[bool, str, str]:
    """Whether the part passed, its verdict, and its section: its output, or the end of what it printed."""
    env = dict(os.environ, **part.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "projects" / "EFL"), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    try:
        child = subprocess.run(
            [sys.executable, *part.argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        status: Optional[int] = child.returncode
        out, err = child.stdout, child.stderr
    except subprocess.TimeoutExpired as e:
        status = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - start
    if status == 0:
        verdict = f"passed in {seconds:.0f} s"
    elif status is None:
        verdict = f"**TIMED OUT** after {timeout:.0f} s"
    else:
        verdict = f"**FAILED** (exit {status}) after {seconds:.0f} s"
    head = f"## {part.title}\n\n{verdict}: `python {' '.join(part.argv)}`\n\n"
    if status == 0 and part.argv[:2] != ["-m", "pytest"]:
        return True, verdict, head + out.strip()
    tail = (out.strip()[-6000:] + ("\n" + err.strip()[-3000:] if status != 0 and err.strip() else "")).strip()
    return status == 0, verdict, head + f"```text\n{tail}\n```"


def report(dry_run: bool) -> Tuple[str, bool]:
    """The report's text, and whether every part passed."""
    mode = "dry run (CPU)" if dry_run else "GPU"
    sections = [f"# EFL GPU report: {mode}", "## Environment\n\n" + environment(dry_run)]
    budget_s = DRY_RUN_BUDGET_S if dry_run else BUDGET_S
    deadline = time.monotonic() + budget_s
    summary = []
    for part in parts(dry_run):
        left = deadline - time.monotonic()
        if left < MIN_PART_S:
            passed, verdict = False, f"**SKIPPED**: the {budget_s} s budget is spent"
            section = f"## {part.title}\n\n{verdict}"
        else:
            passed, verdict, section = run_part(part, min(part.budget_s, left))
        summary.append((part.title, verdict, passed))
        sections.append(section)
    sections.insert(2, "## Summary\n\n" + "\n".join(f"- {title}: {verdict}" for title, verdict, _ in summary))
    return "\n\n".join(s.strip() for s in sections) + "\n", all(passed for _, _, passed in summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/gpu_report.md", help="where to write the report (also printed)")
    parser.add_argument("--dry-run", action="store_true", help="run every part on the CPU at tiny sizes")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_report: no CUDA GPU here (torch.cuda.is_available() is False), so there is nothing to measure. "
            "Run it on a machine with a GPU (docs/speed.md), or add --dry-run to test the script "
            "on the CPU at tiny sizes.",
            file=sys.stderr,
        )
        return 2
    text, ok = report(args.dry_run)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    print(f"report written to {output}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

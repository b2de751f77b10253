#!/usr/bin/env python
"""
Render the evaluation results of training runs as a Markdown table in the paper's layout (AP, APr, APc, APf),
with the authors' reported numbers and our differences from them side by side.

    python tools/make_tables.py output/lvis_v1/improved_baseline_R_50_24ep_* [--dataset lvis_v1_val]

Each run directory is an OUTPUT_DIR of train_net.py; its results are read from
``inference/<dataset>/results.json``. A run is matched to the authors' numbers by its directory name, which is
its config's name (every config here sets OUTPUT_DIR to output/<set>/<config name>).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

METRICS = ("AP", "APr", "APc", "APf")

# Reported by the authors (LVIS v1 val, box AP), for the configs meant to reproduce them.
REPORTED: Dict[str, Dict[str, float]] = {
    "improved_baseline_R_50_24ep_efl": {"AP": 27.5, "APr": 20.2, "APc": 26.1, "APf": 32.4},
    "improved_baseline_R_101_24ep_efl": {"AP": 29.2, "APr": 23.5, "APc": 27.4, "APf": 33.8},
}


def read_results(run: Path, dataset: Optional[str]) -> Dict[str, float]:
    """The box metrics of one run directory."""
    inference = run / "inference"
    candidates = sorted(inference.glob("*/results.json")) if dataset is None else [inference / dataset / "results.json"]
    if len(candidates) != 1 or not candidates[0].is_file():
        found = ", ".join(str(p.parent.name) for p in sorted(inference.glob("*/results.json"))) or "none"
        raise FileNotFoundError(
            f"{run}: expected one evaluation result at inference/<dataset>/results.json "
            f"(datasets found: {found}); evaluate it with train_net.py --eval-only, or pass --dataset"
        )
    with open(candidates[0]) as f:
        return json.load(f)["bbox"]


def _cell(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def render(runs: Sequence[Path], dataset: Optional[str] = None) -> str:
    header = ["run", *METRICS, *(f"authors' {m}" for m in METRICS), *(f"Δ{m}" for m in METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        ours = read_results(run, dataset)
        reported = REPORTED.get(run.name)
        cells: List[str] = [run.name]
        cells += [_cell(ours[m]) for m in METRICS]
        cells += [_cell(reported[m] if reported else None) for m in METRICS]
        cells += [_cell(ours[m] - reported[m] if reported else None, signed=True) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Authors' numbers: as reported by the authors (LVIS v1 val, box AP); Δ = ours - authors'.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="OUTPUT_DIRs of evaluated runs")
    parser.add_argument("--dataset", help="evaluation dataset, when a run was evaluated on several")
    args = parser.parse_args(argv)
    try:
        print(render(args.runs, args.dataset))
    except FileNotFoundError as e:
        sys.exit(f"make_tables.py: error: {e}")


if __name__ == "__main__":
    main()

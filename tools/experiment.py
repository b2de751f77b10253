#!/usr/bin/env python
"""
The demo's comparison over seeds: train focal loss (EFL with s = 0) and the equalized losses with the demo's
configs once per seed (the same schedule and data; only SEED differs), evaluate every run, and print and write a
Markdown table: a row per seed and loss, the mean +- standard deviation over seeds of AP, APr, APc and APf, the
per-seed difference of each loss from focal loss with its mean +- standard deviation, and each run's statistics at
the end of training (mean g_j and gamma_j by frequency group, Spearman correlation of g_j with the class's training
images).

    python tools/experiment.py                                  # RetinaNet: focal loss and EFL, seeds 42, 43, 44
    python tools/experiment.py --detector improved              # the improved baseline: focal loss, EFL and EQFL
    python tools/experiment.py --seeds 1 2 3 4 5 --device cpu SOLVER.MAX_ITER 400
    # the trained runs of an experiment evaluated again, here with test scores sigmoid(cls) alone
    python tools/experiment.py --detector improved --reevaluate output/experiment-improved \
        --output-dir output/experiment-improved-cls-only MODEL.IMPROVED_BASELINE.IOU_BRANCH False

Each run is ``train_net.py --resume`` in its own process (see tools/demo.py), with a checkpoint every 200 iterations:
the same command started again after an interruption continues every run from its last checkpoint, exactly (the
reliability guarantees in docs/guarantees.md). Extra arguments are config overrides applied to every run. With
--reevaluate, each run evaluates the final weights of the same seed and loss in that folder (an earlier experiment's
--output-dir), and the statistics columns are those weights'.
"""
import argparse
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from demo import METRICS, REPO, RUNS, datasets_of, describe_device, mechanism, resolve_device, train_and_evaluate

BASELINE = "focal loss"
STATISTICS = ("g_rare", "g_common", "g_frequent", "gamma_rare", "gamma_common", "gamma_frequent", "spearman")
STATISTIC_HEADERS = ("g rare", "g common", "g frequent", "γ rare", "γ common", "γ frequent", "Spearman")
DEFAULT_SEEDS = (42, 43, 44)
# Runs resume (train_net.py --resume) from their last checkpoint, so that an experiment stopped for any reason
# continues where it stopped when started again: a finished run is only evaluated again.
CHECKPOINT_PERIOD = 200

# results[seed][arm]: the run's box metrics and its STATISTICS
Results = Dict[int, Dict[str, Dict[str, float]]]


def run_experiment(
    arms: Dict[str, Path],
    seeds: Sequence[int],
    output_dir: Path,
    device: str,
    overrides: Sequence[str],
    trained_in: Optional[Path] = None,
) -> Results:
    """
    Train and evaluate every arm (name -> config) for every seed, into output_dir/seed<seed>/<config name>; with
    ``trained_in``, evaluate the final weights of the same run there instead of training.
    """
    results: Results = {}
    for seed in seeds:
        for arm, config in arms.items():
            run_dir = output_dir / f"seed{seed}" / config.stem
            trained = run_dir if trained_in is None else trained_in / f"seed{seed}" / config.stem
            if trained_in is None:
                flags, settings = ["--resume"], ["SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), *overrides]
            else:
                flags, settings = ["--eval-only"], [*overrides, "MODEL.WEIGHTS", str(trained / "model_final.pth")]
            metrics = train_and_evaluate(config, run_dir, device, [*settings, "SEED", str(seed)], flags)
            results.setdefault(seed, {})[arm] = {**metrics, **mechanism(trained)}
    return results


def _mean_std(values: List[float], signed: bool = False) -> str:
    """"mean ± std" over seeds (sample standard deviation; none for a single seed)."""
    mean = float(np.mean(values))
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{text} ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else text


def _statistic(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def render(results: Results) -> str:
    """The Markdown table of an experiment's results; the first arm of each seed is the baseline."""
    header = ["seed", "loss", *METRICS, *STATISTIC_HEADERS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    arms = list(next(iter(results.values())))
    for seed, runs in results.items():
        for arm, r in runs.items():
            cells = [str(seed), arm, *(f"{r[m]:.1f}" for m in METRICS), *(_statistic(r[s]) for s in STATISTICS)]
            lines.append("| " + " | ".join(cells) + " |")
    for arm in arms:
        runs = [by_arm[arm] for by_arm in results.values()]
        cells = ["mean ± std", arm, *(_mean_std([r[m] for r in runs]) for m in METRICS)]
        cells += [_statistic(float(np.mean([r[s] for r in runs]))) for s in STATISTICS]
        lines.append("| " + " | ".join(cells) + " |")
    baseline = arms[0]
    for arm in arms[1:]:
        differences = {m: [by_arm[arm][m] - by_arm[baseline][m] for by_arm in results.values()] for m in METRICS}
        cells = ["mean ± std", f"{arm} - {baseline}", *(_mean_std(differences[m], signed=True) for m in METRICS)]
        lines.append("| " + " | ".join(cells + [""] * len(STATISTICS)) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=tuple(RUNS), default="retinanet")
    parser.add_argument(
        "--arms", nargs="+", metavar="LOSS", help=f"the losses to train (default: all of the detector's); {BASELINE!r} "
        "is always trained, as the baseline"
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--output-dir", type=Path, default=REPO / "output" / "experiment")
    parser.add_argument("--reevaluate", type=Path, metavar="DIR", help="evaluate the runs trained in DIR instead")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    available = RUNS[args.detector]
    unknown = sorted(set(args.arms or ()) - set(available))
    if unknown:
        parser.error(f"--arms: {', '.join(unknown)} not among {', '.join(available)} (the {args.detector} detector's)")
    arms = {name: config for name, config in available.items() if name == BASELINE or name in (args.arms or available)}
    device = resolve_device(args.device)
    results = run_experiment(arms, args.seeds, args.output_dir, device, args.overrides, args.reevaluate)
    test_set = datasets_of(args.output_dir / f"seed{args.seeds[0]}" / arms[BASELINE].stem)[1]
    overrides = f" Overrides: {' '.join(args.overrides)}." if args.overrides else ""
    if args.reevaluate:
        overrides = f" The runs trained in {args.reevaluate}, evaluated again.{overrides}"
    summary = (
        f"{args.detector}: {', '.join(arms)} over seeds {', '.join(map(str, args.seeds))}: synthetic long-tailed set, "
        f"{test_set} (box AP, LVIS evaluation), on {describe_device(device)}.{overrides} g and γ: mean g_j and gamma_j "
        f"of each frequency group at the end of training; Spearman: of g_j with the training images of each class."
        f"\n\n{render(results)}\n"
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.md").write_text(summary)
    print("\n" + summary)
    return results


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""
Submit a training run to SLURM (or to submitit's local executor) through submitit; the job requeues itself when it
is preempted or reaches its time limit, and resumes from the run's OUTPUT_DIR (train_net.py --resume).

    # the paper's recipe: 16 GPUs on 2 nodes, batch 16 (1 image per GPU)
    python tools/submit.py --cluster slurm --nodes 2 --gpus-per-node 8 --partition gpu --timeout 4320 \\
        --config-file configs/LVISv1/improved_baseline_R_50_24ep_efl.yaml
    # a local job (here: 2 gloo processes on the CPU), waiting for its end
    python tools/submit.py --cluster local --gpus-per-node 2 --wait \\
        --config-file configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml MODEL.DEVICE cpu

The arguments after this script's own are train_net.py's (--config-file, --eval-only, --trust-pickle, overrides);
the job sets --num-gpus, --num-machines, --machine-rank, --dist-url and --resume itself. With a config on the CPU
(MODEL.DEVICE cpu, train.device=cpu) --gpus-per-node N runs N gloo processes per node and asks for no GPU. The
config is loaded and checked here before anything is submitted (but for its device: the job runs elsewhere).
Submitit's files (the job's stdout and stderr among them) go to --folder, by default OUTPUT_DIR/submitit.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import submitit

from efl.config import check, load
from efl.engine.cluster import JOB_ARGUMENTS, TrainingJob
from efl.errors import ConfigError


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", choices=("slurm", "local"), default="slurm")
    parser.add_argument("--nodes", type=int, default=1, help="machines (one task each)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="training processes per node (one per GPU)")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--timeout", type=int, default=4320, help="the job's time limit, in minutes")
    parser.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per node's task (SLURM)")
    parser.add_argument("--folder", help="submitit's folder (default: OUTPUT_DIR/submitit)")
    parser.add_argument("--wait", action="store_true", help="wait for the job to end and exit with its status")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    return parser


def submit(args: argparse.Namespace, train_net_arguments: Sequence[str]) -> submitit.Job:
    """Check the run's config (not its device), then submit its job."""
    taken = sorted(a.split("=")[0] for a in train_net_arguments if a.split("=")[0] in JOB_ARGUMENTS)
    if taken:
        raise ConfigError(f"the job sets {', '.join(taken)} itself: leave them out")
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise ConfigError(f"--nodes and --gpus-per-node must be at least 1, got {args.nodes} and {args.gpus_per_node}")
    if args.cluster == "local" and args.nodes > 1:
        raise ConfigError("the local executor runs one node: use --nodes 1, or --cluster slurm")
    opts = [a for a in train_net_arguments if not a.startswith("--")]
    eval_only = "--eval-only" in train_net_arguments
    processes = args.nodes * args.gpus_per_node
    recipe = load(args.config_file, opts, eval_only=eval_only, num_processes=processes)
    check(recipe, eval_only=eval_only, resume=True, num_processes=processes, here=args.cluster == "local")
    on_gpus = recipe.settings.device.startswith("cuda")
    executor = submitit.AutoExecutor(
        folder=args.folder or os.path.join(recipe.settings.output_dir, "submitit"), cluster=args.cluster
    )
    executor.update_parameters(
        nodes=args.nodes,
        tasks_per_node=1,
        gpus_per_node=args.gpus_per_node if on_gpus else 0,
        timeout_min=args.timeout,
        name=os.path.splitext(os.path.basename(args.config_file))[0],
    )
    if args.cluster == "slurm":
        executor.update_parameters(slurm_partition=args.partition, cpus_per_task=args.cpus_per_task)
    return executor.submit(TrainingJob(["--config-file", args.config_file, *train_net_arguments], args.gpus_per_node))


def main(argv: Optional[Sequence[str]] = None) -> Optional[submitit.Job]:
    args, train_net_arguments = argument_parser().parse_known_args(argv)
    try:
        job = submit(args, train_net_arguments)
    except ConfigError as e:
        sys.exit(f"submit.py: error: {e}")
    print(f"submitted job {job.job_id}; its output: {job.paths.stdout}")
    if not args.wait:
        return job
    try:
        job.result()
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError, holding the job's traceback
        sys.exit(f"submit.py: job {job.job_id} failed: {_reason(job, e)} (its output: {job.paths.stderr})")
    print(f"job {job.job_id} finished")
    return job


def _reason(job: submitit.Job, error: Exception) -> str:
    """train_net.py's own one-line message, from the job's output; else the last error of the job's traceback."""
    said = [line for line in (job.stderr() or "").splitlines() if line.startswith("train_net.py: ")]
    if said:
        return said[-1]
    errors = [line for line in str(error).splitlines() if "Error: " in line]
    return errors[-1].strip() if errors else str(error).strip().splitlines()[0]


if __name__ == "__main__":
    main()

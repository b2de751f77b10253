#!/usr/bin/env python
"""
The price of identical statistics on every process: one all-reduce of 2 x C float32 per training step, timed
between 2 CPU processes (gloo, this machine) and set against a training iteration's time taken from a run's
metrics.json.

    python benchmarks/bench_allreduce.py --metrics output/demo/retinanet_R_18_FPN_demo_efl/metrics.json
"""
import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, port, classes, repeat, queue):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    increments = torch.rand(2, classes)
    for _ in range(20):
        dist.all_reduce(increments)
    times = []
    for _ in range(repeat):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(increments)
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put(statistics.median(times))
    dist.destroy_process_group()


def iteration_seconds(metrics: Path) -> float:
    with open(metrics) as f:
        times = [json.loads(line).get("time") for line in f]
    times = [t for t in times if t is not None]
    if not times:
        raise SystemExit(f"{metrics} has no iteration times")
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[36, 1203])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--metrics", type=Path, help="metrics.json of a training run, for its iteration time")
    args = parser.parse_args()
    step = iteration_seconds(args.metrics) if args.metrics else None

    rows = []
    for classes in args.classes:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = mp.get_context("spawn").SimpleQueue()
        mp.start_processes(_worker, args=(port, classes, args.repeat, queue), nprocs=2, start_method="spawn")
        seconds = queue.get()
        share = f"{100 * seconds / step:.4f} %" if step else "-"
        rows.append(f"| {classes} | {seconds * 1e6:.0f} | {share} |")
    print(f"all-reduce of the EFL statistics (2 x C float32), 2 processes, gloo, {os.cpu_count()} CPU cores, "
          f"median of {args.repeat}" + (f"; iteration time {step:.3f} s from {args.metrics}" if step else ""))
    print("| C | all-reduce µs | share of an iteration |")
    print("|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

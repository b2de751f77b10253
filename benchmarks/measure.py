"""What the benchmarks share: the timing loop, memory readings, device names, and one case per fresh process."""
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tabulate import tabulate

__all__ = ["device_name", "markdown_table", "peak_rss_bytes", "rss_bytes", "run_child", "sync", "time_ms"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(step: Callable[[], object], device: str, repeat: int, warmup: int = 1) -> float:
    """Median wall-clock milliseconds of ``repeat`` calls of ``step``, after ``warmup`` calls (compilation, caches)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def rss_bytes() -> int:
    """The process's resident size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """The process's peak resident size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def run_child(argv: Sequence[str], timeout: Optional[float] = None) -> Dict:
    """
    Run ``python argv`` in a fresh process (peak memory is per process, and no case warms another) and return the
    JSON object its last line of output holds. Raises RuntimeError with the end of its error output if it fails.
    """
    child = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def markdown_table(rows: List[List], headers: List[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)

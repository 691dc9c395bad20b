"""Independent jobs at once, each in a thread of its own with its share of torch's CPU threads.

A small model's decode step, and its update at a few rows, use a second core poorly (per-op
overhead, weight traffic), so two agents working at once on one core each finish sooner than one
after the other on both (measured in docs/performance.md). torch releases the GIL in its ops, and
its intra-op thread count is per calling thread, so each job sets its own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


def in_split_threads(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Every job's result, in order, the jobs run at once with torch's threads split evenly."""
    threads_before = torch.get_num_threads()
    per_job = max(1, threads_before // len(jobs))

    def run(job: Callable[[], T]) -> T:
        torch.set_num_threads(per_job)
        return job()

    try:
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="magrpo-agent") as pool:
            return list(pool.map(run, jobs))
    finally:
        torch.set_num_threads(threads_before)


__all__ = ["in_split_threads"]

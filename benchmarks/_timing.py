"""Timing helper shared by the benchmark scripts."""

import time


def best_time(fn, repeat=3, *, warmup=False):
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call if ``warmup``), and its last result."""
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out

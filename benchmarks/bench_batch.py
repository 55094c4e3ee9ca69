"""Targets per minute: ``run_batch`` on a LocalCluster of 1, 2 and 4 workers vs one target after another.

The baseline is what a user would otherwise run: ``gsprep prepare`` on each
target in turn, in one fresh Python process (``run_target`` in a loop, so
JAX compiles once and not once per target).  Every configuration starts
cold: a fresh process or cluster, an empty output folder and an empty JAX
compile cache; wall time runs from the start of the batch (cluster start
and every compile included) to the last product written.  With
``--warm-cache`` every line (the sequential one too) instead shares a JAX
compile cache filled by an untimed run first: the steady state of a survey
that has run gsprep before (tracing is still paid per process).

    python benchmarks/bench_batch.py [--targets 24] [--size 400] [--workers 1 2 4] [--warm-cache]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BANDS = {"g": 2.4, "r": 3.0, "i": 3.6}

SEQUENTIAL = """
import sys, time
t0 = time.perf_counter()
from gsprep.batch import read_targets, target_configs
from gsprep.batch import _use_compile_cache
from gsprep.pipeline import load_config, run_target
_use_compile_cache(sys.argv[5] if len(sys.argv) > 5 else None)
cfgs = target_configs(read_targets(sys.argv[1]), load_config(sys.argv[2], batch=True), targets_dir=sys.argv[4])
bad = 0
for c in cfgs:
    bad += not run_target(c, f"{sys.argv[3]}/{c.name}", figures=False).ok
print(time.perf_counter() - t0, bad)
"""


def make_targets(folder, n, size, rng):
    from astropy.io import fits
    from astropy.table import Table

    from gsprep.simulate import demo_frame

    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    rows = []
    for t in range(n):
        ra = 150.0 + 0.05 * t
        for i, (band, fwhm) in enumerate(BANDS.items()):
            data, header = demo_frame(fwhm=fwhm, seed=100 * t + i, shape=(size, size),
                                      n_stars=int(rng.integers(20, 60)), ra=ra)
            fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(
                os.path.join(folder, "frames", f"t{t}_{band}.fits"))
        rows.append((f"t{t}", ra, 2.2))
    Table(rows=rows, names=("name", "ra", "dec")).write(os.path.join(folder, "targets.csv"))
    lines = ["[target]", "r = 20.0", "", "[options]", "oversampling = 2", "stamp_size = 21", "sky_order = 2", ""]
    for band, fwhm in BANDS.items():
        lines += [f"[bands.{band}]", f'file = "frames/{{name}}_{band}.fits"', f"fwhm = {fwhm}", ""]
    with open(os.path.join(folder, "bands.toml"), "w") as f:
        f.write("\n".join(lines))
    return os.path.join(folder, "targets.csv"), os.path.join(folder, "bands.toml")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=24)
    ap.add_argument("--size", type=int, default=400, help="frame size, pixels")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--warm-cache", action="store_true", help="share a pre-filled JAX compile cache")
    args = ap.parse_args()
    from gsprep.batch import run_batch

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        targets, bands = make_targets(tmp, args.targets, args.size, rng)
        cache = [os.path.join(tmp, "jax-cache")] if args.warm_cache else []
        print(f"{args.targets} generated targets, {len(BANDS)} bands of {args.size}^2 px each; "
              f"{os.cpu_count()} cores; " + ("shared warm JAX compile cache" if cache else "cold start for every line"))
        if cache:
            run_batch(targets, bands, os.path.join(tmp, "warmup"), workers=1, figures=False, compile_cache=cache[0])
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", SEQUENTIAL, targets, bands, os.path.join(tmp, "seq"), tmp, *cache],
                             capture_output=True, text=True, check=True)
        t_seq = time.perf_counter() - t0
        bad = int(out.stdout.split()[-1])
        rate_seq = 60 * args.targets / t_seq
        print(f"{'mode':<28} {'wall s':>8} {'targets/min':>12} {'vs sequential':>14} {'failed':>7}")
        print(f"{'sequential (one process)':<28} {t_seq:8.1f} {rate_seq:12.1f} {1.0:14.2f} {bad:>7}")
        for n in args.workers:
            res = run_batch(targets, bands, os.path.join(tmp, f"batch{n}"), workers=n, figures=False,
                            compile_cache=cache[0] if cache else "default")
            rate = 60 * res.ran / res.elapsed_s
            print(f"{f'run_batch, {n} worker(s)':<28} {res.elapsed_s:8.1f} {rate:12.1f} {rate / rate_seq:14.2f} "
                  f"{res.failed:>7}")


if __name__ == "__main__":
    main()

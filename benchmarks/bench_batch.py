"""Targets per minute of ``run_batch``: frame reuse against the per-target path, and the cost of more targets.

Generated survey fields (``demo_frame`` plus a Sérsic galaxy at every
target, 3 bands of ``--size``^2 pixels each, 40 stars per frame, so that every
field's PSF fit is one compiled program):

* ``--targets`` targets on ``--fields`` fields (several targets per frame),
  and ``--spread`` targets on as many fields (one target per frame);
* each run with frame reuse (``run_batch``'s default: one task per frame and
  band for the sky and stars, one per field for the PSF fit, then the
  targets) and with the per-target path (``reuse_frames=False``: every
  target task fits its frames' skies, stars and PSFs itself, as before),
  on a LocalCluster of 1 and 2 workers;
* cold: a new cluster, an empty output folder (so an empty frame cache) and
  an empty JAX compile cache, every compile paid; warm: the JAX compile
  cache filled by an untimed run first (a survey that has run gsprep
  before), frame cache still empty;
* the cost of adding targets: ``--add A B`` targets on the same
  ``--fields`` fields (warm, frame reuse, the largest worker count).

Wall time runs from ``run_batch``'s start (cluster start included) to the
last product written.

    python benchmarks/bench_batch.py [--fields 10] [--targets 40] [--spread 20] [--size 400] [--workers 1 2]
                                     [--modes warm cold] [--add 10 100] [--cold-cases 2]
                                     [--paths per-target reuse] [--workdir DIR] [--warm-spread N]

``--workdir DIR`` keeps the generated fields and the warm JAX compile
cache there (re-used by the next invocation with the same folder, so that
the matrix can be run in parts); every timed line still writes into a new
output folder (an empty frame cache).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np

BANDS = {"g": 2.4, "r": 3.0, "i": 3.6}


def make_fields(folder, n_fields, per_field, size, seed=0):
    """``n_fields`` fields of 3 bands with ``per_field`` target galaxies each; returns (targets.csv, bands.toml)."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    from gsprep.simulate import demo_frame, sersic_image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    rows = []
    for f in range(n_fields):
        ra = 150.0 + 0.05 * f
        n_stars = 40  # one star-count bucket: every field's PSF fit is one compiled program
        # target galaxies: away from the edges and from each other's centres
        pos = []
        while len(pos) < per_field:
            p = rng.uniform(60, size - 60, 2)
            if all(np.hypot(*(p - q)) > 25 for q in pos):
                pos.append(p)
        for i, (band, fwhm) in enumerate(BANDS.items()):
            data, header = demo_frame(fwhm=fwhm, seed=1000 * f + i, shape=(size, size), n_stars=n_stars, ra=ra)
            gal = sum(sersic_image((size, size), x, y, flux=8e4, r_eff=4.0, n=1.5, q=0.7, theta=0.3) for x, y in pos)
            noise = np.random.default_rng(1000 * f + i + 7).normal(0.0, 1.0, gal.shape) * np.sqrt(gal / 200.0)
            fits.PrimaryHDU((data + gal + noise).astype(np.float32), header=header).writeto(
                os.path.join(folder, "frames", f"f{f}_{band}.fits"))
        w = WCS(header)
        for k, (x, y) in enumerate(pos):
            c = w.pixel_to_world(x, y)
            rows.append((f"f{f}t{k}", float(c.ra.deg), float(c.dec.deg), f"f{f}"))
    Table(rows=rows, names=("name", "ra", "dec", "field")).write(os.path.join(folder, "targets.csv"))
    lines = ["[target]", "r = 15.0", "", "[options]", "oversampling = 2", "stamp_size = 21", "sky_order = 2", ""]
    for band, fwhm in BANDS.items():
        lines += [f"[bands.{band}]", f'file = "frames/{{field}}_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    with open(os.path.join(folder, "bands.toml"), "w") as fh:
        fh.write("\n".join(lines))
    return os.path.join(folder, "targets.csv"), os.path.join(folder, "bands.toml")


def fields_in(folder, n_fields, per_field, size, seed=0):
    """``make_fields`` into ``folder``, or the fields already there (a ``--workdir`` of an earlier invocation)."""
    done = os.path.join(folder, "generated")
    if not os.path.exists(done):
        out = make_fields(folder, n_fields, per_field, size, seed=seed)
        open(done, "w").close()
        return out
    return os.path.join(folder, "targets.csv"), os.path.join(folder, "bands.toml")


def subset(targets, n, path):
    """The first ``n`` targets of each field, round robin, as a new table file (next to the frames: paths in the
    bands file are relative to the targets file's folder)."""
    from astropy.table import Table

    tab = Table.read(targets, format="ascii.csv")
    order = np.argsort([int(name.split("t")[-1]) for name in tab["name"]], kind="stable")
    tab[order[:n]].write(path, overwrite=True)
    return path


def target_frame(size, folder, cache, reps=3):
    """Seconds per target task on one field of 3 bands of ``size``^2 px, its frame products cached.

    Each target through ``run_target(frames=CachedFrames(...))`` with a
    fresh ``FrameCache`` object (as on a worker that ran other fields in
    between), no figures: frames read by window (the default), and read
    whole (the same cache, ``read_bands`` hidden).  Returns the medians.
    """
    import shutil

    from gsprep._jaxcache import use_compile_cache
    from gsprep.batch import read_targets, target_configs
    from gsprep.framecache import CachedFrames, FrameCache, band_spec, ensure_frame
    from gsprep.pipeline import load_config, run_target

    class Whole:  # the cache's products, frames read whole
        def __init__(self, frames):
            self.sky, self.stars, self.psfs, self.computed = frames.sky, frames.stars, frames.psfs, frames.computed

    use_compile_cache(cache)
    targets, bands = fields_in(os.path.join(folder, f"frame-{size}"), 1, 6, size)
    cfgs = target_configs(read_targets(targets), load_config(bands, batch=True), targets_dir=os.path.dirname(targets))
    root = os.path.join(folder, f"frame-{size}", "out", "frames")
    keys = {b: ensure_frame(FrameCache(root), cfgs[0], band_spec(cfgs[0], b), b)[0] for b in cfgs[0].bands}
    times = {"window": [], "whole": []}
    for rep in range(reps + 1):
        for cfg in cfgs:
            for how, acc in times.items():
                out = os.path.join(folder, f"frame-{size}", "out", how, cfg.name)
                shutil.rmtree(out, ignore_errors=True)
                frames = CachedFrames(FrameCache(root), cfg, keys)
                t = time.perf_counter()
                run = run_target(cfg, out, figures=False, frames=frames if how == "window" else Whole(frames))
                if rep:  # the first round compiles and fills the PSF entry
                    acc.append(time.perf_counter() - t)
                assert not run.errors, run.errors
    return {how: float(np.median(t)) for how, t in times.items()}


def run(targets, bands, out, workers, cache, reuse):
    from gsprep.batch import run_batch

    res = run_batch(targets, bands, out, workers=workers, figures=False, compile_cache=cache, reuse_frames=reuse)
    return res


def line(label, res, base=None):
    rate = 60.0 * res.ran / res.elapsed_s
    vs = f"{rate / base:9.2f}" if base else f"{'':>9}"
    print(f"{label:<44} {res.ran:>7} {res.elapsed_s:8.1f} {rate:12.1f} {vs} {res.failed:>7}", flush=True)
    return rate


def header(title):
    print(f"\n{title}\n{'case':<44} {'targets':>7} {'wall s':>8} {'targets/min':>12} {'vs per-target':>9} "
          f"{'failed':>7}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=10)
    ap.add_argument("--targets", type=int, default=40, help="targets on --fields fields (0: only the spread case)")
    ap.add_argument("--spread", type=int, default=20, help="targets on as many fields (0: skip)")
    ap.add_argument("--size", type=int, default=400, help="frame size, pixels")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["warm", "cold"], choices=["cold", "warm"])
    ap.add_argument("--add", type=int, nargs=2, default=[10, 100], metavar=("FEW", "MANY"),
                    help="targets on the same --fields fields, to time the cost of adding targets (0 0: skip)")
    ap.add_argument("--cold-cases", type=int, default=2,
                    help="run the cold lines for the first N cases only (1: the dense case; saves time)")
    ap.add_argument("--paths", nargs="+", default=["per-target", "reuse"], choices=["per-target", "reuse"],
                    help="the paths timed on each case (default both)")
    ap.add_argument("--workdir", default=None,
                    help="keep the generated fields and the warm compile cache here (default: a temporary folder)")
    ap.add_argument("--warm-spread", type=int, default=None, metavar="N",
                    help="fill the compile cache with the first N targets of the spread case only (default: all)")
    ap.add_argument("--target-frame", type=int, default=0, metavar="SIZE",
                    help="only time a target task on a SIZE^2 frame whose products are cached: frames read by "
                         "window vs whole")
    args = ap.parse_args()
    if args.target_frame:
        with tempfile.TemporaryDirectory() as tmp:
            folder = os.path.abspath(args.workdir) if args.workdir else tmp
            t = target_frame(args.target_frame, folder, os.path.join(folder, "jax-warm"))
        print(f"one target on a {args.target_frame}^2 frame (3 bands), frame products cached, median s per target: "
              f"frames read by window {t['window']:.3f}, read whole {t['whole']:.3f}", flush=True)
        return

    with contextlib.ExitStack() as stack:
        if args.workdir:
            data = os.path.abspath(args.workdir)
            os.makedirs(data, exist_ok=True)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=data))  # the timed lines' outputs
        else:
            data = tmp = stack.enter_context(tempfile.TemporaryDirectory())
        per = max(-(-args.targets // args.fields), -(-args.add[1] // args.fields) if args.add[1] else 0)
        t0 = time.perf_counter()
        dense = bands = None
        if per:
            dense, bands = fields_in(os.path.join(data, f"dense-{args.fields}x{per}-{args.size}"), args.fields, per,
                                     args.size)
        cases = []
        if args.targets:
            dense_t = subset(dense, args.targets, os.path.join(os.path.dirname(dense), "some.csv"))
            cases.append((f"{args.targets} targets on {args.fields} fields", dense_t, bands))
        if args.spread:
            sp, sp_bands = fields_in(os.path.join(data, f"spread-{args.spread}-{args.size}"), args.spread, 1,
                                     args.size, seed=1)
            cases.append((f"{args.spread} targets on {args.spread} fields", sp, sp_bands))
        print(f"generated in {time.perf_counter() - t0:.0f} s: fields of {len(BANDS)} bands of {args.size}^2 px; "
              f"{os.cpu_count()} cores (shared)", flush=True)
        warm_cache = os.path.join(data, "jax-warm")
        if "warm" in args.modes:  # every program the lines compile (the star-count buckets of every frame)
            t = time.perf_counter()
            warm = []
            if per:  # a target per field
                warm.append((subset(dense, args.fields, os.path.join(os.path.dirname(dense), "warmup.csv")), bands))
            if args.spread:
                n_sp = args.spread if args.warm_spread is None else min(args.warm_spread, args.spread)
                if n_sp:
                    sp_t = cases[-1][1]
                    warm.append((subset(sp_t, n_sp, os.path.join(os.path.dirname(sp_t), "warmup.csv")), cases[-1][2]))
            for k, (targets, b) in enumerate(warm):
                run(targets, b, os.path.join(tmp, f"warmup{k}"), max(args.workers), warm_cache, True)
            print(f"(compile cache filled in {time.perf_counter() - t:.0f} s, untimed)", flush=True)
        n = 0

        def add_targets():
            nonlocal n
            w = max(args.workers)
            header(f"adding targets on the same {args.fields} fields (warm, {w} worker(s), frame reuse)")
            times = []
            for k in args.add:
                n += 1
                res = run(subset(dense, k, os.path.join(os.path.dirname(dense), f"add{k}.csv")), bands,
                          os.path.join(tmp, f"out{n}"), w, warm_cache, True)
                line(f"{k} targets", res)
                times.append(res.elapsed_s)
            print(f"{args.add[1] / args.add[0]:g}x the targets on the same frames: {times[1] / times[0]:.2f}x the "
                  "time", flush=True)

        for mode in args.modes:
            for label, targets, b in cases[: args.cold_cases] if mode == "cold" else cases:
                header(f"{label}, {mode}")
                for w in args.workers:
                    rates = {}
                    for reuse in [p == "reuse" for p in args.paths]:
                        n += 1
                        cache = warm_cache if mode == "warm" else os.path.join(tmp, f"jax-cold-{n}")
                        res = run(targets, b, os.path.join(tmp, f"out{n}"), w, cache, reuse)
                        what = "frame reuse" if reuse else "per-target"
                        rates[reuse] = line(f"{mode}, {w} worker(s), {what}", res, rates.get(False))
            if mode == "warm" and args.add[1]:
                add_targets()
        if "warm" not in args.modes and args.add[1]:
            add_targets()

if __name__ == "__main__":
    main()

"""Bands in one call vs a loop over bands: fit_sky and fit_epsf (warm wall time, same answers).

    python benchmarks/bench_bands.py [--bands 1 3 5 9] [--stars 60] [--sky-size 1024]
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import best_time

import gsprep
from gsprep.simulate import moffat_psf


def stamps(rng, n, fwhm, size=21):
    c = size // 2
    xy = c + rng.uniform(-0.5, 0.5, (n, 2))
    flux = np.exp(rng.uniform(np.log(2e3), np.log(2e5), n))
    true = np.stack([f * moffat_psf((size, size), x, y, fwhm=fwhm, beta=3.0) for (x, y), f in zip(xy, flux, strict=True)])
    sigma = np.sqrt(100.0 + true)
    return true + rng.normal(0, 1, true.shape) * sigma, sigma


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bands", type=int, nargs="+", default=[1, 3, 5, 9])
    ap.add_argument("--stars", type=int, default=60)
    ap.add_argument("--sky-size", type=int, default=1024)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'B':>3} | {'fit_sky one call':>16} {'loop':>8} {'speedup':>7} | {'fit_epsf one call':>17} {'loop':>8} "
          f"{'speedup':>7} {'max |dPSF|/peak':>16}")
    for nb in args.bands:
        n = args.sky_size
        y, x = np.mgrid[:n, :n] / n
        frames = np.stack([10 + b + 3 * x - 2 * y**2 + rng.normal(0, 1, (n, n)) for b in range(nb)])
        t1, _ = best_time(lambda frames=frames: gsprep.fit_sky(frames, order=3), 2, warmup=True)
        t2, _ = best_time(lambda frames=frames: [gsprep.fit_sky(f, order=3) for f in frames], 2, warmup=True)
        st = [stamps(rng, args.stars, 2.0 + 0.3 * b) for b in range(nb)]
        d = np.stack([s[0] for s in st])
        s = np.stack([s[1] for s in st])
        t3, both = best_time(lambda d=d, s=s: gsprep.fit_epsf(d, s, oversampling=2), 1, warmup=True)
        t4, each = best_time(lambda d=d, s=s: [gsprep.fit_epsf(d[b], s[b], oversampling=2) for b in range(len(d))],
                             1, warmup=True)
        dpsf = max(np.abs(both.psf[b] - each[b].psf).max() / each[b].psf.max() for b in range(nb))
        print(f"{nb:>3} | {t1:16.3f} {t2:8.3f} {t2 / t1:7.2f} | {t3:17.2f} {t4:8.2f} {t4 / t3:7.2f} {dpsf:16.2e}")


if __name__ == "__main__":
    main()

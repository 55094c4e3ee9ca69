"""Sky-fit benchmark: gsprep.fit_sky vs astropy Polynomial2D + LinearLSQFitter vs photutils Background2D.

Frames of 2048^2 and 4096^2 pixels with a known order-3 sky, Gaussian noise
(rms 1) and a few hundred stars; every method sees the same pixels (sources
masked with one shared mask).  Reports wall time and the recovered-sky error
(max and rms of fitted minus true sky, in units of the noise rms), and the
speed ratio against astropy.

    python benchmarks/bench_sky.py [--sizes 2048 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _timing import best_time


def make_frame(n, rng):
    y, x = np.mgrid[:n, :n].astype(np.float64)
    u, v = x / n - 0.5, y / n - 0.5
    sky = 50.0 + 8 * u - 5 * v + 20 * u**3 - 12 * u * v**2 + 9 * v**3 + 4 * u * v
    frame = sky + rng.normal(0, 1.0, (n, n))
    mask = np.zeros((n, n), bool)
    for xs, ys in rng.uniform(20, n - 20, size=(n // 8, 2)):
        r = rng.uniform(3, 12)
        x0, x1, y0, y1 = int(xs - r), int(xs + r) + 1, int(ys - r), int(ys + r) + 1
        frame[y0:y1, x0:x1] += 200.0
        mask[y0:y1, x0:x1] = True
    return frame, mask, sky


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import gsprep
    from astropy.modeling import fitting, models
    from photutils.background import Background2D, MedianBackground

    rng = np.random.default_rng(0)
    print(f"{'size':>6} {'method':<28} {'time_s':>8} {'max_err':>8} {'rms_err':>8} {'speedup_vs_astropy':>18}")
    for n in args.sizes:
        frame, mask, sky = make_frame(n, rng)
        t0 = time.perf_counter()
        gsprep.fit_sky(frame, mask, order=3)
        first = time.perf_counter() - t0
        t_g, fit = best_time(lambda: gsprep.fit_sky(frame, mask, order=3), args.repeat)

        y, x = np.mgrid[:n, :n]
        good = ~mask

        def astropy_fit(normalise):
            xn, yn = (x / n - 0.5, y / n - 0.5) if normalise else (x, y)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = fitting.LinearLSQFitter()(models.Polynomial2D(3), xn[good], yn[good], frame[good])
            return m(xn, yn)

        t_a, bg_a = best_time(lambda: astropy_fit(False), max(1, args.repeat - 1))
        t_an, bg_an = best_time(lambda: astropy_fit(True), max(1, args.repeat - 1))

        def phot():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Background2D(frame, (128, 128), filter_size=(3, 3), mask=mask,
                                    bkg_estimator=MedianBackground()).background

        t_p, bg_p = best_time(phot, max(1, args.repeat - 1))
        rows = [
            ("gsprep.fit_sky (warm)", t_g, fit.background),
            ("gsprep.fit_sky (first call)", first, fit.background),
            ("astropy Polynomial2D+LinLSQ", t_a, bg_a),
            ("astropy, normalised coords", t_an, bg_an),
            ("photutils Background2D", t_p, bg_p),
        ]
        for name, t, bg in rows:
            e = bg - sky
            print(f"{n:>6} {name:<28} {t:8.3f} {np.abs(e).max():8.4f} {np.sqrt(np.mean(e**2)):8.4f} "
                  f"{t_a / t:18.1f}")


if __name__ == "__main__":
    main()

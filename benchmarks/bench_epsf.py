"""PSF benchmark: gsprep.fit_epsf vs photutils' EPSFBuilder on the same simulated stars.

Stars are drawn from a known, pixel-integrated elliptical Moffat (shear
(0.04, -0.02)) in 25 x 25 stamps with random sub-pixel offsets, fluxes
log-uniform in [2e3, 2e5], sky noise 10 plus Poisson; the true sigma maps are
given to both methods (as weights to EPSFBuilder).  Cases:

* undersampled: FWHM 1.6 px, beta 2.5, oversampling 4
* well sampled: FWHM 3.5 px, beta 3.5, oversampling 2
* contaminated: the undersampled PSF, 15% of stars hit by a cosmic ray,
  10% with a faint neighbour, no masks given

Each with 30 and 150 stars and several seeds.  PSF errors are rms and max of
(estimate - truth) / truth peak within 3 FWHM, after the best sub-pixel
alignment, on the fine grid.  gsprep is scored in photutils' documented ePSF
convention (the pixel-integrated PSF sampled at 1/k pixel; gsprep's PSF is
converted to it exactly with ``to_epsf_convention``, no deconvolution), and
in its own convention (sub-pixel flux) as well; EPSFBuilder's ePSF is scored
against whichever of the two truths gives it the smaller error (on these
stars its output sits closer to the sub-pixel-flux truth), so the ratio
is the least favourable one to gsprep.  Also: size and ellipticity error (windowed second
moments), star-position and flux scatter (gsprep's joint fit vs a fit with
the true PSF), and wall time (first call including jit compilation, and
warm).

    python benchmarks/bench_epsf.py [--seeds 3] [--stars 30 150] [--cases undersampled well contaminated]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage, optimize

from gsprep.epsf import fit_epsf, fit_stars, photutils_epsf_raw, to_epsf_convention
from gsprep.simulate import moffat_psf

SHEAR = (0.04, -0.02)
CASES = {
    "undersampled": dict(fwhm=1.6, beta=2.5, k=4, contaminated=False),
    "well": dict(fwhm=3.5, beta=3.5, k=2, contaminated=False),
    "contaminated": dict(fwhm=1.6, beta=2.5, k=4, contaminated=True),
}
SIZE = 25


def simulate(n, fwhm, beta, contaminated, rng):
    c = SIZE // 2
    xy = c + rng.uniform(-0.5, 0.5, (n, 2))
    flux = np.exp(rng.uniform(np.log(2e3), np.log(2e5), n))
    kw = dict(fwhm=fwhm, beta=beta, e1=SHEAR[0], e2=SHEAR[1], oversample=16)
    true = np.stack([f * moffat_psf((SIZE, SIZE), x, y, **kw) for (x, y), f in zip(xy, flux, strict=True)])
    extra = np.zeros_like(true)
    if contaminated:
        idx = rng.permutation(n)
        for s in idx[: int(round(0.15 * n))]:  # cosmic rays: 1-3 hot pixels near the core
            x0, y0 = rng.integers(c - 6, c + 7, 2)
            extra[s, y0, x0] += rng.uniform(300, 3000)
            if rng.uniform() < 0.5:
                extra[s, y0, min(x0 + 1, SIZE - 1)] += rng.uniform(100, 1000)
        for s in idx[int(round(0.15 * n)) : int(round(0.25 * n))]:  # faint neighbours
            ang, r = rng.uniform(0, 2 * np.pi), rng.uniform(5, 10)
            extra[s] += rng.uniform(0.02, 0.1) * flux[s] * moffat_psf(
                (SIZE, SIZE), xy[s, 0] + r * np.cos(ang), xy[s, 1] + r * np.sin(ang), **kw)
    sigma = np.sqrt(10.0**2 + true)
    data = true + extra + rng.normal(0, 1, true.shape) * sigma
    return data, sigma, xy, flux


def truth_fine(fwhm, beta, k, shape, centre):
    """Truth in gsprep's convention: flux per 1/k sub-pixel, centred at `centre` (fine px)."""
    t = moffat_psf(shape, centre, centre, fwhm=fwhm * k, beta=beta, e1=SHEAR[0], e2=SHEAR[1], oversample=4)
    return t / t.sum()


def aligned_error(est, truth, radius):
    """rms and max |est - truth| / peak inside `radius` fine px, after the best sub-pixel shift."""
    n = truth.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    inside = np.hypot(xx - c, yy - c) <= radius
    est = est / est[inside].sum() * truth[inside].sum()

    def rms(sh):
        moved = ndimage.shift(est, sh, order=3, mode="constant")
        return np.sqrt(np.mean((moved - truth)[inside] ** 2))

    best = optimize.minimize(rms, [0.0, 0.0], method="Nelder-Mead", options=dict(xatol=1e-3, fatol=1e-12))
    moved = ndimage.shift(est, best.x, order=3, mode="constant")
    err = (moved - truth)[inside] / truth.max()
    return np.sqrt(np.mean(err**2)), np.abs(err).max(), moved


def moments(img, radius):
    n = img.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n] - c
    w = np.exp(-(xx**2 + yy**2) / (2 * (radius / 2) ** 2)) * img
    t = w.sum()
    ixx, iyy, ixy = (w * xx * xx).sum() / t, (w * yy * yy).sum() / t, (w * xx * yy).sum() / t
    return np.sqrt((ixx + iyy) / 2), (ixx - iyy) / (ixx + iyy), 2 * ixy / (ixx + iyy)


def shape_errors(est, truth, radius):
    s0, a0, b0 = moments(truth, radius)
    s1, a1, b1 = moments(est, radius)
    return abs(s1 / s0 - 1), np.hypot(a1 - a0, b1 - b0)


def run_case(name, n, seed):
    cfg = CASES[name]
    k, fwhm, beta = cfg["k"], cfg["fwhm"], cfg["beta"]
    rng = np.random.default_rng(seed)
    data, sigma, xy, flux = simulate(n, fwhm, beta, cfg["contaminated"], rng)
    kk = k * SIZE
    t_g = truth_fine(fwhm, beta, k, (kk, kk), (kk - 1) / 2.0)
    radius = 3 * fwhm * k
    t0 = time.perf_counter()
    fit_epsf(data, sigma, oversampling=k)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = fit_epsf(data, sigma, oversampling=k)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    e_phot, _ = photutils_epsf_raw(data, sigma, oversampling=k)
    t_phot = time.perf_counter() - t0
    # truths in the ePSF convention on each method's own grid
    truth_e_g = to_epsf_convention(t_g, k)
    ne = e_phot.shape[0]
    t_p = truth_fine(fwhm, beta, k, (ne, ne), (ne - 1) / 2.0)
    truth_e_p = to_epsf_convention(t_p, k)
    g_rms, g_max, g_al = aligned_error(to_epsf_convention(res.psf, k), truth_e_g, radius)
    gs_rms, gs_max, _ = aligned_error(res.psf, t_g, radius)
    # photutils' ePSF is documented as the pixel-integrated PSF at 1/k steps, but on these stars it
    # matches the sub-pixel-flux truth better; score it against whichever truth favours it
    cand = [(aligned_error(e_phot, t, radius), t) for t in (truth_e_p, t_p)]
    (p_rms, p_max, p_al), truth_p = min(cand, key=lambda c: c[0][0])
    g_size, g_ell = shape_errors(g_al, truth_e_g, radius)
    p_size, p_ell = shape_errors(p_al, truth_p, radius)
    # star positions and fluxes: gsprep's joint fit vs a fit with the true PSF
    tc, tf, _ = fit_stars(t_g, data, sigma, oversampling=k)
    good = res.flags == 0
    pos = lambda c: np.std((c - xy)[good] - np.mean((c - xy)[good], axis=0))  # noqa: E731
    fl = lambda f: np.std((f / flux)[good])  # noqa: E731
    return dict(case=name, n=n, seed=seed, g_rms=g_rms, g_max=g_max, gs_rms=gs_rms, gs_max=gs_max, p_rms=p_rms,
                p_max=p_max, g_size=g_size, p_size=p_size, g_ell=g_ell, p_ell=p_ell, g_pos=pos(res.centers),
                t_pos=pos(tc), g_flux=fl(res.fluxes), t_flux=fl(tf), t_first=first, t_warm=warm, t_phot=t_phot,
                flagged=int((res.flags & 1).sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stars", type=int, nargs="+", default=[30, 150])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    args = ap.parse_args()
    rows = []
    for name in args.cases:
        for n in args.stars:
            for seed in range(args.seeds):
                r = run_case(name, n, seed)
                rows.append(r)
                print(f"  {name:<13} n={n:<4} seed={seed} gsprep {100 * r['g_rms']:.4f}% photutils {100 * r['p_rms']:.4f}% "
                      f"t_warm {r['t_warm']:.1f}s t_phot {r['t_phot']:.1f}s", flush=True)
    print()
    hdr = (f"{'case':<13} {'n':>4} | {'PSF rms %':>19} {'ratio':>5} | {'PSF max %':>15} | {'size err':>13} | "
           f"{'ell err':>13} | {'pos scatter px':>15} | {'flux scatter':>15} | {'time s (gsprep first/warm, phot)':>32}")
    print(hdr)
    print(f"{'':<13} {'':>4} | {'gsprep':>9} {'photut':>9} {'g/p':>5} | {'gsprep':>7} {'photut':>7} | "
          f"{'gsprep':>6} {'photut':>6} | {'gsprep':>6} {'photut':>6} | {'gsprep':>7} {'trueP':>7} | {'gsprep':>7} {'trueP':>7} |")
    for name in args.cases:
        for n in args.stars:
            sel = [r for r in rows if r["case"] == name and r["n"] == n]
            m = {key: np.mean([r[key] for r in sel]) for key in sel[0] if key not in ("case", "n", "seed")}
            print(f"{name:<13} {n:>4} | {100 * m['g_rms']:9.4f} {100 * m['p_rms']:9.4f} {m['g_rms'] / m['p_rms']:5.2f} | "
                  f"{100 * m['g_max']:7.3f} {100 * m['p_max']:7.3f} | {m['g_size']:6.4f} {m['p_size']:6.4f} | "
                  f"{m['g_ell']:6.4f} {m['p_ell']:6.4f} | {m['g_pos']:7.4f} {m['t_pos']:7.4f} | "
                  f"{m['g_flux']:7.4f} {m['t_flux']:7.4f} | {m['t_first']:6.1f} {m['t_warm']:6.1f} {m['t_phot']:6.1f}")
    print("\nPSF errors: fraction of the truth's peak within 3 FWHM, after the best sub-pixel alignment, ePSF convention"
          " for both methods; gsprep in its own (sub-pixel flux) convention:")
    for name in args.cases:
        for n in args.stars:
            sel = [r for r in rows if r["case"] == name and r["n"] == n]
            print(f"  {name:<13} n={n:<4} rms {100 * np.mean([r['gs_rms'] for r in sel]):.4f}%  "
                  f"max {100 * np.mean([r['gs_max'] for r in sel]):.3f}%  stars flagged {np.mean([r['flagged'] for r in sel]):.1f}")


if __name__ == "__main__":
    main()

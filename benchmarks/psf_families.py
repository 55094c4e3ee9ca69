"""Simulated PSF-star families and PSF scoring for the PSF benchmarks (issue 11).

Every family is a GalSim profile (the PSF before the pixel, in native-pixel
units, flux 1) plus an oversampling ``k``.  The profile is re-centred so its
centroid over the ``SIZE x SIZE`` stamp lies at the origin (gsprep pins the
PSF centroid), and dilated so its FWHM (effective: ``2 sqrt(A / pi)`` with
``A`` the area above half the peak, measured without the pixel on a 1/16-px
grid) matches the spec; ``roman`` keeps its true size.

Conventions (DESIGN.md, ``gsprep/epsf.py``):

* **truth** (gsprep convention): ``drawImage(method='auto')`` at scale
  ``1/k`` on a ``k*SIZE`` grid, the centre at the centre of the central native
  pixel (GalSim's true centre of the grid; a sub-pixel corner when ``k*SIZE``
  is even), each value the flux in that sub-pixel, normalised to sum 1.
* **ePSF** (photutils' documented convention): the PSF convolved with the
  native pixel, sampled at ``1/k`` px (``truth_epsf``; sums to ~``k**2``).
  ``gsprep.epsf.to_epsf_convention(truth, k)`` is an approximation of it
  (one extra ``1/k`` box), also offered as a candidate truth.
* **stars**: ``drawImage(method='auto')`` at scale 1 on ``SIZE x SIZE``
  stamps, sub-pixel offsets uniform in [-0.5, 0.5], fluxes log-uniform in
  [2e3, 2e5], zero sky, noise ``sqrt(100 + true)`` (sky noise 10 plus
  Poisson at gain 1); the sigma maps are exact and given to every method.

API::

    FAMILIES                                  name -> spec dict
    profile(name) -> galsim.GSObject          centred, flux 1, native px
    fwhm(name) -> float                       measured FWHM, native px (no pixel)
    draw_truth(name, n_fine, offset=(0, 0), kind="subpixel"|"epsf"|"to_epsf")
    make_stars(name, n, seed) -> dict(data, sigma, xy, flux, sky, truth, k, fwhm, size, name, cr, nb)
    psf_error(est, truth, fwhm_px, k, truth_fn=None) -> dict(rms, max, shift, moved)
    shape_errors(est, truth) -> (size_err, ell_err)
    scatter(centers, fluxes, xy, flux, good=None) -> (pos_rms_px, flux_rms)
    score_candidates(est | {kind: est}, name, n_fine=None, kinds=(...), pick=min|max) -> dict(rms, max, kind, size, ell)
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import galsim
import numpy as np
from scipy import ndimage, optimize

SIZE = 25
CACHE = Path(__file__).resolve().parent / ".cache"
_CACHE_VERSION = 2

#: name -> spec.  ``kind`` picks the builder; ``fwhm`` the target FWHM in native px (None: as is);
#: ``k`` the oversampling the PSF is fitted at.
FAMILIES: dict[str, dict] = {
    "moffat": dict(kind="moffat", fwhm=1.6, beta=2.5, shear=(0.04, -0.02), k=4,
                   note="elliptical Moffat (today's case)"),
    "kolmo_optics": dict(kind="kolmo_optics", fwhm=3.9, k=1, seeing_fwhm=3.3, lam_over_diam=1.2,
                         aberrations=dict(defocus=0.15, astig1=0.10, astig2=-0.05, coma1=0.06, coma2=0.04),
                         note="Kolmogorov x OpticalPSF (defocus, astigmatism, coma)"),
    "strut6": dict(kind="optical", fwhm=1.6, k=2, obscuration=0.3, nstruts=6, strut_thick=0.05, strut_angle=15.0,
                   aberrations=dict(defocus=0.04, astig1=0.03, astig2=-0.02, coma1=0.02, coma2=-0.015),
                   note="obscured pupil, 6 struts, small aberrations"),
    "strut4_aberr": dict(kind="optical", fwhm=2.5, k=2, obscuration=0.25, nstruts=4, strut_thick=0.05,
                         strut_angle=30.0,
                         aberrations=dict(coma1=0.12, coma2=-0.06, astig1=0.10, astig2=0.05, trefoil1=0.08,
                                          trefoil2=-0.04),
                         note="obscured pupil, 4 struts, coma + astigmatism + trefoil"),
    "roman": dict(kind="roman", fwhm=None, k=3, band="F184", sca=7, pupil_bin=4,
                  note="galsim.roman.getPSF, F184 at its effective wavelength, SCA 7, 0.11\" pixels"),
    "airy_halo": dict(kind="airy_halo", fwhm=2.0, k=2, core_frac=0.8, halo_beta=2.0, halo_fwhm_ratio=3.0,
                      note="80% Airy core + 20% Moffat(beta 2) halo, 3x the core FWHM"),
    "contaminated": dict(kind="contaminated", base="strut6", cr_frac=0.15, nb_frac=0.10,
                         note="strut6 + cosmic rays (15%) + faint neighbours (10%), no masks"),
}


def spec(name):
    s = dict(FAMILIES[name])
    if s["kind"] == "contaminated":
        base = dict(FAMILIES[s["base"]])
        base.update({key: v for key, v in s.items() if key not in ("kind",)})
        base["kind"] = FAMILIES[s["base"]]["kind"]
        base["contaminated"] = True
        return base
    s["contaminated"] = False
    return s


def _raw_profile(s):
    kind = s["kind"]
    if kind == "moffat":
        return galsim.Moffat(beta=s["beta"], fwhm=s["fwhm"]).shear(g1=s["shear"][0], g2=s["shear"][1])
    if kind == "optical":
        return galsim.OpticalPSF(lam_over_diam=1.0, obscuration=s["obscuration"], nstruts=s["nstruts"],
                                 strut_thick=s["strut_thick"], strut_angle=s["strut_angle"] * galsim.degrees,
                                 **s["aberrations"])
    if kind == "kolmo_optics":
        return galsim.Convolve(galsim.Kolmogorov(fwhm=s["seeing_fwhm"]),
                               galsim.OpticalPSF(lam_over_diam=s["lam_over_diam"], **s["aberrations"]))
    if kind == "airy_halo":
        core = galsim.Airy(lam_over_diam=1.0)
        halo = galsim.Moffat(beta=s["halo_beta"], fwhm=s["halo_fwhm_ratio"] * 1.028)
        return s["core_frac"] * core + (1 - s["core_frac"]) * halo
    if kind == "roman":
        import galsim.roman as roman

        lam = roman.getBandpasses()[s["band"]].effective_wavelength
        psf = roman.getPSF(s["sca"], s["band"], wavelength=lam, pupil_bin=s["pupil_bin"])
        return psf.dilate(1.0 / roman.pixel_scale)  # arcsec -> native pixels
    raise ValueError(kind)


def _fwhm_of(prof, over=16, half=SIZE / 2):
    n = int(2 * half * over)
    im = prof.drawImage(nx=n, ny=n, scale=1.0 / over, method="no_pixel").array
    return 2.0 * np.sqrt((im > im.max() / 2).sum() / over**2 / np.pi)


def _centroid_fine(img):
    n = img.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n] - c
    t = img.sum()
    return (img * xx).sum() / t, (img * yy).sum() / t


@functools.lru_cache(maxsize=None)
def profile(name):
    """The family's PSF (before the pixel): native px, flux 1, centroid over the stamp at the origin."""
    s = spec(name)
    prof = _raw_profile(s)
    if s["fwhm"] is not None and s["kind"] != "moffat":
        for _ in range(2):
            prof = prof.dilate(s["fwhm"] / _fwhm_of(prof))
    over = 8
    for _ in range(3):  # re-centre on the centroid inside the stamp
        img = prof.drawImage(nx=SIZE * over, ny=SIZE * over, scale=1.0 / over, method="no_pixel").array
        cx, cy = _centroid_fine(img)
        if np.hypot(cx, cy) < 1e-4 * over:
            break
        prof = prof.shift(-cx / over, -cy / over)
    return prof


@functools.lru_cache(maxsize=None)
def fwhm(name):
    """Measured FWHM (native px) of the profile before the pixel."""
    return float(_fwhm_of(profile(name)))


def fwhm_pixelated(name):
    """FWHM (native px) of the profile convolved with the native pixel (what the stars show)."""
    return float(_fwhm_of(galsim.Convolve(profile(name), galsim.Pixel(1.0))))


def draw_truth(name, n_fine, offset=(0.0, 0.0), kind="subpixel", k=None):
    """The truth on an ``n_fine`` grid at step ``1/k``, centre at the grid's true centre + ``offset`` (fine px, x, y).

    ``kind``: ``subpixel`` (gsprep: sub-pixel flux, sum 1), ``epsf`` (PSF x native pixel sampled at 1/k,
    sum ~k**2), ``to_epsf`` (``to_epsf_convention`` of the subpixel truth).
    """
    k = spec(name)["k"] if k is None else k
    prof = profile(name)
    if kind == "subpixel" or kind == "to_epsf":
        img = prof.drawImage(nx=n_fine, ny=n_fine, scale=1.0 / k, method="auto", offset=offset).array.astype(float)
        img /= img.sum()
        if kind == "to_epsf":
            img = _to_epsf(img, k)
        return img
    if kind == "epsf":
        img = galsim.Convolve(prof, galsim.Pixel(1.0)).drawImage(nx=n_fine, ny=n_fine, scale=1.0 / k,
                                                                 method="no_pixel", offset=offset)
        return img.array.astype(float)  # values: pixel-integrated PSF (flux per native px)
    raise ValueError(kind)


def _to_epsf(p, k):
    try:
        from gsprep.psf import to_epsf_convention
    except ImportError:
        from gsprep.epsf import to_epsf_convention
    return to_epsf_convention(p, k)


def _cache_key(name, n, seed):
    blob = json.dumps(dict(v=_CACHE_VERSION, spec=spec(name), n=n, seed=seed, size=SIZE, galsim=galsim.__version__),
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def make_stars(name, n, seed, cache=True, noise=True):
    """``n`` noisy star stamps of family ``name``.

    Returns dict(data, sigma (n, SIZE, SIZE), xy (n, 2) true centres (x, y) 0-based, flux (n,), sky (n,) zeros,
    truth (k*SIZE, k*SIZE) gsprep convention, k, fwhm (native px), size, name, cr / nb (indices of stars with a
    cosmic ray / a neighbour; empty unless contaminated)).  ``noise=False``: the same stars without noise
    (the sigma maps unchanged), for harness checks.
    """
    s = spec(name)
    k = s["k"]
    path = CACHE / f"{name}_{n}_{seed}{'' if noise else '_nonoise'}_{_cache_key(name, n, seed)}.npz"
    if cache and path.exists():
        z = np.load(path)
        out = {key: z[key] for key in z.files}
        out.update(k=k, fwhm=fwhm(name), size=SIZE, name=name)
        return out
    rng = np.random.default_rng(seed)
    prof = profile(name)
    c = (SIZE - 1) / 2.0
    off = rng.uniform(-0.5, 0.5, (n, 2))
    flux = np.exp(rng.uniform(np.log(2e3), np.log(2e5), n))
    true = np.empty((n, SIZE, SIZE))
    for i in range(n):
        true[i] = prof.drawImage(nx=SIZE, ny=SIZE, scale=1.0, method="auto", offset=tuple(off[i])).array * flux[i]
    extra = np.zeros_like(true)
    cr = nb = np.zeros(0, int)
    if s["contaminated"]:
        idx = rng.permutation(n)
        n_cr, n_nb = int(round(s["cr_frac"] * n)), int(round(s["nb_frac"] * n))
        cr, nb = np.sort(idx[:n_cr]), np.sort(idx[n_cr:n_cr + n_nb])
        for i in nb:  # a faint neighbour 5-10 px away, 2-10% of the flux (adds Poisson noise, in the sigma map)
            ang, r = rng.uniform(0, 2 * np.pi), rng.uniform(5, 10)
            f = rng.uniform(0.02, 0.10) * flux[i]
            o = (off[i, 0] + r * np.cos(ang), off[i, 1] + r * np.sin(ang))
            true[i] += prof.drawImage(nx=SIZE, ny=SIZE, scale=1.0, method="auto", offset=o).array * f
        for i in cr:  # 1-3 adjacent hot pixels within 4 px of the star, 300-3000 counts each (noiseless)
            x0, y0 = np.clip(np.round(c + off[i] + rng.integers(-4, 5, 2)).astype(int), 0, SIZE - 1)
            for _ in range(rng.integers(1, 4)):
                extra[i, y0, x0] += rng.uniform(300, 3000)
                dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][rng.integers(4)]
                x0, y0 = int(np.clip(x0 + dx, 0, SIZE - 1)), int(np.clip(y0 + dy, 0, SIZE - 1))
    sigma = np.sqrt(100.0 + np.clip(true, 0, None))
    data = true + rng.normal(0.0, 1.0, true.shape) * sigma * float(noise) + extra
    kk = k * SIZE
    out = dict(data=data, sigma=sigma, xy=c + off, flux=flux, sky=np.zeros(n), truth=draw_truth(name, kk),
               cr=cr, nb=nb)
    if cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    out.update(k=k, fwhm=fwhm(name), size=SIZE, name=name)
    return out


# ---------------------------------------------------------------------------------------------- scoring


def _disk(n, radius):
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    return np.hypot(xx - c, yy - c) <= radius


def psf_error(est, truth, fwhm_px, k, truth_fn=None, refine=30):
    """rms and max of (est - truth) / truth.max() within 3 FWHM of the centre (fine px), after alignment.

    ``est`` is moved by the sub-pixel shift (cubic spline, fine px) that minimises the rms, and normalised to
    the truth's sum inside the radius.  With ``truth_fn(dx, dy)`` (the truth drawn exactly with its centre
    moved by (dx, dy) fine px) the final error compares the *unmoved* estimate with the exactly moved truth,
    so no interpolation touches either image; the shift is then polished on the exact truth (at most
    ``refine`` truth draws, 0 = off).  Returns dict(rms, max, shift (dy, dx), moved, truth).
    """
    est = np.asarray(est, float)
    truth = np.asarray(truth, float)
    if est.shape != truth.shape:
        raise ValueError(f"shapes differ: {est.shape} vs {truth.shape}")
    inside = _disk(truth.shape[0], 3.0 * fwhm_px * k)
    tsum = truth[inside].sum()

    def moved_of(sh):
        m = ndimage.shift(est, sh, order=3, mode="constant")
        return m / m[inside].sum() * tsum

    def rms(sh):
        return np.sqrt(np.mean((moved_of(sh) - truth)[inside] ** 2))

    # start from the centroid difference, then polish
    ce, ct = _centroid_fine(np.where(inside, est, 0)), _centroid_fine(np.where(inside, truth, 0))
    x0 = np.array([ct[1] - ce[1], ct[0] - ce[0]])
    x0 = x0 if rms(x0) < rms(np.zeros(2)) else np.zeros(2)
    simplex = np.array([x0, x0 + [0.3, 0.0], x0 + [0.0, 0.3]])
    best = optimize.minimize(rms, x0, method="Nelder-Mead",
                             options=dict(xatol=1e-4, fatol=1e-14, initial_simplex=simplex, maxiter=400))
    sh = best.x
    if truth_fn is not None:
        def exact(sh):
            t2 = np.asarray(truth_fn(-sh[1], -sh[0]), float)  # the truth moved by -shift (x, y)
            e2 = est / est[inside].sum() * t2[inside].sum()
            return (e2 - t2)[inside] / t2.max(), e2, t2

        if refine:  # polish the shift on the exactly drawn truth (a few dozen draws)
            simplex = np.array([sh, sh + [0.03, 0.0], sh + [0.0, 0.03]])
            sh = optimize.minimize(lambda q: np.sqrt(np.mean(exact(q)[0] ** 2)), sh, method="Nelder-Mead",
                                   options=dict(xatol=1e-4, fatol=1e-14, initial_simplex=simplex,
                                                maxfev=refine)).x
        err, moved, truth_used = exact(sh)
    else:
        moved, truth_used = moved_of(sh), truth
        err = (moved - truth)[inside] / truth.max()
    return dict(rms=float(np.sqrt(np.mean(err**2))), max=float(np.abs(err).max()), shift=sh, moved=moved,
                truth=truth_used)


def _windowed_moments(img, sig):
    n = img.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n] - c
    w = np.exp(-(xx**2 + yy**2) / (2 * sig**2)) * img
    t = w.sum()
    ixx, iyy, ixy = (w * xx * xx).sum() / t, (w * yy * yy).sum() / t, (w * xx * yy).sum() / t
    return np.sqrt((ixx + iyy) / 2), (ixx - iyy) / (ixx + iyy), 2 * ixy / (ixx + iyy)


def moments(img, guess_sig=2.0):
    """(size sigma in grid px, e1, e2): GalSim HSM adaptive moments (distortion); windowed moments if HSM fails."""
    try:
        m = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(img, dtype=np.float64)),
                                       guess_sig=guess_sig, strict=True)
        return m.moments_sigma, m.observed_shape.e1, m.observed_shape.e2
    except (galsim.GalSimError, RuntimeError):
        return _windowed_moments(img, 2 * guess_sig)


def shape_errors(est, truth, guess_sig=2.0):
    """(signed relative size error, |delta e|) between est and truth, both on the same grid/convention."""
    s0, a0, b0 = moments(truth, guess_sig)
    s1, a1, b1 = moments(est, guess_sig)
    return float(s1 / s0 - 1.0), float(np.hypot(a1 - a0, b1 - b0))


def scatter(centers, fluxes, xy, flux, good=None):
    """(rms position error in px after removing the mean offset, std of flux/true flux)."""
    centers, fluxes = np.asarray(centers, float), np.asarray(fluxes, float)
    good = np.ones(len(xy), bool) if good is None else np.asarray(good, bool)
    d = (centers - xy)[good]
    d = d - d.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1)))), float(np.std((fluxes / flux)[good]))


def score_candidates(est, name, n_fine=None, kinds=("subpixel",), k=None, pick=min, refine=30):
    """Score an estimate against each truth convention in ``kinds`` and keep one.

    ``est``: one array (an ``n_fine`` grid at step 1/k, compared with every kind) or a dict kind -> array (the
    estimate converted to each kind's convention, e.g. gsprep's PSF and its ``to_epsf_convention``).
    ``pick=min`` keeps the most favourable kind (reference methods), ``pick=max`` the least (gsprep).
    Returns dict(rms, max, kind, size (signed relative), ell (|delta e|), by_kind={kind: rms}).
    """
    s = spec(name)
    k = s["k"] if k is None else k
    ests = est if isinstance(est, dict) else {kind: est for kind in kinds}
    kinds = tuple(ests)
    fw = fwhm(name)
    res = {}

    def one(kind, ref):
        e = np.asarray(ests[kind], float)
        n = e.shape[0] if n_fine is None else n_fine
        return psf_error(e, draw_truth(name, n, kind=kind, k=k), fw, k,
                         truth_fn=functools.partial(_truth_at, name, n, kind, k), refine=ref)

    for kind in kinds:
        res[kind] = one(kind, 0 if len(kinds) > 1 else refine)
    kind = pick(res, key=lambda q: res[q]["rms"])
    if len(kinds) > 1 and refine:  # polish the shift for the chosen convention only
        res[kind] = one(kind, refine)
    r = res[kind]
    size, ell = shape_errors(r["moved"], r["truth"], guess_sig=fw * k / 2.355)
    return dict(rms=r["rms"], max=r["max"], kind=kind, size=size, ell=ell,
                by_kind={q: res[q]["rms"] for q in res})


def _truth_at(name, n_fine, kind, k, dx, dy):
    return draw_truth(name, n_fine, offset=(dx, dy), kind=kind, k=k)


def describe():
    """One line per family: spec note, k, measured FWHM (without and with the native pixel)."""
    lines = []
    for name in FAMILIES:
        s = spec(name)
        lines.append(f"{name:<13} k={s['k']}  FWHM {fwhm(name):.2f} px (x pixel: {fwhm_pixelated(name):.2f} px)  "
                     f"{s['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())

"""Held-out stars on REAL frames: gsprep.fit_epsf (degree 0 and "auto") vs photutils EPSFBuilder and PSFEx.

Every other PSF number in benchmarks/ comes from simulated frames; this one
uses the real frames that ship with astropy / astroquery in the venv
(``/work/shared/data/README.md``): M13 (DSS), the DSS 14.29-62.41 field,
EY UMa (CCD, undersampled), UKIDSS K (Orion), NGC 1316 (comp.fits HDU 1)
and 47 Tuc (HST/ACS cutout).

Per frame, exactly as ``gsprep prepare`` does it (``gsprep.pipeline``):
``band_frame_sky`` (source mask + poly sky of order ``sky_order`` = 3) and
``band_frame_stars`` (sigma image ``frame_sigma``, ``find_stars`` /
``select_stars`` with the default ``StarCriteria`` / ``extract_stamps`` with
25-px stamps and the segmentation mask), all with ``PrepareConfig``'s
defaults; the frames are read as counts (``unit="counts"``), the gain from
the header (1 when there is none: gsprep warns).  The only per-frame input
is the FWHM guess (``BandSpec.fwhm``, used for the detection smoothing and
the sky mask), listed in ``FRAMES``.  A frame with fewer than ``MIN_STARS``
stamps is dropped and the reason printed.  ``--relaxed`` adds, for the
dropped frames, a run with ``star_npixels=5`` (the setting of
``tests/test_psf.py`` for EY UMa), labelled as such.

The SAME stamps go to every method.  Folds: 5 (a fixed permutation) or
leave-one-out when fewer than 15 stars.  Per fold, from the training stars:

* ``g0``: ``fit_epsf(train, oversampling=k)`` (defaults: degree 0);
* ``gA``: ``fit_epsf(train, oversampling=k, degree="auto")`` (the ``Stamps``
  carry the frame origins); each held-out star gets ``psf_at`` its own frame
  position;
* ``EPSFB``: photutils ``EPSFBuilder`` through ``gsprep.psf.photutils_epsf_raw``
  (photutils defaults, the sigma maps as weights, the masks applied; as
  ``bench_epsf.py``);
* ``PSFEx d0`` / ``d1`` / ``d2``: Source Extractor run ONCE on the whole
  sky-subtracted frame (``BACK_TYPE MANUAL 0``, ``MAP_RMS`` = gsprep's sigma
  image, gain 1, thresh 5, ``VIGNET(25,25)``), its catalogue cut to the rows
  matching the training stars (<= 1.5 px), then PSFEx 3.21 (``PSF_SAMPLING
  1/k``, ``PSF_SIZE`` k*25 made odd, ``CENTER_KEYS XWIN_IMAGE,YWIN_IMAGE``,
  ``PSFVAR_KEYS X_IMAGE,Y_IMAGE``, its own star selection as in ``_psfex.py``:
  FWHM 0.5-30 px, S/N >= 20, ellipticity <= 0.3) with ``PSFVAR_DEGREES`` d;
  d = 1 needs >= 9 matched training stars, d = 2 >= 18 (3 stars per
  polynomial term; gsprep's own rule is 6).  ``PSF_MASK`` is evaluated at
  the held-out star's position (x-fastest monomials, 1-based, as checked in
  ``bench_spatial.py``).

k is what the pipeline uses: ``PrepareConfig.oversampling`` = 2 on every
frame (the pipeline does not pick k from the FWHM).  ``--k1`` adds k = 1
rows for the undersampled frame (EY UMa) when it is in the run.

Scorer (ONE fitter for every method): ``gsprep.psf.fit_stars(psf, stamp,
sigma, mask, oversampling=k)``: centre, flux and sky free, the PSF fixed, one
held-out star at a time.  PSFEx's and EPSFBuilder's ePSF-convention arrays
(pixel-integrated PSF sampled at 1/k) are put on gsprep's grid (cubic
spline) and converted to sub-pixel fluxes by ``from_epsf_convention`` (as
``fit_epsf(method="photutils")`` does); the round-trip error
``|to_epsf(from_epsf(e)) - e|`` is printed.  Scores per held-out star:

* core chi2: sum of ((data - model) / sigma)^2 over the unmasked pixels
  within 2 FWHM of the fitted centre, / (N - 4); FWHM = the frame's
  gsprep degree-0 fit on all its stars (one disc for every method);
* stamp chi2: the same over the whole stamp;
* RFF: sum |data - model| within 2 FWHM / fitted flux (its noise floor,
  sqrt(2/pi) sum sigma / flux, is given too).

Cross-check (``--xcheck``, default on): an independent scorer that uses no
gsprep code: every PSF in the ePSF convention (gsprep's through
``to_epsf_convention``, EPSFBuilder's and PSFEx's raw arrays, untouched),
the model ``F * E(k (x - xc)) + b`` by scipy cubic-spline interpolation and
``scipy.optimize.least_squares`` for (xc, yc, F, b) from the catalogue
position.

    nice -n 5 python benchmarks/bench_real_psf.py --save [--relaxed] [--k1] [--frames m13 ngc1316 ...]

gsprep is imported from ``PYTHONPATH`` when set (e.g. a ``git archive`` of one
commit with a ``COMMIT`` file), else from this checkout; the header says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # PYTHONPATH (a snapshot of gsprep at one commit) wins
sys.path.insert(0, str(HERE))

from _psfex import _sex_config, available

import gsprep
from gsprep.config import BandSpec, PrepareConfig
from gsprep.pipeline import _band_inputs, band_frame_sky, band_frame_stars
from gsprep.psf import fit_stars, photutils_epsf_raw, to_epsf_convention
from gsprep.psf.model import _models_jit, from_epsf_convention

MIN_STARS = 10
SIZE = 25  # PrepareConfig.stamp_size


def _astropy_dir():
    import astropy

    return os.path.dirname(astropy.__file__)


def _astroquery_dir():
    import astroquery

    return os.path.dirname(astroquery.__file__)


# name: (path, hdu, FWHM guess px, note)
FRAMES = {
    "m13": (lambda: _astropy_dir() + "/io/fits/hdu/compressed/tests/data/m13.fits", 0, 3.0,
            "DSS, globular cluster, 300x300, crowded (FWHM guess 3 as tests/test_psf.py)"),
    "dss": (lambda: _astropy_dir() + "/wcs/tests/data/dss.14.29.56-62.41.05.fits.gz", 0, 2.5,
            "DSS 14.29-62.41 dense field, 100x100"),
    "eyuma": (lambda: _astroquery_dir() + "/astrometry_net/tests/data/thumbnail-image.fit.gz", 0, 2.0,
              "EY UMa CCD thumbnail, 256x256, undersampled (FWHM ~0.5-1 px; guess 2 as tests/test_psf.py)"),
    "ukidss": (lambda: _astroquery_dir() + "/ukidss/tests/data/image.fits", 1, 3.8,
               "UKIDSS K, Orion, 300x300 (FWHM guess = header SEEING 3.8 px)"),
    "ngc1316": (lambda: _astropy_dir() + "/io/fits/tests/data/comp.fits", 1, 2.0,
                "NGC 1316 (comp.fits HDU 1), 440x300, galaxy + field stars, 7\"/px"),
    "47tuc": (lambda: _astropy_dir() + "/wcs/tests/data/dist_lookup.fits.gz", 1, 2.0,
              "47 Tuc HST/ACS cutout, 100x100"),
}


# --------------------------------------------------------------------------- frame -> stamps (the pipeline's way)

def frame_stamps(name, **cfg_kw):
    path, hdu, fwhm, _ = FRAMES[name]
    path = path()
    with warnings.catch_warnings(record=True) as wl:
        warnings.simplefilter("always")
        img = gsprep.read_image(path, hdu, unit="counts")
        spec = BandSpec(file=path, fwhm=fwhm, hdu=hdu, unit="counts")
        cfg = PrepareConfig(name=name, ra=None, dec=None, r=10.0, bands={"b": spec}, **cfg_kw)
        exptime, gain = _band_inputs(img, spec, "b")
        sky = band_frame_sky(img, cfg, spec, band="b")
        try:
            stars, stamps = band_frame_stars(img, cfg, spec, sky, exptime=exptime, gain=gain)
        except Exception as exc:  # noqa: BLE001 - NoStarsError and kin: reported as the reason to drop
            stars, stamps, err = None, None, f"{type(exc).__name__}: {exc}"
        else:
            err = None
    msgs = sorted({str(w.message).replace(path, name)[:160] for w in wl})
    clean = img.data - sky.background
    from gsprep.pipeline import _sigma_full

    sigma = _sigma_full(clean, sky, spec, exptime, gain, None)
    return {"name": name, "img": img, "clean": clean, "sigma": sigma, "sky": sky, "gain": gain, "stars": stars, "stamps": stamps,
                "err": err, "msgs": msgs, "cfg": cfg}


def subset(st, idx):
    idx = np.asarray(idx)
    return dataclasses.replace(st, data=st.data[idx], sigma=st.sigma[idx], mask=st.mask[idx],
                               positions=st.positions[idx], ids=st.ids[idx], origins=st.origins[idx])


def folds_of(n, seed=0):
    if n < 15:
        return [np.array([i]) for i in range(n)]
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, 5)]


# --------------------------------------------------------------------------- PSF builders

def quiet(fn, *a, **kw):
    with warnings.catch_warnings(record=True) as wl:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        dt = time.perf_counter() - t0
    return out, dt, sorted({type(w.message).__name__ + ": " + str(w.message)[:140] for w in wl})


def epsf_to_gsprep_grid(e, centre, k, step=None):
    """An ePSF-convention array (samples at ``step`` native px, default 1/k; the star centre at fine
    coordinate ``centre``) -> (on gsprep's k*SIZE grid in the ePSF convention, sum k^2), gsprep sub-pixel fluxes."""
    from scipy import ndimage

    step = 1.0 / k if step is None else step
    kk = k * SIZE
    off = (np.arange(kk) - (kk - 1) / 2.0) / k / step
    yy, xx = np.meshgrid(centre + off, centre + off, indexing="ij")
    on = ndimage.map_coordinates(np.asarray(e, float), [yy, xx], order=3, mode="constant")
    on = on * k * k / on.sum()
    return on, from_epsf_convention(on, k)


class PSFExFrame:
    """Source Extractor once on the frame; PSFEx per fold on the rows matched to the training stars."""

    def __init__(self, clean, sigma, star_xy, k, workdir):
        from astropy.io import fits

        self.k, self.work = k, Path(workdir)
        tools = available()
        if tools is None:
            raise RuntimeError("psfex / source-extractor not installed")
        self.tools = tools
        good = np.isfinite(sigma) & (sigma > 0) & np.isfinite(clean)
        rms = np.where(good, sigma, 1e30)
        fits.writeto(self.work / "image.fits", np.where(good, clean, 0.0).astype(np.float32), overwrite=True)
        fits.writeto(self.work / "rms.fits", rms.astype(np.float32), overwrite=True)
        _sex_config(self.work, SIZE, 15, CATALOG_NAME="all.cat", SEEING_FWHM="3.0")
        t0 = time.perf_counter()
        subprocess.run([tools["sex"], "image.fits", "-c", "stars.sex"], cwd=self.work, check=True,
                       capture_output=True, text=True)
        self.t_sex = time.perf_counter() - t0
        with fits.open(self.work / "all.cat") as hd:
            cat = hd[2].data
            cx, cy = np.asarray(cat["X_IMAGE"], float) - 1.0, np.asarray(cat["Y_IMAGE"], float) - 1.0
        self.n_det = len(cx)
        # each gsprep star -> its nearest detection within 1.5 px (or -1)
        self.match = np.full(len(star_xy), -1)
        if len(cx):
            d = np.hypot(star_xy[:, :1] - cx[None, :], star_xy[:, 1:] - cy[None, :])
            j = np.argmin(d, axis=1)
            self.match = np.where(d[np.arange(len(star_xy)), j] <= 1.5, j, -1)

    def build(self, train_idx, degree):
        """PSFEx's result for the training stars: dict(mask, hdr, time, n_in, n_loaded, n_accepted) or None."""
        from astropy.io import fits

        rows = self.match[np.asarray(train_idx)]
        rows = rows[rows >= 0]
        with fits.open(self.work / "all.cat") as hd:
            hd[2].data = hd[2].data[np.sort(rows)]
            hd.writeto(self.work / "stars.cat", overwrite=True)
        k = self.k
        psf_size = k * SIZE + (1 - (k * SIZE) % 2)
        cfg = {
            "BASIS_TYPE": "PIXEL_AUTO", "BASIS_NUMBER": "20", "PSF_SAMPLING": f"{1.0 / k:.6f}", "PSF_ACCURACY": "0.01",
            "PSF_SIZE": f"{psf_size},{psf_size}", "PSF_RECENTER": "N", "CENTER_KEYS": "XWIN_IMAGE,YWIN_IMAGE",
            "PHOTFLUX_KEY": "FLUX_AUTO", "PHOTFLUXERR_KEY": "FLUXERR_AUTO",
            "PSFVAR_KEYS": "X_IMAGE,Y_IMAGE", "PSFVAR_GROUPS": "1,1", "PSFVAR_DEGREES": str(degree),
            "PSFVAR_NSNAP": "9", "SAMPLE_AUTOSELECT": "Y", "SAMPLEVAR_TYPE": "NONE", "SAMPLE_FWHMRANGE": "0.5,30.0",
            "SAMPLE_VARIABILITY": "0.2", "SAMPLE_MINSN": "20", "SAMPLE_MAXELLIP": "0.3", "SAMPLE_FLAGMASK": "0x00fe",
            "CHECKPLOT_TYPE": "NONE", "CHECKIMAGE_TYPE": "NONE", "PSF_DIR": ".", "PSF_SUFFIX": ".psf",
            "VERBOSE_TYPE": "QUIET", "WRITE_XML": "N", "NTHREADS": "1",
        }
        (self.work / "stars.psfex").write_text("".join(f"{a} {b}\n" for a, b in cfg.items()))
        (self.work / "stars.psf").unlink(missing_ok=True)
        t0 = time.perf_counter()
        r = subprocess.run([self.tools["psfex"], "stars.cat", "-c", "stars.psfex"], cwd=self.work,
                           capture_output=True, text=True, check=False)
        dt = time.perf_counter() - t0
        if r.returncode != 0 or not (self.work / "stars.psf").exists():
            return {"error": f"psfex rc {r.returncode}: {r.stderr.strip()[-200:]}", "time": dt, "n_in": len(rows)}
        with fits.open(self.work / "stars.psf") as hd:
            hdr = dict(hd[1].header)
            mask = np.asarray(hd[1].data["PSF_MASK"][0], float)
        return {"mask": mask, "hdr": hdr, "time": dt, "n_in": len(rows), "n_loaded": int(hdr.get("LOADED", -1)),
                    "n_accepted": int(hdr.get("ACCEPTED", -1))}


def _monomials_xfast(u, v, d):
    """PSFEx's order: x^i y^j, i + j <= d, x's power fastest (1, x, x2, y, xy, y2)."""
    return np.array([u ** i * v ** j for j in range(d + 1) for i in range(d + 1 - j)])


def psfex_at(px, x, y):
    """PSFEx's ePSF-convention array at frame pixel (x, y), 0-based."""
    mask, hdr = px["mask"], px["hdr"]
    if mask.ndim == 2 or int(hdr.get("POLNAXIS", 0)) == 0:
        return mask.reshape(-1, *mask.shape[-2:])[0]
    d = int(hdr.get("POLDEG1", 0))
    u = (x + 1.0 - hdr["POLZERO1"]) / hdr["POLSCAL1"]
    v = (y + 1.0 - hdr["POLZERO2"]) / hdr["POLSCAL2"]
    c = _monomials_xfast(u, v, d)
    return np.tensordot(c, mask[: len(c)], axes=(0, 0))


# --------------------------------------------------------------------------- scorers

def _disc(size, xc, yc, r):
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(xx - xc, yy - yc) <= r


def score(model, data, sigma, mask, xc, yc, flux, r_core):
    ok = ~mask & np.isfinite(data) & np.isfinite(sigma) & (sigma > 0)
    core = ok & _disc(data.shape[-1], xc, yc, r_core)
    r = np.where(ok, (data - model) / np.where(ok, sigma, 1.0), 0.0)
    chi_core = float((r[core] ** 2).sum() / max(core.sum() - 4, 1))
    chi_stamp = float((r[ok] ** 2).sum() / max(ok.sum() - 4, 1))
    f = abs(float(flux)) if np.isfinite(flux) and flux != 0 else np.nan
    rff = float(np.abs((data - model)[core]).sum() / f)
    rff_floor = float(np.sqrt(2 / np.pi) * sigma[core].sum() / f)
    return chi_core, chi_stamp, rff, rff_floor


def gsprep_score(psf, st1, k, r_core):
    """One held-out star (a 1-star Stamps), the PSF fixed (gsprep convention): gsprep's fit_stars."""
    import jax.numpy as jnp

    psf = np.asarray(psf, float)
    psf = psf / psf.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c, f, b = fit_stars(psf, st1.data, st1.sigma, st1.mask, oversampling=k)
    psf_size = psf.shape[-1] // k
    m = np.asarray(_models_jit(jnp.asarray(psf, jnp.float32), jnp.asarray(c, jnp.float32),
                               jnp.asarray(f, jnp.float32), jnp.asarray(b, jnp.float32), SIZE, k, psf_size))[0]
    return score(m, st1.data[0], st1.sigma[0], st1.mask[0], c[0, 0], c[0, 1], r_core=r_core, flux=f[0])


def independent_score(e, centre, k, st1, r_core):
    """No gsprep code: ePSF-convention array ``e`` (star centre at fine coordinate ``centre``, step 1/k), the
    native-pixel model F * e(centre + k (x - xc)) + b by cubic splines, scipy least_squares for (xc, yc, F, b)."""
    from scipy import ndimage, optimize

    e = np.asarray(e, float)
    e = e * k * k / e.sum()
    coef = ndimage.spline_filter(e, order=3)
    d, s, msk = st1.data[0], st1.sigma[0], st1.mask[0]
    ok = ~msk & np.isfinite(d) & np.isfinite(s) & (s > 0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    yv, xv, dv, sv = yy[ok].astype(float), xx[ok].astype(float), d[ok], s[ok]

    def unit(xc, yc):
        return ndimage.map_coordinates(coef, [centre + k * (yv - yc), centre + k * (xv - xc)], order=3,
                                       mode="constant", prefilter=False)

    def resid(p):
        return (p[2] * unit(p[0], p[1]) + p[3] - dv) / sv

    x0, y0 = st1.positions[0]
    core0 = ok & _disc(SIZE, x0, y0, 3.0)
    p0 = [x0, y0, max(float(d[core0].sum()), 1.0), 0.0]
    sol = optimize.least_squares(resid, p0, method="lm", x_scale="jac")
    xc, yc, f, b = sol.x
    model = np.full(d.shape, b)
    model[ok] = f * unit(xc, yc) + b
    return score(model, d, s, msk, xc, yc, r_core=r_core, flux=f)


# --------------------------------------------------------------------------- one frame

METHODS = ("g0", "gA", "g0 rob=F", "EPSFB", "PSFEx d0", "PSFEx d1", "PSFEx d2")
HOME = {"g0": "scores", "gA": "scores", "g0 rob=F": "scores"}  # the others' home scorer: the independent one


def run_frame(fr, k, log, xcheck=True):
    st = fr["stamps"]
    n = len(st.ids)
    frame_xy = st.origins + st.positions  # frame pixel (x, y), 0-based
    # one core radius for every method: 2 x the FWHM of gsprep's degree-0 fit on all the frame's stars
    full, t_full, _ = quiet(gsprep.fit_epsf, st, oversampling=k)
    fwhm = float(full.fwhm)
    r_core = 2.0 * fwhm
    folds = folds_of(n)
    log(f"  {fr['name']} k={k}: {n} stars, {len(folds)} folds ({'leave-one-out' if n < 15 else '5-fold'}); "
        f"gsprep FWHM on all stars {fwhm:.2f} px (core radius {r_core:.2f} px); all-star fit {t_full:.1f} s")
    # self-consistency of the all-star fit: the chi2 it reports vs the chi2 of its own model
    # (psf_model_stamps(result): its PSF at its centres, fluxes and skies) on every unmasked pixel
    from gsprep.psf import psf_model_stamps

    mod = psf_model_stamps(full, SIZE)
    rec = np.array([score(mod[i], st.data[i], st.sigma[i], st.mask[i], *full.centers[i], float(full.fluxes[i]),
                          r_core)[1] for i in range(n)])
    aper = np.array([np.nansum(np.where(st.mask[i] | ~_disc(SIZE, *st.positions[i], r_core), 0.0, st.data[i]))
                     for i in range(n)])
    log(f"    all-star fit, self-consistency: reported chi2 median {np.nanmedian(full.chi2):.2f} (max "
        f"{np.nanmax(full.chi2):.2f}); chi2 of its own model on the unmasked pixels median {np.median(rec):.2f} "
        f"(max {rec.max():.3g}); stars with recomputed/reported > 3: {int((rec > 3 * full.chi2).sum())}/{n}; "
        f"fitted flux / aperture sum (2 FWHM) median {np.median(full.fluxes / aper):.2f}, max "
        f"{np.max(full.fluxes / aper):.2f}; flags {np.bincount(np.asarray(full.flags).ravel()).tolist()}")
    from gsprep.psf.spatial import max_degree

    log(f"    degree='auto' may try up to degree {max_degree(n - len(folds[0]))} with "
        f"{n - len(folds[0])} training stars (6 per polynomial term)")
    scores = {m: np.full((n, 4), np.nan) for m in METHODS}
    xscores = {m: np.full((n, 4), np.nan) for m in METHODS}
    times = {m: 0.0 for m in METHODS}
    auto_deg, notes, roundtrip = [], set(), []
    with tempfile.TemporaryDirectory(prefix="psfex_real_") as tmp:
        try:
            px = PSFExFrame(fr["clean"], fr["sigma"], frame_xy, k, tmp)
            log(f"    Source Extractor: {px.n_det} detections, {int((px.match >= 0).sum())}/{n} gsprep stars "
                f"matched within 1.5 px ({px.t_sex:.1f} s, counted in every PSFEx fold's time)")
        except Exception as exc:  # noqa: BLE001
            px = None
            log(f"    PSFEx unavailable: {exc!s:.200}")
        for fi, test in enumerate(folds):
            train = np.setdiff1d(np.arange(n), test)
            tr = subset(st, train)
            psfs = {}  # method -> callable(i) -> (gsprep-convention psf, (ePSF array, centre)) for held-out star i
            g0, dt, w = quiet(gsprep.fit_epsf, tr, oversampling=k)
            times["g0"] += dt
            notes.update("g0 " + x for x in w)
            psfs["g0"] = lambda i, g=g0: (g.psf, None)
            gA, dt, w = quiet(gsprep.fit_epsf, tr, oversampling=k, degree="auto")
            times["gA"] += dt
            notes.update("gA " + x for x in w)
            auto_deg.append(int(np.max(gA.degree)))
            psfs["gA"] = lambda i, g=gA: (g.psf_at(*frame_xy[i], warn=False), None)
            # diagnostic, not a default: the same fit without the robust pixel clipping
            gR, dt, w = quiet(gsprep.fit_epsf, tr, oversampling=k, robust=False)
            times["g0 rob=F"] += dt
            notes.update("g0 rob=F " + x for x in w)
            psfs["g0 rob=F"] = lambda i, g=gR: (g.psf, None)
            try:
                (e, _), dt, w = quiet(photutils_epsf_raw, tr.data, tr.sigma, tr.mask, oversampling=k)
                times["EPSFB"] += dt
                notes.update("EPSFB " + x for x in w)
                c = (e.shape[0] - 1) / 2.0  # photutils: the centre is the central sample
                on, g = epsf_to_gsprep_grid(e, c, k)
                roundtrip.append(("EPSFB", float(np.abs(to_epsf_convention(g, k) - on).max() / on.max())))
                psfs["EPSFB"] = lambda i, g=g, e=e, c=c: (g, (e, c))
            except Exception as exc:  # noqa: BLE001
                notes.add(f"EPSFB failed: {exc!s:.160}")
            if px is not None:
                n_match = int((px.match[train] >= 0).sum())
                for d, need in ((0, 1), (1, 9), (2, 18)):
                    name = f"PSFEx d{d}"
                    if n_match < need:
                        continue
                    out = px.build(train, d)
                    times[name] += out["time"] + px.t_sex
                    if "error" in out:
                        notes.add(f"{name} fold {fi}: {out['error']}")
                        continue
                    notes.add(f"{name}: accepted {out['n_accepted']}/{out['n_loaded']} loaded of {out['n_in']} "
                              f"matched training stars (fold {fi})" if fi == 0 else "")

                    def get(i, out=out):
                        e = psfex_at(out, *frame_xy[i])
                        c = e.shape[0] // 2
                        _on, g = epsf_to_gsprep_grid(e, c, k)
                        return g, (e, c)

                    psfs[name] = get
                    e0 = psfex_at(out, *frame_xy[test[0]])
                    on, g = epsf_to_gsprep_grid(e0, e0.shape[0] // 2, k)
                    roundtrip.append((name, float(np.abs(to_epsf_convention(g, k) - on).max() / on.max())))
            for i in test:
                st1 = subset(st, [i])
                for m, get in psfs.items():
                    g, raw = get(i)
                    scores[m][i] = gsprep_score(g, st1, k, r_core)
                    if xcheck:
                        if raw is None:  # gsprep: to the ePSF convention exactly
                            g = np.asarray(g, float) / np.sum(g)
                            raw = (to_epsf_convention(g, k), (g.shape[0] - 1) / 2.0)
                        xscores[m][i] = independent_score(raw[0], raw[1], k, st1, r_core)
    notes.discard("")
    return {"name": fr["name"], "k": k, "n": n, "nfold": len(folds), "fwhm": fwhm, "scores": scores, "xscores": xscores,
                "times": times, "auto": auto_deg, "notes": sorted(notes), "roundtrip": roundtrip}


# --------------------------------------------------------------------------- report

def _med(a):
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else np.nan


def _f(v, fmt="{:.3f}"):
    return "n/a" if not np.isfinite(v) else fmt.format(v)


def table(rows, key="scores", title=""):
    out = [title,
           ("| frame | k | n | folds | method | med core chi2 | med stamp chi2 | med RFF | RFF noise floor "
           "| g0 better (core) | gA better (core) | g0 better (stamp) | gA better (stamp) | build time s |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sc = r[key]
        for m in METHODS:
            a = sc[m]
            if not np.isfinite(a[:, 0]).any():
                continue
            cells = []
            for g in ("g0", "gA"):
                for col in (0,):
                    both = np.isfinite(sc[g][:, col]) & np.isfinite(a[:, col])
                    cells.append(f"{(sc[g][both, col] < a[both, col]).mean():.2f} ({both.sum()})"
                                 if m != g and both.any() else "-")
            cells2 = []
            for g in ("g0", "gA"):
                both = np.isfinite(sc[g][:, 1]) & np.isfinite(a[:, 1])
                cells2.append(f"{(sc[g][both, 1] < a[both, 1]).mean():.2f}" if m != g and both.any() else "-")
            out.append(f"| {r['name']} | {r['k']} | {r['n']} | {r['nfold']} | {m} | {_f(_med(a[:, 0]))} | "
                       f"{_f(_med(a[:, 1]))} | {_f(_med(a[:, 2]), '{:.4f}')} | {_f(_med(a[:, 3]), '{:.4f}')} | "
                       f"{cells[0]} | {cells[1]} | {cells2[0]} | {cells2[1]} | {r['times'][m]:.1f} |")
    return out


def ranking(r, key):
    meds = {m: _med(r[key][m][:, 0]) for m in METHODS if np.isfinite(r[key][m][:, 0]).any()}
    return [m for m, _ in sorted(meds.items(), key=lambda kv: kv[1])]


def with_home(r):
    """Each method scored by the scorer with its own interpolation: gsprep's PSFs by fit_stars (its band-limited
    shift), EPSFBuilder's and PSFEx's raw ePSF arrays by the independent spline scorer (no conversion)."""
    r = dict(r)
    r["home"] = {m: r[HOME.get(m, "xscores")][m] for m in METHODS}
    return r


def _source_commit():
    root = Path(gsprep.__file__).resolve().parent.parent
    stamp = root / "COMMIT"
    if stamp.exists():
        return "snapshot of " + stamp.read_text().strip()
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "gsprep"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"checkout {head}" + (" + uncommitted changes in gsprep/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", nargs="+", default=list(FRAMES), choices=list(FRAMES))
    ap.add_argument("--relaxed", action="store_true",
                    help="for frames dropped at the defaults, also try star_npixels=5 (labelled)")
    ap.add_argument("--k1", action="store_true", help="k = 1 rows too for the undersampled frame (eyuma)")
    ap.add_argument("--no-xcheck", action="store_true")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results_real_psf.txt")
    args = ap.parse_args()
    log_lines = []

    def log(s=""):
        print(s, flush=True)
        log_lines.append(s)

    import jax
    import photutils

    t_start = time.perf_counter()
    log("$ python benchmarks/bench_real_psf.py " + " ".join(sys.argv[1:]))
    px = available()
    vers = []
    if px:
        for tool in ("psfex", "sex"):
            v = subprocess.run([px[tool], "-v"], capture_output=True, text=True, check=False).stdout.strip().splitlines()
            vers.append(v[0] if v else tool)
    log(f"gsprep {gsprep.__version__} from {Path(gsprep.__file__).resolve().parent} ({_source_commit()}); "
        f"jax {jax.__version__}, photutils {photutils.__version__}, numpy {np.__version__}; "
        + ("; ".join(vers) if vers else "PSFEx n/a") + f"; {platform.machine()}, {os.cpu_count()} CPUs")
    log(f"Started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    log()
    rows, used = [], []
    log("Frames (PrepareConfig defaults: sky_order 3, star_nsigma 5, star_npixels 10, stamp 25, "
        "StarCriteria(size=25), oversampling 2):")
    for name in args.frames:
        variants = [("defaults", {})]
        fr = frame_stamps(name)
        n = 0 if fr["stamps"] is None else len(fr["stamps"].ids)
        funnel = dict(fr["stars"].meta.get("funnel", {})) if fr["stars"] is not None else None
        log(f"  {name}: {FRAMES[name][3]}; FWHM guess {FRAMES[name][2]}; gain {fr['gain']}; sky rms "
            f"{fr['sky'].rms:.3g}; {n} stamps" + (f"; funnel {funnel}" if funnel else "")
            + (f"; {fr['err']}" if fr["err"] else ""))
        for m in fr["msgs"]:
            log(f"      warning: {m}")
        if n >= MIN_STARS:
            used.append((fr, "defaults"))
            continue
        log(f"    -> DROPPED at the defaults: {n} < {MIN_STARS} stars")
        if args.relaxed:
            fr2 = frame_stamps(name, star_npixels=5)
            n2 = 0 if fr2["stamps"] is None else len(fr2["stamps"].ids)
            log(f"    relaxed (star_npixels=5): {n2} stamps" + (f"; {fr2['err']}" if fr2["err"] else ""))
            if n2 >= 8:
                fr2["name"] = name + "*"
                used.append((fr2, "star_npixels=5"))
                log(f"    -> kept as {name}* (relaxed selection, leave-one-out; read with care)")
        del variants
    log()
    for fr, how in used:
        ks = [2]
        if args.k1 and fr["name"].startswith("eyuma"):
            ks.append(1)
        for k in ks:
            t0 = time.perf_counter()
            r = run_frame(fr, k, log, xcheck=not args.no_xcheck)
            r["how"] = how
            rows.append(r)
            log(f"    gsprep degree='auto' chose, per fold: {r['auto']}")
            for note in r["notes"]:
                log(f"    note: {note}")
            rt = {}
            for m, v in r["roundtrip"]:
                rt[m] = max(rt.get(m, 0.0), v)
            log("    ePSF -> gsprep grid round trip, max |to_epsf(from_epsf(e)) - e| / peak: "
                + ", ".join(f"{m} {v:.2e}" for m, v in rt.items()))
            log(f"    frame done in {time.perf_counter() - t0:.0f} s")
    log()
    for s in table(rows, "scores", "Scorer: gsprep.psf.fit_stars (centre, flux, sky free; PSF fixed), one held-out "
                   "star at a time. 'better': fraction of held-out stars on which gsprep's chi2 is lower "
                   "(stars scored by both)."):
        log(s)
    if not args.no_xcheck:
        log()
        for s in table(rows, "xscores", "Cross-check, independent scorer (no gsprep code): ePSF-convention arrays, "
                       "cubic-spline shift, scipy least_squares for (x, y, F, b)."):
            log(s)
        log()
        log("Ranking by median core chi2 (best first), gsprep scorer | independent scorer:")
        for r in rows:
            a, b = ranking(r, "scores"), ranking(r, "xscores")
            log(f"  {r['name']} k={r['k']}: {' < '.join(a)} | {' < '.join(b)}" + ("  (same order)" if a == b else
                                                                                   "  (ORDER DIFFERS)"))
        log()
        hrows = [with_home(r) for r in rows]
        for s in table(hrows, "home", "Each method on its home scorer: gsprep (g0, gA, g0 rob=F) by fit_stars, "
                       "EPSFBuilder and PSFEx by the independent spline scorer on their raw arrays."):
            log(s)
    log()
    log(f"Total wall time {time.perf_counter() - t_start:.0f} s")
    if args.save:
        path = HERE / "results_real_psf.txt"
        path.write_text("\n".join(log_lines) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

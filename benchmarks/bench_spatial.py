"""The PSF at the target on a frame whose PSF varies across the field (issue 15).

Simulated 2048x2048 frames, ``n`` stars each (true sub-pixel positions
uniform >= 30 px from the edges, fluxes log-uniform in 3e3-3e5, drawn with
GalSim ``drawImage(method='auto')``, i.e. with the native pixel), a
constant sky of 100 counts, Poisson noise at gain 1 (sky rms 10); the
sigma map ``sqrt(100 + stars)`` is exact and given to every method.

Fields (``FIELDS``), ``u = 2 x / 2048 - 1``, ``v = 2 y / 2048 - 1``:

* ``moffat_var``: elliptical Moffat, beta 3, FWHM ``3 (1 + 0.07 u + 0.05 (u^2 + v^2 - 1))``
  (2.79-3.36 px), ellipticity ``1 - b/a`` from ~0 to ~0.09 (a linear plus a ``u v`` term);
* ``kolmo_var``: sheared Kolmogorov (same FWHM law on its FWHM, 2.7 px at the centre) convolved
  with ``galsim.OpticalPSF`` (lam/D 0.8 px, defocus 0.1, astigmatism varying with position);
  all aberrations even, so each PSF is point-symmetric (its centroid is its centre);
* ``moffat_const``: one elliptical Moffat (FWHM 3, beta 3, ellipticity 0.05) everywhere.

Methods (same frame, same run):

* gsprep: ``extract_stamps`` (size 25) at the true positions, ``fit_epsf(oversampling=k,
  degree=0)`` and ``degree="auto"``; the PSF at a target is ``psf_at(x, y)`` summed over
  ``k x k`` blocks (the native-pixel PSF of a star centred on the central pixel);
* PSFEx: Source Extractor on the whole frame (VIGNET(25,25), FITS_LDAC, MAP_RMS = the
  sigma map, gain 1, background fixed at the true sky), then PSFEx (its own star selection,
  ``PSF_SAMPLING 1/k``, ``PSF_SIZE`` k*25 made odd, ``CENTER_KEYS XWIN_IMAGE,YWIN_IMAGE``,
  ``PSFVAR_KEYS X_IMAGE,Y_IMAGE``, ``PSFVAR_GROUPS 1,1``) with
  ``PSFVAR_DEGREES 2`` and ``0``.  ``PSF_MASK`` (T, n, n) is evaluated as
  ``sum_t c_t PSF_MASK[t]`` with ``c_t`` the monomials x^i y^j (i + j <= d, x's power fastest:
  1, x, x^2, y, x y, y^2 for d = 2) of ``(X - POLZERO1) / POLSCAL1``, ``(Y - POLZERO2) / POLSCAL2``,
  ``X = x + 1`` (1-based); the ordering is checked against the truth (``--check-order``, printed);
  the native-pixel PSF is every ``k``-th sample from the centre sample ``n // 2``.

Score: 20 target positions uniform in [150, 1900]^2 (inside the stars' hull); the truth is
GalSim's ``drawImage(scale=1, method='auto')`` of the PSF there on a 25 x 25 stamp centred on the
central pixel, normalised to sum 1; each estimate is normalised to sum 1 on the same grid.  Error:
rms over the pixels within 3 FWHM (the truth's, measured without the pixel) of the centre, over the
truth's peak, in %.  Mean and max over the targets.

    python benchmarks/bench_spatial.py --stars 150 300 --seeds 1 --save
    python benchmarks/bench_spatial.py --stars 150 300 --seeds 2 --check-order --k1-check --save
    python benchmarks/bench_spatial.py --diagnose kolmo_var 300 --save   # per-target sizes and peaks, appended

``--k1-check`` adds k = 1 rows (every field, the largest n, seed 0); ``--check-order`` scores PSFEx's PSF_MASK
with each candidate term ordering.  gsprep is imported from ``PYTHONPATH`` when set (e.g. a ``git archive`` of
one commit, with a ``COMMIT`` file naming it), else from this checkout; the header says which.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import galsim
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # PYTHONPATH (e.g. a snapshot of gsprep at one commit) wins
sys.path.insert(0, str(HERE))

from _psfex import _SEX_PARAMS, _conv_file, available

import gsprep

L = 2048
SIZE = 25
EDGE = 30
SKY = 100.0  # counts; rms 10 at gain 1
FLUX = (3e3, 3e5)
TARGETS = (150.0, 1900.0)
N_TARGETS = 20
DRAW = 65  # stamp each star is drawn on (odd)


def _uv(x, y):
    return 2.0 * x / L - 1.0, 2.0 * y / L - 1.0


def _fwhm_law(x, y, f0=3.0):
    u, v = _uv(x, y)
    return f0 * (1.0 + 0.07 * u + 0.05 * (u * u + v * v - 1.0))


def _ell_law(x, y):
    """Ellipticity 1 - b/a components (e1, e2); |e| from ~0 to ~0.09 across the frame."""
    u, v = _uv(x, y)
    return 0.03 + 0.04 * v, 0.02 * u + 0.03 * u * v


def _shear(e1, e2):
    e = float(np.hypot(e1, e2))
    if e == 0:
        return galsim.Shear(g1=0.0, g2=0.0)
    q = 1.0 - e
    g = (1.0 - q) / (1.0 + q)
    return galsim.Shear(g=g, beta=0.5 * np.arctan2(e2, e1) * galsim.radians)


def moffat_var(x, y):
    return galsim.Moffat(beta=3.0, fwhm=_fwhm_law(x, y)).shear(_shear(*_ell_law(x, y)))


def moffat_const(x, y):
    return galsim.Moffat(beta=3.0, fwhm=3.0).shear(_shear(0.05, 0.0))


def kolmo_var(x, y):
    u, v = _uv(x, y)
    atm = galsim.Kolmogorov(fwhm=_fwhm_law(x, y, 2.7)).shear(_shear(*_ell_law(x, y)))
    opt = galsim.OpticalPSF(lam_over_diam=0.8, defocus=0.10, astig1=0.08 * u, astig2=0.06 * v, pad_factor=2)
    return galsim.Convolve(atm, opt)


def kolmo_const(x, y):
    atm = galsim.Kolmogorov(fwhm=2.7).shear(_shear(0.03, 0.0))
    return galsim.Convolve(atm, galsim.OpticalPSF(lam_over_diam=0.8, defocus=0.10, pad_factor=2))


FIELDS = {
    "moffat_var": (moffat_var, "elliptical Moffat beta 3, FWHM 2.79-3.36 px, ellipticity 0-0.09 across the frame"),
    "kolmo_var": (kolmo_var, "Kolmogorov x OpticalPSF, FWHM and astigmatism varying, ellipticity 0-0.09"),
    "moffat_const": (moffat_const, "elliptical Moffat beta 3, FWHM 3 px, ellipticity 0.05, constant"),
    "kolmo_const": (kolmo_const, "Kolmogorov x OpticalPSF (defocus), FWHM ~2.9 px, ellipticity 0.03, constant"),
}


# --------------------------------------------------------------------------- frame

def make_frame(field, n, seed):
    fn = FIELDS[field][0]
    rng = np.random.default_rng([seed, n, list(FIELDS).index(field)])
    xy = rng.uniform(EDGE, L - 1 - EDGE, (n, 2))
    flux = np.exp(rng.uniform(np.log(FLUX[0]), np.log(FLUX[1]), n))
    model = np.zeros((L, L))
    h = DRAW // 2
    for (x, y), f in zip(xy, flux, strict=True):
        ix, iy = round(x), round(y)
        im = fn(x, y).withFlux(f).drawImage(nx=DRAW, ny=DRAW, scale=1.0, method="auto", offset=(x - ix, y - iy))
        ys, xs = slice(max(iy - h, 0), min(iy + h + 1, L)), slice(max(ix - h, 0), min(ix + h + 1, L))
        model[ys, xs] += im.array[ys.start - (iy - h): ys.stop - (iy - h), xs.start - (ix - h): xs.stop - (ix - h)]
    data = rng.poisson(np.clip(model + SKY, 0, None)).astype(float)
    sigma = np.sqrt(SKY + np.clip(model, 0, None))
    return {"data": data, "sigma": sigma, "xy": xy, "flux": flux}


# --------------------------------------------------------------------------- truth and scoring

def truth_at(field, x, y):
    prof = FIELDS[field][0](x, y)
    nat = prof.drawImage(nx=SIZE, ny=SIZE, scale=1.0, method="auto").array.astype(float)
    fine = prof.drawImage(nx=16 * SIZE, ny=16 * SIZE, scale=1 / 16, method="no_pixel").array
    fwhm = 2.0 * np.sqrt((fine >= 0.5 * fine.max()).sum() / 256.0 / np.pi)
    return nat / nat.sum(), fwhm


def psf_error(est, truth, fwhm):
    c = SIZE // 2
    yy, xx = np.mgrid[:SIZE, :SIZE]
    core = np.hypot(xx - c, yy - c) <= 3.0 * fwhm
    est = est / est.sum()
    return 100.0 * np.sqrt(np.mean((est - truth)[core] ** 2)) / truth.max()


def poly_floor(field, targets, truths, degrees=(2, 3), grid=11):
    """Error at the targets of the best noise-free polynomial (per native pixel, least squares on a
    ``grid x grid`` of truths spanning the stars' area): what a degree-d model cannot represent."""
    g = np.linspace(EDGE, L - 1 - EDGE, grid)
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    tr = np.stack([truth_at(field, x, y)[0].ravel() for x, y in pts])
    out = {}
    for d in degrees:
        a = _monomials_graded(*_uv(pts[:, 0], pts[:, 1]), d).T
        coef, *_ = np.linalg.lstsq(a, tr, rcond=None)
        e = []
        for (x, y), (t, fw) in zip(targets, truths, strict=True):
            est = (_monomials_graded(*_uv(x, y), d) @ coef).reshape(SIZE, SIZE)
            e.append(psf_error(est, t, fw))
        out[d] = (float(np.mean(e)), float(np.max(e)))
    return out


def gsprep_native(res, x, y, k):
    p = np.asarray(res.psf_at(x, y, warn=False), float)
    nat = p.reshape(SIZE, k, SIZE, k).sum(axis=(1, 3))
    return nat / nat.sum()


# --------------------------------------------------------------------------- PSFEx on the frame

def _monomials_xfast(u, v, d):
    """PSFEx's order: x^i y^j, i + j <= d, x's power fastest (1, x, x2, y, xy, y2)."""
    return np.array([u ** i * v ** j for j in range(d + 1) for i in range(d + 1 - j)])


def _monomials_graded(u, v, d):
    """Alternative: by total degree (1, x, y, x2, xy, y2)."""
    return np.array([u ** (t - j) * v ** j for t in range(d + 1) for j in range(t + 1)])


def _monomials_yfast(u, v, d):
    """Alternative: y's power fastest (1, y, y2, x, xy, x2)."""
    return np.array([v ** i * u ** j for j in range(d + 1) for i in range(d + 1 - j)])


ORDERS = {"x-fastest": _monomials_xfast, "graded": _monomials_graded, "y-fastest": _monomials_yfast}


def psfex_native(px, x, y, k, order="x-fastest", one_based=True):
    """PSFEx's native-pixel PSF at frame pixel (x, y) (0-based), normalised to sum 1."""
    mask, hdr = px["mask"], px["hdr"]
    if mask.ndim == 2 or int(hdr.get("POLNAXIS", 0)) == 0:
        img = mask.reshape(-1, *mask.shape[-2:])[0]
    else:
        d = int(hdr.get("POLDEG1", 0))
        off = 1.0 if one_based else 0.0
        u = (x + off - hdr["POLZERO1"]) / hdr["POLSCAL1"]
        v = (y + off - hdr["POLZERO2"]) / hdr["POLSCAL2"]
        c = ORDERS[order](u, v, d)
        img = np.tensordot(c, mask[: len(c)], axes=(0, 0))
    step = float(hdr["PSF_SAMP"])
    m = round(1.0 / step)
    assert abs(m * step - 1.0) < 1e-6, step
    n = img.shape[-1]
    c0, h = n // 2, SIZE // 2
    idx = c0 + m * np.arange(-h, h + 1)
    assert idx[0] >= 0 and idx[-1] < n, (n, m)
    nat = img[np.ix_(idx, idx)]
    return nat / nat.sum()


def run_psfex_frame(frame, k, degrees=(2, 0)):
    from astropy.io import fits

    tools = available()
    if tools is None:
        return None
    out = {}
    with tempfile.TemporaryDirectory(prefix="psfex_spatial_") as tmp:
        work = Path(tmp)
        fits.writeto(work / "image.fits", frame["data"].astype(np.float32), overwrite=True)
        fits.writeto(work / "rms.fits", frame["sigma"].astype(np.float32), overwrite=True)
        sex = {
            "CATALOG_NAME": "stars.cat", "CATALOG_TYPE": "FITS_LDAC", "PARAMETERS_NAME": "stars.param",
            "DETECT_TYPE": "CCD", "DETECT_MINAREA": "3", "DETECT_THRESH": "5", "ANALYSIS_THRESH": "5",
            "FILTER": "Y", "FILTER_NAME": _conv_file(), "DEBLEND_NTHRESH": "32", "DEBLEND_MINCONT": "0.005",
            "CLEAN": "Y", "CLEAN_PARAM": "1.0", "MASK_TYPE": "CORRECT",
            "WEIGHT_TYPE": "MAP_RMS", "WEIGHT_IMAGE": "rms.fits", "WEIGHT_GAIN": "N",
            "PHOT_APERTURES": "15", "PHOT_AUTOPARAMS": "2.5,3.5", "PHOT_FLUXFRAC": "0.5",
            "SATUR_LEVEL": "1e10", "GAIN": "1.0", "MAG_ZEROPOINT": "25.0", "PIXEL_SCALE": "1.0", "SEEING_FWHM": "3.0",
            "BACK_TYPE": "MANUAL", "BACK_VALUE": f"{SKY}", "BACK_SIZE": "64", "BACK_FILTERSIZE": "3",
            "CHECKIMAGE_TYPE": "NONE", "MEMORY_PIXSTACK": "3000000", "VERBOSE_TYPE": "QUIET", "WRITE_XML": "N",
        }
        (work / "stars.sex").write_text("".join(f"{a} {b}\n" for a, b in sex.items()))
        (work / "stars.param").write_text(_SEX_PARAMS.format(v=SIZE))
        t0 = time.perf_counter()
        subprocess.run([tools["sex"], "image.fits", "-c", "stars.sex"], cwd=work, check=True,
                       capture_output=True, text=True)
        t_sex = time.perf_counter() - t0
        with fits.open(work / "stars.cat") as hd:
            n_det = len(hd[2].data)
        psf_size = k * SIZE + (1 - (k * SIZE) % 2)
        for deg in degrees:
            cfg = {
                "BASIS_TYPE": "PIXEL_AUTO", "BASIS_NUMBER": "20", "PSF_SAMPLING": f"{1.0 / k:.6f}", "PSF_ACCURACY": "0.01",
                "PSF_SIZE": f"{psf_size},{psf_size}", "PSF_RECENTER": "N", "CENTER_KEYS": "XWIN_IMAGE,YWIN_IMAGE",
                "PHOTFLUX_KEY": "FLUX_AUTO", "PHOTFLUXERR_KEY": "FLUXERR_AUTO",
                "PSFVAR_KEYS": "X_IMAGE,Y_IMAGE", "PSFVAR_GROUPS": "1,1", "PSFVAR_DEGREES": str(deg), "PSFVAR_NSNAP": "9",
                "SAMPLE_AUTOSELECT": "Y", "SAMPLEVAR_TYPE": "NONE", "SAMPLE_FWHMRANGE": "0.5,30.0",
                "SAMPLE_VARIABILITY": "0.2", "SAMPLE_MINSN": "20", "SAMPLE_MAXELLIP": "0.3", "SAMPLE_FLAGMASK": "0x00fe",
                "CHECKPLOT_TYPE": "NONE", "CHECKIMAGE_TYPE": "NONE", "PSF_DIR": ".", "PSF_SUFFIX": ".psf",
                "VERBOSE_TYPE": "QUIET", "WRITE_XML": "N", "NTHREADS": "1",
            }
            (work / "stars.psfex").write_text("".join(f"{a} {b}\n" for a, b in cfg.items()))
            (work / "stars.psf").unlink(missing_ok=True)
            t0 = time.perf_counter()
            r = subprocess.run([tools["psfex"], "stars.cat", "-c", "stars.psfex"], cwd=work,
                               capture_output=True, text=True, check=False)
            dt = time.perf_counter() - t0
            if r.returncode != 0 or not (work / "stars.psf").exists():
                raise RuntimeError(f"psfex failed ({r.returncode}): {r.stderr[-2000:]}")
            with fits.open(work / "stars.psf") as hd:
                hdr = dict(hd[1].header)
                mask = np.asarray(hd[1].data["PSF_MASK"][0], float)
            out[deg] = {"mask": mask, "hdr": hdr, "time": dt + t_sex, "n_det": n_det,
                            "n_loaded": int(hdr.get("LOADED", -1)), "n_accepted": int(hdr.get("ACCEPTED", -1))}
    return out


# --------------------------------------------------------------------------- one frame

def gsprep_fit(stamps, k, degree):
    with warnings.catch_warnings(record=True) as wl:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = gsprep.fit_epsf(stamps, oversampling=k, degree=degree)
        dt = time.perf_counter() - t0
    msgs = sorted({type(w.message).__name__ + ": " + str(w.message)[:120] for w in wl})
    return res, dt, msgs


def run_one(field, n, seed, k, targets, warm, check_order, log):
    t0 = time.perf_counter()
    frame = make_frame(field, n, seed)
    t_draw = time.perf_counter() - t0
    from astropy.table import Table

    cat = Table({"id": np.arange(1, n + 1), "x": frame["xy"][:, 0], "y": frame["xy"][:, 1]})
    stamps = gsprep.extract_stamps(frame["data"], frame["sigma"], cat, SIZE)
    truths = [truth_at(field, x, y) for x, y in targets]
    row = {"field": field, "n": n, "seed": seed, "k": k, "t_draw": t_draw, "floor": poly_floor(field, targets, truths)}
    for name, deg in (("g0", 0), ("gA", "auto")):
        res, dt, msgs = gsprep_fit(stamps, k, deg)
        e = [psf_error(gsprep_native(res, x, y, k), tr, fw) for (x, y), (tr, fw) in zip(targets, truths, strict=True)]
        row[name] = {"mean": float(np.mean(e)), "max": float(np.max(e)), "t": dt, "degree": res.degree,
                         "conv": bool(res.converged), "msgs": msgs,
                         "scores": (res.spatial or {}).get("scores") if deg == "auto" else None}
        if warm:
            _, row[name]["t_warm"], _ = gsprep_fit(stamps, k, deg)
        for m in msgs:
            log(f"    gsprep degree={deg!r} warning: {m}")
    px = run_psfex_frame(frame, k)
    if px is not None:
        for deg, p in px.items():
            e = [psf_error(psfex_native(p, x, y, k), tr, fw) for (x, y), (tr, fw) in zip(targets, truths, strict=True)]
            row[f"p{deg}"] = {"mean": float(np.mean(e)), "max": float(np.max(e)), "t": p["time"], "n_det": p["n_det"],
                                  "n_loaded": p["n_loaded"], "n_accepted": p["n_accepted"]}
        if check_order and 2 in px:
            p = px[2]
            # two stars far apart (bright, opposite corners) and the 20 targets, every candidate ordering
            xy = frame["xy"]
            u, v = _uv(xy[:, 0], xy[:, 1])
            picks = [int(np.argmax(u + v)), int(np.argmax(-u - v)), int(np.argmax(u - v)), int(np.argmax(v - u))]
            star_truth = [truth_at(field, *xy[i]) for i in picks]
            for order in ORDERS:
                for one_based in (True, False):
                    es = [psf_error(psfex_native(p, *xy[i], k, order, one_based), tr, fw)
                          for i, (tr, fw) in zip(picks, star_truth, strict=True)]
                    et = [psf_error(psfex_native(p, x, y, k, order, one_based), tr, fw)
                          for (x, y), (tr, fw) in zip(targets, truths, strict=True)]
                    row.setdefault("order", []).append((order, one_based, es, float(np.mean(et))))
    return row


# --------------------------------------------------------------------------- per-target diagnosis

def _moments(p):
    """Gaussian-weighted (sigma 2 px) size sqrt(Ixx + Iyy), e1, e2 and peak of a native-pixel PSF."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    q = p * np.exp(-(xx ** 2 + yy ** 2) / 8.0)
    q = q / q.sum()
    ixx, iyy, ixy = (q * xx * xx).sum(), (q * yy * yy).sum(), (q * xx * yy).sum()
    return np.sqrt(ixx + iyy), (ixx - iyy) / (ixx + iyy), 2 * ixy / (ixx + iyy), p.max()


def diagnose(field, n, seed, k, log):
    """Per target: error, size and peak of gsprep (auto) and PSFEx (degree 2) against the truth; and the share
    of the truth's peak variation each recovers (slope of estimated on true peak across the targets)."""
    from astropy.table import Table

    frame = make_frame(field, n, seed)
    cat = Table({"id": np.arange(1, n + 1), "x": frame["xy"][:, 0], "y": frame["xy"][:, 1]})
    stamps = gsprep.extract_stamps(frame["data"], frame["sigma"], cat, SIZE)
    targets = np.random.default_rng(1000 + seed).uniform(*TARGETS, (N_TARGETS, 2))
    res, _, _ = gsprep_fit(stamps, k, "auto")
    px = run_psfex_frame(frame, k, degrees=(2,))[2]
    log(f"Diagnosis: {field} n={n} seed={seed} k={k}, gsprep degree='auto' (chose {res.degree}) vs PSFEx degree 2")
    log("    x      y | err% gsprep PSFEx | size truth  d gsprep  d PSFEx | e1 truth d gsprep d PSFEx "
        "| peak truth  d gsprep  d PSFEx")
    peaks = []
    for x, y in targets:
        t, fw = truth_at(field, x, y)
        g, p = gsprep_native(res, x, y, k), psfex_native(px, x, y, k)
        mt, mg, mp = _moments(t), _moments(g), _moments(p)
        peaks.append((mt[3], mg[3], mp[3]))
        log(f"  {x:5.0f}  {y:5.0f} | {psf_error(g, t, fw):6.3f} {psf_error(p, t, fw):6.3f} | {mt[0]:.3f} "
            f"{mg[0] - mt[0]:+.4f} {mp[0] - mt[0]:+.4f} | {mt[1]:+.3f} {mg[1] - mt[1]:+.4f} {mp[1] - mt[1]:+.4f} "
            f"| {mt[3]:.4f} {100 * (mg[3] / mt[3] - 1):+.2f}% {100 * (mp[3] / mt[3] - 1):+.2f}%")
    pk = np.array(peaks)
    sg, sp = np.polyfit(pk[:, 0], pk[:, 1], 1)[0], np.polyfit(pk[:, 0], pk[:, 2], 1)[0]
    log(f"  truth's peak ranges {pk[:, 0].min():.4f}-{pk[:, 0].max():.4f} over the targets; slope of the "
        f"estimated peak on the true peak: gsprep {sg:.3f}, PSFEx {sp:.3f} (1 = the variation fully recovered)")


# --------------------------------------------------------------------------- main

def _source_commit():
    """The commit gsprep was imported from, and whether its gsprep/ differs from it (best effort)."""
    root = Path(gsprep.__file__).resolve().parent.parent
    stamp = root / "COMMIT"
    if stamp.exists():
        return "snapshot of " + stamp.read_text().strip()
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "gsprep"], capture_output=True,
                               text=True, check=False).stdout.strip()
        return f"working tree at {head}" + (", gsprep/ modified" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def main(argv=None):
    global SIZE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stars", type=int, nargs="+", default=[150, 300])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--size", type=int, default=SIZE, help="stamp size, px, odd (default: %(default)s)")
    ap.add_argument("--k", type=int, nargs="+", default=[2])
    ap.add_argument("--fields", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    ap.add_argument("--k1-check", action="store_true",
                    help="also k=1 (gsprep and PSFEx PSF_SAMPLING 1) for every field at the largest n, seed 0")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm second gsprep run")
    ap.add_argument("--check-order", action="store_true", help="score PSFEx's PSF_MASK with each candidate ordering")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results_spatial.txt")
    ap.add_argument("--diagnose", nargs=2, metavar=("FIELD", "N"),
                    help="per-target sizes and peaks of gsprep auto and PSFEx d2 on one frame (seed 0, first --k); "
                         "with --save appended to results_spatial.txt")
    args = ap.parse_args(argv)
    SIZE = int(args.size)
    if args.diagnose:
        out = []

        def dlog(s=""):
            print(s, flush=True)
            out.append(s)

        dlog()
        dlog("$ python benchmarks/bench_spatial.py " + " ".join(sys.argv[1:] if argv is None else argv))
        dlog(f"gsprep from {Path(gsprep.__file__).parent} ({_source_commit()})")
        diagnose(args.diagnose[0], int(args.diagnose[1]), 0, args.k[0], dlog)
        if args.save:
            with open(HERE / "results_spatial.txt", "a") as fh:
                fh.write("\n".join(out) + "\n")
        return

    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    log("$ python benchmarks/bench_spatial.py " + " ".join(sys.argv[1:] if argv is None else argv))
    tools = available()
    log(f"gsprep {getattr(gsprep, '__version__', '?')} from {Path(gsprep.__file__).parent} ({_source_commit()}), galsim {galsim.__version__}, "
        f"PSFEx: {tools['psfex'] if tools else 'not installed'}, {platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs")
    log(f"Frames {L}x{L}, stars >= {EDGE} px from the edges, fluxes log-uniform {FLUX[0]:.0e}-{FLUX[1]:.0e}, "
        f"sky {SKY:.0f} (rms 10), Poisson at gain 1; stamps {SIZE}x{SIZE} at the true positions; "
        f"{N_TARGETS} targets uniform in [{TARGETS[0]:.0f}, {TARGETS[1]:.0f}]^2")
    for f in args.fields:
        log(f"  {f:13s} {FIELDS[f][1]}")
    log("Error: rms within 3 FWHM of the centre / truth's peak, %, mean (max) over the targets; "
        "native-pixel PSF of a star centred on a pixel, each normalised to sum 1.")
    log("t gsprep d0/auto: wall s of each call (the first call of the process compiles); warm: the same two calls "
        "repeated (first row only); PSFEx t: Source Extractor + PSFEx, s.")
    log()
    rows = []
    first = True
    runs = [(seed, k, field, n) for seed in range(args.seeds) for k in args.k for field in args.fields
            for n in args.stars]
    if args.k1_check and 1 not in args.k:
        runs += [(0, 1, field, max(args.stars)) for field in args.fields]
    for seed, k, field, n in runs:
        targets = np.random.default_rng(1000 + seed).uniform(*TARGETS, (N_TARGETS, 2))
        r = run_one(field, n, seed, k, targets, warm=not args.no_warm and first,
                    check_order=args.check_order and first and not field.endswith("_const"), log=log)
        first = False
        rows.append(r)
        g0, gA, p2, p0 = r["g0"], r["gA"], r.get("p2"), r.get("p0")
        s = (f"  {field:12s} n={n:<4d} k={k} seed={seed} | err% gsprep d0 {g0['mean']:.3f} "
             f"({g0['max']:.3f}) auto[d={gA['degree']}] {gA['mean']:.3f} ({gA['max']:.3f})")
        if p2:
            s += (f" PSFEx d2 {p2['mean']:.3f} ({p2['max']:.3f}) d0 {p0['mean']:.3f} ({p0['max']:.3f})"
                  f" | auto/PSFEx2 {gA['mean'] / p2['mean']:.2f}")
        s += f" | t gsprep {g0['t']:.1f}/{gA['t']:.1f}s"
        if "t_warm" in gA:
            s += f" (warm {g0['t_warm']:.1f}/{gA['t_warm']:.1f}s)"
        if p2:
            s += f" PSFEx {p2['t']:.1f}s, stars {p2['n_accepted']}/{p2['n_loaded']}"
        s += f" | draw {r['t_draw']:.0f}s | noise-free poly floor d2 {r['floor'][2][0]:.3f} d3 {r['floor'][3][0]:.3f}"
        log(s)
        if gA.get("scores") is not None:
            log(f"    auto scores: {gA['scores']}")
        for order, ob, es, et in r.get("order", []):
            log(f"    PSFEx ordering {order:9s} X={'x+1' if ob else 'x  '}: err% at 4 corner stars "
                + " ".join(f"{e:.3f}" for e in es) + f" | targets mean {et:.3f}")
    log()
    hdr = ("| field | n | k | seed | auto degree | err % mean gsprep d0 | gsprep auto | PSFEx d2 | PSFEx d0 "
           "| err % max gsprep d0 | gsprep auto | PSFEx d2 | PSFEx d0 | auto / PSFEx d2 (mean) | auto / PSFEx d2 (max) "
           "| poly floor d2 / d3 (mean) | t gsprep d0 s | t gsprep auto s | warm d0 / auto s | t PSFEx d2 s | PSFEx stars accepted/loaded |")
    log(hdr)
    log("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        g0, gA = r["g0"], r["gA"]
        p2, p0 = r.get("p2", {}), r.get("p0", {})
        f = lambda d, key: f"{d[key]:.3f}" if key in d else "-"
        warm = f"{g0['t_warm']:.1f} / {gA['t_warm']:.1f}" if "t_warm" in gA else "-"
        ratio = (f"{gA['mean'] / p2['mean']:.2f} | {gA['max'] / p2['max']:.2f}" if p2 else "- | -")
        log(f"| {r['field']} | {r['n']} | {r['k']} | {r['seed']} | {gA['degree']} | {f(g0, 'mean')} | "
            f"{f(gA, 'mean')} | {f(p2, 'mean')} | {f(p0, 'mean')} | {f(g0, 'max')} | {f(gA, 'max')} | "
            f"{f(p2, 'max')} | {f(p0, 'max')} | {ratio} | {r['floor'][2][0]:.3f} / {r['floor'][3][0]:.3f} | {g0['t']:.1f} | {gA['t']:.1f} | {warm} | "
            f"{p2.get('t', float('nan')):.1f} | {p2.get('n_accepted', '-')}/{p2.get('n_loaded', '-')} |")
    if args.save:
        (HERE / "results_spatial.txt").write_text("\n".join(lines) + "\n")
        print(f"wrote {HERE / 'results_spatial.txt'}")


if __name__ == "__main__":
    main()

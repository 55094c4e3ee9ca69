"""PSF stars: find and measure them, match a reference catalogue, select with reasons, cut stamps.

Mirrors GalfitS's ``generate_PSFs`` star selection, in its order, but every
rejected star keeps the ``reason`` it was dropped and ``table.meta["funnel"]``
holds the number of stars left after each stage.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from ._checks import (
    as_image,
    as_mask,
    check_columns,
    check_integer,
    check_nonnegative,
    check_number,
    check_positive,
    check_ra_dec,
    header_positive,
    read_table,
)
from .detection import detect
from .wcs import pixel_scale

__all__ = [
    "find_stars",
    "gaia_stars",
    "crossmatch",
    "StarCriteria",
    "select_stars",
    "NoStarsError",
    "Stamps",
    "extract_stamps",
    "GAIA_COLUMNS",
    "saturation_level",
    "SaturationWarning",
    "read_star_catalog",
    "star_positions_in",
    "stack_psf",
]

GAIA_COLUMNS = ("source_id", "ra", "dec", "pmra", "pmdec", "ref_epoch", "phot_g_mean_mag")


# --------------------------------------------------------------------------
# finding and measuring


def _check_size(name, size, shape=None):
    size = check_integer(name, size, lower=3, odd=True)
    if shape is not None and size > min(shape):
        msg = f"{name}={size} is larger than the frame ({shape[1]} x {shape[0]} pixels)"
        raise ValueError(msg)
    return size


def find_stars(data, *, fwhm, nsigma=3.0, npixels=50, sigma=None, wcs=None, mask=None, size=81,
               saturation=None, deblend=False, return_segmentation=False, header=None, background=None,
               positions=None):
    """Detect candidate PSF stars and measure what selection needs.

    Parameters
    ----------
    data : array (ny, nx)
        Frame (sky need not be subtracted: a sigma-clipped background is).
    fwhm : float
        Expected PSF FWHM, pixels (detection smoothing).
    nsigma, npixels : float, int
        Detection threshold (times the noise) and minimum connected pixels.
    sigma : array, optional
        Sigma image (threshold ``nsigma * sigma``).
    wcs : astropy.wcs.WCS, optional
        Adds ICRS ``ra, dec`` and records the pixel scale.
    mask : bool array, optional
        True = bad pixel (counts in ``central_bad``).
    size : int
        Odd stamp size, pixels: the box for ``isolation`` and ``in_frame``.
    saturation : float, optional
        Saturation (or linearity) level in the frame's units before sky
        subtraction (``data + background``).  Pixels at or above it count in
        ``central_bad``; :func:`select_stars` rejects stars whose ``peak_raw``
        reaches it (unless ``StarCriteria.saturation`` overrides it).
        Default: the level the ``header`` states (:func:`saturation_level`).
    deblend : bool
        Deblend blended sources before measuring.
    return_segmentation : bool
        Also return the :class:`gsprep.Segmentation` (for :func:`extract_stamps`).
    header : astropy.io.fits.Header, optional
        The frame's header, read for a saturation level (``SATURATE``,
        ``SATLEVEL``, ``MAXLIN``, ...) when ``saturation`` is not given.
    background : float or array, optional
        The sky already subtracted from ``data`` (so ``data + background`` is
        the frame as read, which the saturation level refers to).
    positions : array (n, 2), optional
        The user's star list (GalfitS's ``starcord_list`` as the catalogue):
        0-based frame pixels ``(x, y)`` (see :func:`star_positions_in` for
        a table with ``ra, dec``).  The catalogue is then exactly these
        stars, one row per position in the order given (so ``drop_index``
        counts in the user's list), each measured on the detected segment
        under it (or the nearest segment centroid within ``max(1.5 x fwhm,
        2)`` pixels); columns ``given_x, given_y`` and ``found`` are added,
        and a position with no source there keeps ``found = False`` (NaN
        measurements), which :func:`select_stars` rejects with its reason.

    Returns
    -------
    astropy.table.Table
        ``id`` (segment label), ``x, y`` (0-based centroid, pixels), ``ra, dec``
        (ICRS degrees, with a WCS), ``flux`` (background-subtracted segment
        sum), ``peak``, ``fwhm`` (pixels), ``q`` (minor / major axis),
        ``isolation`` (fraction of the source-flux in the ``size`` box that
        belongs to other sources), ``central_bad`` (masked, non-finite or
        saturated pixels within ``0.25 * size`` of the centre), ``in_frame``
        (the ``size`` box fits inside the frame), and for the single /
        unsaturated tests: ``asymmetry`` (fraction of the light within
        3 x FWHM + 2 px that is not point-symmetric about the star's peak),
        ``companion`` (the highest significant peak of the smoothed
        star-minus-rotated-star residual beyond FWHM / 2, relative to the
        star's own smoothed peak), ``peak_raw`` (the core's highest pixel in
        the frame's units before sky subtraction), ``flat_top`` (number of core
        pixels within 2% of the core's maximum; NaN-free, 0 when unmeasured)
        and ``peak_snr``.  ``meta`` holds ``fwhm``, ``size``, ``pixel_scale``
        (arcsec, with a WCS) and ``saturation`` / ``saturation_source`` when a
        level is known.
    """
    arr = as_image("data", data)
    size = _check_size("size", size, arr.shape)
    bad = as_mask("mask", mask, arr.shape)
    seg = detect(arr, fwhm=fwhm, nsigma=nsigma, npixels=npixels, sigma=sigma, mask=bad, wcs=wcs,
                 deblend=deblend)
    src = seg.table
    labels = seg.labels
    ny, nx = arr.shape
    resid = np.where(np.isfinite(arr), arr - seg.background, 0.0)
    pos = np.clip(resid, 0, None) * (labels > 0)
    badpix = bad | ~np.isfinite(arr)
    sat_source = "find_stars(saturation=...)"
    if saturation is None:
        found = saturation_level(header)
        if found is not None:
            saturation, key = found
            sat_source = f"header {key}"
    else:
        saturation = check_positive("saturation", saturation)
    raw = arr if background is None else arr + np.broadcast_to(np.asarray(background, dtype=float), arr.shape)
    if sigma is not None:
        sig2 = np.asarray(sigma, dtype=float) ** 2
        if sig2.shape != arr.shape:
            msg = f"sigma has shape {sig2.shape} but data has shape {arr.shape}"
            raise ValueError(msg)
        sig2 = np.where(np.isfinite(sig2), sig2, 0.0)
    else:
        sig2 = np.full(arr.shape, float(seg.rms) ** 2)
    good = np.isfinite(arr) & ~bad
    quality = []
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            badpix |= raw >= float(saturation)
    h = size // 2
    rc = 0.25 * size
    iso, cbad, inframe = [], [], []
    wfwhm, wq = [], []
    for row in src:
        x, y, lab = float(row["x"]), float(row["y"]), int(row["label"])
        ix, iy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = max(ix - h, 0), min(ix + h + 1, nx), max(iy - h, 0), min(iy + h + 1, ny)
        box = pos[y0:y1, x0:x1]
        lb = labels[y0:y1, x0:x1]
        own = box[lb == lab].sum()
        other = box[(lb != lab) & (lb > 0)].sum()
        iso.append(other / (own + other) if own + other > 0 else 1.0)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = (xx - x) ** 2 + (yy - y) ** 2 <= rc**2
        cbad.append(int(np.count_nonzero(badpix[y0:y1, x0:x1] & near)))
        inframe.append(ix - h >= 0 and iy - h >= 0 and ix + h < nx and iy + h < ny)
        f, qq = _windowed_shape(resid, x, y, fwhm, np.isfinite(arr) & ~bad)
        wfwhm.append(f)
        wq.append(qq)
        quality.append(_star_quality(resid, raw, sig2, labels, lab, good, x, y, fwhm))
    t = Table()
    t["id"] = np.asarray(src["label"], dtype=int)
    t["x"], t["y"] = src["x"], src["y"]
    if wcs is not None:
        t["ra"], t["dec"] = src["ra"], src["dec"]
    for k in ("flux", "peak"):
        t[k] = src[k]
    t["fwhm"] = np.asarray(wfwhm, dtype=float)
    t["q"] = np.asarray(wq, dtype=float)
    t["isolation"] = np.asarray(iso, dtype=float)
    t["central_bad"] = np.asarray(cbad, dtype=int)
    t["in_frame"] = np.asarray(inframe, dtype=bool)
    qual = np.asarray(quality, dtype=float).reshape(-1, 5)
    t["asymmetry"] = qual[:, 0]
    t["companion"] = qual[:, 1]
    t["peak_snr"] = qual[:, 2]
    t["flat_top"] = qual[:, 3].astype(int)
    t["peak_raw"] = qual[:, 4]
    t.meta["fwhm"] = float(fwhm)
    if saturation is not None:
        t.meta["saturation"] = float(saturation)
        t.meta["saturation_source"] = sat_source
    t.meta["size"] = size
    t.meta["shape"] = arr.shape
    if wcs is not None:
        t.meta["pixel_scale"] = pixel_scale(wcs)
    if positions is not None:
        t = _at_positions(t, labels, positions, fwhm)
    return (t, seg) if return_segmentation else t


def _at_positions(t, labels, positions, fwhm):
    """The catalogue ``t`` as one row per given ``(x, y)``: the segment under it (or the nearest, close enough)."""
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0 or not np.all(np.isfinite(pos)):
        msg = f"positions must be a non-empty (n, 2) array of finite (x, y) pixels, got shape {pos.shape}"
        raise ValueError(msg)
    ny, nx = labels.shape
    ids = np.asarray(t["id"], int)
    tx, ty = np.asarray(t["x"], float), np.asarray(t["y"], float)
    idx = np.full(len(pos), -1)
    for k, (x, y) in enumerate(pos):
        ix, iy = int(round(x)), int(round(y))
        lab = labels[iy, ix] if 0 <= ix < nx and 0 <= iy < ny else 0
        if lab > 0 and np.any(ids == lab):
            idx[k] = int(np.nonzero(ids == lab)[0][0])
        elif len(t):
            d = np.hypot(tx - x, ty - y)
            j = int(np.argmin(d))
            if d[j] <= max(1.5 * float(fwhm), 2.0):
                idx[k] = j
    found = idx >= 0
    if len(t):
        out = t[np.where(found, idx, 0)]
    else:  # nothing detected at all: every row is a position with no source
        out = Table({c: np.zeros(len(pos), dtype=t[c].dtype) for c in t.colnames}, meta=t.meta)
    out.meta = dict(t.meta)
    for c in out.colnames:
        if out[c].dtype.kind == "f":
            out[c][~found] = np.nan
    out["id"][~found] = -1
    out["x"][~found], out["y"][~found] = pos[~found, 0], pos[~found, 1]
    if "in_frame" in out.colnames:
        out["in_frame"][~found] = False
    out["given_x"], out["given_y"] = pos[:, 0], pos[:, 1]
    out["found"] = found
    out.meta["stars_from"] = "positions"
    return out


def star_positions_in(table, wcs=None):
    """``(n, 2)`` 0-based frame pixels ``(x, y)`` of a star list: its ``ra, dec`` columns (with ``wcs``) or ``x, y``.

    Column names are matched case-insensitively (``RA``/``DEC``,
    ``ra_deg``/``dec_deg`` too); ``ra, dec`` (ICRS degrees) win when a
    ``wcs`` is given, else ``x, y`` (0-based pixels) are used.
    """
    cols = {c.lower(): c for c in table.colnames}
    ra = next((cols[c] for c in ("ra", "ra_deg", "raj2000") if c in cols), None)
    dec = next((cols[c] for c in ("dec", "dec_deg", "dej2000", "decj2000") if c in cols), None)
    if ra is not None and dec is not None and wcs is not None:
        sc = SkyCoord(np.asarray(table[ra], float) * u.deg, np.asarray(table[dec], float) * u.deg)
        x, y = wcs.world_to_pixel(sc)
        return np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    if "x" in cols and "y" in cols:
        return np.column_stack([np.asarray(table[cols["x"]], float), np.asarray(table[cols["y"]], float)])
    if ra is not None and dec is not None:
        msg = "the star list has ra, dec but the frame has no WCS: give x, y (0-based pixels) columns"
        raise ValueError(msg)
    msg = f"the star list needs ra, dec (ICRS degrees) or x, y (0-based pixels) columns, it has {table.colnames}"
    raise ValueError(msg)


def read_star_catalog(path):
    """A star list file (ECSV, FITS table, CSV, ...; astropy's reader by extension) as a Table.

    It must have ``ra, dec`` (ICRS degrees) or ``x, y`` (0-based frame
    pixels) columns (see :func:`star_positions_in`).
    """
    path = os.fspath(path)
    t = read_table("star_catalog", path)
    cols = {c.lower() for c in t.colnames}
    if not ({"x", "y"} <= cols or ({"ra", "dec"} <= cols) or ({"ra_deg", "dec_deg"} <= cols)):
        msg = f"star_catalog: {path!r} needs ra, dec (ICRS degrees) or x, y (0-based pixels) columns, has {t.colnames}"
        raise ValueError(msg)
    if len(t) == 0:
        msg = f"star_catalog: {path!r} has no rows"
        raise ValueError(msg)
    return t


def _windowed_shape(resid, x, y, fwhm_guess, good, niter=3):
    """FWHM (pixels) and axis ratio from Gaussian-windowed second moments.

    The moments are measured with a circular Gaussian window (sigma = the
    guessed FWHM / 2.355 x 1.5), the window and the pixel's own variance
    (1/12) are removed analytically (exact for a Gaussian source), and the
    window is re-centred on the first moments.  Unlike moments over the whole
    segment this does not grow with the star's brightness, and a cosmic ray
    (one pixel) comes out with a FWHM near 0.
    """
    ny, nx = resid.shape
    sw = 1.5 * fwhm_guess * FWHM_TO_SIGMA_
    r = int(np.ceil(4 * sw))
    ix, iy = int(round(x)), int(round(y))
    x0, x1, y0, y1 = max(ix - r, 0), min(ix + r + 1, nx), max(iy - r, 0), min(iy + r + 1, ny)
    d = resid[y0:y1, x0:x1] * good[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    cx, cy = x, y
    for _ in range(niter):
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sw**2)) * d
        tot = w.sum()
        if not tot > 0:
            return np.nan, np.nan
        cx, cy = (w * xx).sum() / tot, (w * yy).sum() / tot
    dx, dy = xx - cx, yy - cy
    w = np.exp(-(dx**2 + dy**2) / (2 * sw**2)) * d
    tot = w.sum()
    m = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / tot
    try:
        cs = np.linalg.inv(np.linalg.inv(m) - np.eye(2) / sw**2) - np.eye(2) / 12.0
        lam = np.linalg.eigvalsh(cs)
    except np.linalg.LinAlgError:
        return np.nan, np.nan
    if not np.all(np.isfinite(lam)):
        return np.nan, np.nan
    lam = np.clip(lam, 1e-6, None)
    f, q = float(2.3548 * (lam[0] * lam[1]) ** 0.25), float(np.sqrt(lam[0] / lam[1]))
    if f < UNDERSAMPLED_FWHM:
        # a star a pixel or two wide: the sampled moments depend on where the star falls within its pixel
        # (one centred on a pixel has almost no second moment left after the 1/12), so fit its pixels
        f = _pixel_gaussian_fwhm(resid, good, cx, cy, f)
    return f, q


FWHM_TO_SIGMA_ = 1.0 / 2.3548200450309493
#: below this moment FWHM (pixels), find_stars fits a pixel-integrated Gaussian instead
UNDERSAMPLED_FWHM = 2.5


def _pixel_gaussian_fwhm(resid, good, x, y, guess):
    """FWHM (pixels) of a circular Gaussian integrated over each pixel, fitted to the 7x7 pixels around (x, y)."""
    from scipy.optimize import least_squares
    from scipy.special import erf

    ny, nx = resid.shape
    ix, iy = int(round(x)), int(round(y))
    x0, x1, y0, y1 = max(ix - 3, 0), min(ix + 4, nx), max(iy - 3, 0), min(iy + 4, ny)
    d = resid[y0:y1, x0:x1]
    ok = good[y0:y1, x0:x1] & np.isfinite(d)
    if ok.sum() < 9:
        return guess
    xs, ys = np.arange(x0, x1, dtype=float), np.arange(y0, y1, dtype=float)

    def model(p):
        fx, fy, ls, flux, b = p
        s = np.exp(ls) * np.sqrt(2.0)
        gx = 0.5 * (erf((xs + 0.5 - fx) / s) - erf((xs - 0.5 - fx) / s))
        gy = 0.5 * (erf((ys + 0.5 - fy) / s) - erf((ys - 0.5 - fy) / s))
        return flux * np.outer(gy, gx) + b

    flux0 = float(np.sum(np.where(ok, d, 0.0)))
    if not flux0 > 0:
        return guess
    s0 = max(guess, 0.8) * FWHM_TO_SIGMA_
    p0 = [x, y, np.log(s0), flux0, 0.0]
    lo = [x - 1.5, y - 1.5, np.log(0.03), 0.0, -np.inf]
    hi = [x + 1.5, y + 1.5, np.log(5.0), np.inf, np.inf]
    try:
        res = least_squares(lambda p: (model(p) - d)[ok], p0, bounds=(lo, hi), x_scale="jac", max_nfev=200)
    except ValueError:
        return guess
    if not res.success and res.status <= 0:
        return guess
    return float(2.3548200450309493 * np.exp(res.x[2]))


# --------------------------------------------------------------------------
# single, unsaturated stars: blend and flat-top measurements

SATURATION_KEYWORDS = ("SATURATE", "SATLEVEL", "SATURATN", "SATURATION", "SATUR", "SATLIM", "MAXLIN", "LINLIMIT")


def saturation_level(header):
    """The saturation (or linearity) level a FITS header states, in its data units, or None.

    Looks for ``SATURATE``, ``SATLEVEL``, ``SATURATN``, ``SATURATION``,
    ``SATUR``, ``SATLIM``, ``MAXLIN`` and ``LINLIMIT``; where several are
    present the lowest wins (a star is non-linear before it saturates).
    ``DATAMAX`` is not used: by the FITS standard it is the largest value in
    the array, not a detector limit.

    Returns
    -------
    (float, str) or None
        The level and the keyword it came from.
    """
    found = [(v, key) for key in SATURATION_KEYWORDS if (v := header_positive(header, key)) is not None]
    return min(found) if found else None


# chosen on simulated pairs and single stars (see docs/guide.md, "Single, unsaturated stars"); the
# blend thresholds themselves are StarCriteria.asymmetry_max (0.06) and companion_max (0.05)
BLEND_PEAK_NSIGMA = 5.0     # a companion peak counts when this significant in the smoothed residual
FLAT_TOLERANCE = 0.02       # a flat top: pixels within 2% of the core's maximum ...
FLAT_NPIX = 6               # ... at least this many of them (an unsaturated star has at most 4)
FLAT_MIN_SNR = 50.0         # ... tested only where the peak is this many sigmas above the noise


def _gauss_kernel(s):
    r = int(np.ceil(3 * s))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
    return g / g.sum()


def _symmetric_centre(d, ok, cx, cy, ra, step=0.1, niter=2):
    """The centre about which ``d`` is most point-symmetric (least squares), near ``(cx, cy)``.

    Two rounds of a paraboloid fitted to the symmetric residual on a 3 x 3
    grid of trial centres ``step`` apart; each round moves at most
    1.5 ``step``, so a companion cannot drag the centre off the star.  This
    removes the windowed centroid's pixelisation bias (a few 0.01 px), which
    would otherwise read as asymmetry in sharp stars.
    """
    from scipy import ndimage

    ys, xs = np.nonzero(ok)
    sel = (xs - cx) ** 2 + (ys - cy) ** 2 <= ra**2
    xs, ys, dv = xs[sel].astype(float), ys[sel].astype(float), d[ys[sel], xs[sel]]
    okf = ok.astype(float)
    design = np.array([[1, i, j, i * i, j * j, i * j] for j in (-1, 0, 1) for i in (-1, 0, 1)], float)

    def sse(px, py):
        coords = [2 * py - ys, 2 * px - xs]
        rot = ndimage.map_coordinates(d, coords, order=3, mode="constant", cval=0.0)
        rok = ndimage.map_coordinates(okf, coords, order=1, mode="constant", cval=0.0) > 0.999
        return float(((dv - rot)[rok] ** 2).sum())

    if xs.size < 9:
        return cx, cy
    for _ in range(niter):
        g = [sse(cx + i * step, cy + j * step) for j in (-1, 0, 1) for i in (-1, 0, 1)]
        p = np.linalg.lstsq(design, np.asarray(g), rcond=None)[0]
        hess = np.array([[2 * p[3], p[5]], [p[5], 2 * p[4]]])
        try:
            dd = np.linalg.solve(hess, -p[1:3]) if np.all(np.linalg.eigvalsh(hess) > 0) else None
        except np.linalg.LinAlgError:
            dd = None
        if dd is None or not np.all(np.isfinite(dd)):
            j = int(np.argmin(g))
            dd = np.array([j % 3 - 1, j // 3 - 1], float)
        dd = np.clip(dd, -1.5, 1.5)
        cx, cy = cx + dd[0] * step, cy + dd[1] * step
    return cx, cy


def _star_quality(resid, raw, sig2, labels, lab, good, x, y, fwhm):
    """Blend and flat-top measurements of one star: ``(asymmetry, companion, peak_snr, flat_top, peak_raw)``.

    ``resid``: background-subtracted frame; ``raw``: the frame in the units
    the saturation level is in; ``sig2``: per-pixel noise variance;
    ``labels, lab``: the segmentation and this star's label (other sources'
    segments are left out: they are the isolation test's); ``good``: usable
    pixels.  The star is centred on its brightest smoothed pixel (not the
    segment's centroid, which a companion drags between the two), refined by a
    PSF-sized windowed centroid and then to the point of least asymmetry.
    """
    from scipy import ndimage

    nan = np.nan
    ny, nx = resid.shape
    s = max(fwhm, 1.0) * FWHM_TO_SIGMA_
    ra = 3.0 * fwhm + 2.0
    r = int(np.ceil(2 * ra + 3 * s + 2))
    ix, iy = int(round(x)), int(round(y))
    x0, x1, y0, y1 = max(ix - r, 0), min(ix + r + 1, nx), max(iy - r, 0), min(iy + r + 1, ny)
    lb = labels[y0:y1, x0:x1]
    ok = good[y0:y1, x0:x1] & ((lb == lab) | (lb == 0))
    d = np.where(ok, resid[y0:y1, x0:x1], 0.0)
    v = np.where(ok, sig2[y0:y1, x0:x1], 0.0)
    k = _gauss_kernel(s)

    def smooth(a, kern=k):
        return ndimage.convolve1d(ndimage.convolve1d(a, kern, axis=0, mode="constant"), kern, axis=1,
                                  mode="constant")

    sm = smooth(d)
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(float)
    near = ok & ((xx + x0 - x) ** 2 + (yy + y0 - y) ** 2 <= (1.5 * fwhm + 1) ** 2)
    if not near.any():
        return nan, nan, nan, 0, nan
    # start on the brightest lightly smoothed pixel: PSF-sized smoothing would merge an equal pair
    j = int(np.argmax(np.where(near, smooth(d, _gauss_kernel(0.5 * s)), -np.inf)))
    cy, cx = yy.flat[j], xx.flat[j]
    for _ in range(3):
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2)) * np.clip(d, 0, None)
        tot = w.sum()
        if not tot > 0:
            break
        cx, cy = (w * xx).sum() / tot, (w * yy).sum() / tot
    cx, cy = _symmetric_centre(d, ok, cx, cy, ra)
    # 180-degree rotation about (cx, cy): value at 2c - p, cubic interpolation
    coords = [2 * cy - yy, 2 * cx - xx]
    rot = ndimage.map_coordinates(d, coords, order=3, mode="constant", cval=0.0)
    rok = ndimage.map_coordinates(ok.astype(float), coords, order=1, mode="constant", cval=0.0) > 0.999
    rv = ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0)
    rr2 = (xx - cx) ** 2 + (yy - cy) ** 2
    ap = ok & rok & (rr2 <= ra**2)
    diff = np.where(ap, d - rot, 0.0)
    dvar = np.where(ap, v + rv, 0.0)
    flux = np.clip(d[ap], 0, None).sum()
    if not flux > 0:
        return nan, nan, nan, 0, nan
    bias = np.sqrt(2.0 / np.pi) * np.sqrt(dvar[ap]).sum()  # E|N(0, var)| = sqrt(2 var / pi)
    asym = max(np.abs(diff[ap]).sum() - bias, 0.0) / (2.0 * flux)
    # companion: the highest significant peak of the smoothed residual beyond half a FWHM
    dsm = smooth(diff)
    # the star's own photon noise: with only the background's rms it is missing, so a variance
    # a x (star + rotated star) is fitted (robustly) to the residual where the star dominates
    tot = np.where(ap, d + rot, 0.0)
    bright = ap & (tot > 3.0 * np.sqrt(np.maximum(dvar, 1e-300)))
    a = 0.0
    if np.count_nonzero(bright) >= 9:
        d2, v0, tb = diff[bright] ** 2, dvar[bright], tot[bright]
        if np.median(d2 / v0) > 0.455:  # chi2 with one degree of freedom has median 0.455
            lo, hi = 0.0, float(np.max(d2 / tb))
            for _ in range(40):
                a = 0.5 * (lo + hi)
                lo, hi = (a, hi) if np.median(d2 / (v0 + a * tb)) > 0.455 else (lo, a)
    dvar = dvar + a * np.clip(tot, 0, None)
    nsm = np.sqrt(smooth(dvar, k**2))
    main = float(sm[int(round(cy)), int(round(cx))])
    far = ap & (rr2 > (0.5 * fwhm) ** 2) & (nsm > 0)
    comp = 0.0
    if far.any() and main > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            hit = far & (dsm >= BLEND_PEAK_NSIGMA * nsm)
        if hit.any():
            comp = max(float(dsm[hit].max()) / main, 0.0)
    # flat top: pixels of the core within FLAT_TOLERANCE of its maximum
    core = ok & (rr2 <= max(fwhm, 1.5) ** 2)
    if not core.any():
        return asym, comp, nan, 0, nan
    top = float(np.max(d[core]))
    vmax = float(np.max(v[core]))
    peak_snr = top / np.sqrt(vmax) if vmax > 0 else np.inf
    nflat = int(np.count_nonzero(d[core] >= top - FLAT_TOLERANCE * abs(top)))
    rawc = raw[y0:y1, x0:x1][core]
    return asym, comp, peak_snr, nflat, float(np.nanmax(rawc)) if np.isfinite(rawc).any() else nan


# --------------------------------------------------------------------------
# Gaia


def _default_cache():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gsprep", "gaia")


def _gaia_client():
    """The astroquery Gaia TAP client (imported here: astroquery.gaia touches the network on import)."""
    from astroquery.gaia import GaiaClass

    return GaiaClass(show_server_messages=False)


def _arcsec(name, value):
    if isinstance(value, u.Quantity):
        if value.unit.physical_type != "angle":
            msg = f"{name} must be an angle or a number of arcsec, got unit {value.unit}"
            raise ValueError(msg)
        value = value.to_value(u.arcsec)
    return check_positive(name, value)


def gaia_query(ra, dec, radius_arcsec, columns=GAIA_COLUMNS, table="gaiadr3.gaia_source"):
    """ADQL cone query (no ``TOP``: every row in the cone comes back)."""
    cols = ", ".join(columns)
    return (
        f"SELECT {cols} FROM {table} WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {float(ra):.10f}, {float(dec):.10f}, {radius_arcsec / 3600.0:.10f}))"
    )


def gaia_stars(ra, dec, radius, *, cache=None, columns=GAIA_COLUMNS, refresh=False):
    """Gaia DR3 sources in a cone, cached on disk.

    The only function in gsprep that touches the network.  astroquery's
    ``cone_search`` silently stops at ``Gaia.ROW_LIMIT`` (50) rows; this builds
    the ADQL query itself without a ``TOP`` clause so every source comes back.

    Parameters
    ----------
    ra, dec : float
        Cone centre, ICRS degrees.
    radius : float or Quantity
        Cone radius, arcsec.
    cache : str or path-like or False, optional
        Folder for cached replies (default ``$XDG_CACHE_HOME/gsprep/gaia`` or
        ``~/.cache/gsprep/gaia``); ``False`` disables caching.  A cached reply
        is returned without touching the network.
    columns : sequence of str
        ``gaiadr3.gaia_source`` columns (default: source_id, ra, dec, pmra,
        pmdec, ref_epoch, phot_g_mean_mag).
    refresh : bool
        Query again even when a cached reply exists.

    Returns
    -------
    astropy.table.Table
        Lower-case column names; ``meta["query"]`` holds the ADQL.

    Raises
    ------
    ConnectionError
        The archive could not be reached; the message says how to work
        offline (a cached reply, or a local catalogue with :func:`crossmatch`).
    """
    radius_as = _arcsec("radius", radius)
    if not (-90.0 <= float(dec) <= 90.0):
        msg = f"dec must be within [-90, 90] degrees, got {dec!r}"
        raise ValueError(msg)
    query = gaia_query(float(ra) % 360.0, float(dec), radius_as, tuple(columns))
    path = None
    if cache is not False:
        folder = os.fspath(cache) if cache is not None else _default_cache()
        key = hashlib.sha256(query.encode()).hexdigest()[:20]
        path = os.path.join(folder, f"gaia-{key}.ecsv")
        if os.path.exists(path) and not refresh:
            return Table.read(path, format="ascii.ecsv")
    try:
        job = _gaia_client().launch_job_async(query)
        result = job.get_results()
    except Exception as exc:  # astroquery raises many kinds (HTTPError, OSError, ...)
        msg = (
            f"could not query the Gaia archive ({type(exc).__name__}: {exc}). To work offline, run once "
            f"with the network so the reply is cached{' in ' + os.path.dirname(path) if path else ''}, "
            "or pass a local catalogue (ECSV/FITS with ra, dec columns) as the reference to "
            "gsprep.crossmatch / select_stars(reference=...)"
        )
        raise ConnectionError(msg) from exc
    table = Table(result)
    for name in list(table.colnames):
        if name != name.lower():
            table.rename_column(name, name.lower())
    table.meta = {"query": query, "radius_arcsec": radius_as}
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp"
        table.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, path)
    return table


# --------------------------------------------------------------------------
# cross-match


def _radec(name, table):
    cols = {c.lower(): c for c in table.colnames}
    if "ra" not in cols or "dec" not in cols:
        msg = f"{name} needs 'ra' and 'dec' columns (degrees); it has {table.colnames}"
        raise ValueError(msg)
    ra = np.asarray(table[cols["ra"]], dtype=float)
    dec = np.asarray(table[cols["dec"]], dtype=float)
    return ra, dec


def _epoch_year(epoch):
    if isinstance(epoch, Time):
        return float(epoch.jyear)
    if isinstance(epoch, str):
        return float(Time(epoch).jyear)
    return float(epoch)


def crossmatch(catalog, reference, radius, *, epoch=None):
    """Match every row of ``catalog`` to its nearest ``reference`` source on the sky.

    Parameters
    ----------
    catalog, reference : astropy.table.Table
        Any tables with ``ra, dec`` columns in ICRS degrees (Gaia, a local
        catalogue, a user's list).
    radius : float or Quantity
        Match radius, arcsec.
    epoch : float, str or astropy.time.Time, optional
        The image's epoch (Julian year, an ISO date such as DATE-OBS, or a
        Time).  When given and ``reference`` has ``pmra, pmdec`` (mas/yr,
        ``pmra`` including cos dec) and ``ref_epoch`` (Julian year), the
        reference positions are first moved to that epoch.

    Returns
    -------
    astropy.table.Table
        A copy of ``catalog`` with ``matched`` (bool), ``sep`` (arcsec to the
        nearest reference source), ``ref_index`` (-1 if unmatched) and every
        reference column as ``ref_<name>`` (masked where unmatched).
    """
    radius_as = _arcsec("radius", radius)
    if len(reference) == 0:
        msg = "reference is empty: nothing to match against"
        raise ValueError(msg)
    ra, dec = _radec("catalog", catalog)
    rra, rdec = _radec("reference", reference)
    if epoch is not None and {"pmra", "pmdec", "ref_epoch"} <= set(reference.colnames):
        dt = _epoch_year(epoch) - np.asarray(reference["ref_epoch"], dtype=float)
        pmra = np.nan_to_num(np.asarray(reference["pmra"], dtype=float))
        pmdec = np.nan_to_num(np.asarray(reference["pmdec"], dtype=float))
        dt = np.nan_to_num(dt)
        rdec = rdec + pmdec * dt / 3.6e6
        rra = rra + pmra * dt / 3.6e6 / np.cos(np.radians(rdec))
    out = Table(catalog, copy=True)
    n = len(out)
    if n == 0:
        out["matched"] = np.zeros(0, bool)
        out["sep"] = np.zeros(0)
        out["ref_index"] = np.zeros(0, int)
        return out
    idx, sep, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(SkyCoord(rra * u.deg, rdec * u.deg))
    sep_as = sep.to_value(u.arcsec)
    matched = sep_as <= radius_as
    out["matched"] = matched
    out["sep"] = sep_as
    out["ref_index"] = np.where(matched, idx, -1)
    for name in reference.colnames:
        col = reference[name][idx]
        new = Table.Column(col) if not hasattr(col, "mask") else col
        out[f"ref_{name}"] = Table.MaskedColumn(np.asarray(new), mask=~matched)
    return out


# --------------------------------------------------------------------------
# selection


@dataclass(frozen=True)
class StarCriteria:
    """Star-selection knobs (GalfitS's ``generate_PSFs`` names).

    Attributes
    ----------
    flux_threshold : float
        Keep stars with ``flux > flux_threshold * mean(flux)`` of all detections.
    q_min : float
        Minimum axis ratio (minor / major).
    fwhm_nsigma : float
        Keep FWHM within this many robust sigmas (1.4826 MAD) of the median
        FWHM of the stars still in (GalfitS ``sigfwhm``).
    fwhm_max : float or None
        Maximum FWHM, pixels.
    fwhm_median : float or None
        Centre of the FWHM window, pixels (GalfitS ``medianfwhm``); default
        None: the median FWHM of the stars that pass the flux and axis-ratio
        cuts (the window's width is always the stars' own robust sigma).
    size : int
        Stamp size, pixels (odd): a star whose ``size x size`` box does not
        fit inside the frame is rejected ("edge").  The isolation and
        ``central_tol`` measurements are made by :func:`find_stars` in its
        own ``size`` box (``gsprep prepare`` passes the same size to both).
    isolate : float
        Maximum fraction of the stamp's source flux belonging to other sources.
    central_tol : int
        Maximum number of bad pixels within ``0.25 * size`` of the centre.
    drop : tuple
        Star ids (the catalogue's ``id`` column, the segment label) to drop
        by hand.
    drop_index : tuple
        0-based row indices of the catalogue passed to :func:`select_stars`
        (the table :func:`find_stars` returns, in its order; with
        ``find_stars(positions=...)`` the order of the user's list), to drop
        by hand: GalfitS's ``droppsf`` gives indices into the catalogue shown.
    gaia_radius : float or None
        Reference match radius, arcsec (default 1.5 x FWHM, from the
        catalogue's ``meta``).
    starcord_list : tuple of (ra, dec) or None
        The user's own star positions (ICRS degrees), used as the reference
        instead of Gaia.
    saturation : float or None
        Saturation (or linearity) level, in the frame's units before sky
        subtraction: stars whose core reaches it are rejected ("saturated").
        Default: the level :func:`find_stars` was given or read from the
        header (``SATURATE``, ``SATLEVEL``, ``MAXLIN``, ...).  Whatever the
        level, stars with a flat-topped core are rejected too.
    asymmetry_max : float
        Blend test: largest fraction of a star's light that is not
        point-symmetric about its peak (single stars: <= 0.05 at SNR >= 50).
    companion_max : float
        Blend test: largest significant companion peak, relative to the
        star's own peak, in the star minus its 180-degree rotation.
    """

    flux_threshold: float = 0.0
    q_min: float = 0.8
    fwhm_nsigma: float = 3.0
    fwhm_max: float | None = None
    size: int = 81
    isolate: float = 0.1
    central_tol: int = 0
    drop: tuple = field(default_factory=tuple)
    drop_index: tuple = field(default_factory=tuple)
    fwhm_median: float | None = None
    gaia_radius: float | None = None
    starcord_list: tuple | None = None
    saturation: float | None = None
    asymmetry_max: float = 0.06
    companion_max: float = 0.05

    def __post_init__(self):
        # checked and normalised here, so a bad value fails where it is given, not later in select_stars
        def put(name, value):
            object.__setattr__(self, name, value)

        put("flux_threshold", check_nonnegative("flux_threshold", self.flux_threshold))
        put("q_min", check_number("q_min", self.q_min, lower=0.0, upper=1.0))
        put("fwhm_nsigma", check_positive("fwhm_nsigma", self.fwhm_nsigma))
        put("fwhm_max", check_positive("fwhm_max", self.fwhm_max, allow_none=True))
        put("size", _check_size("size", self.size))
        put("isolate", check_nonnegative("isolate", self.isolate))
        put("central_tol", check_integer("central_tol", self.central_tol, lower=0))
        put("drop", _star_ids(self.drop))
        put("drop_index", _star_ids(self.drop_index, "drop_index", "0-based row indices", lower=0))
        put("fwhm_median", check_positive("fwhm_median", self.fwhm_median, allow_none=True))
        put("gaia_radius", check_positive("gaia_radius", self.gaia_radius, allow_none=True))
        put("starcord_list", _star_positions(self.starcord_list))
        put("saturation", check_positive("saturation", self.saturation, allow_none=True))
        put("asymmetry_max", check_positive("asymmetry_max", self.asymmetry_max))
        put("companion_max", check_positive("companion_max", self.companion_max))


def _star_ids(drop, name="drop", what="star ids", lower=None):
    """``drop`` as a tuple of ints: a sequence of star ids (or row indices), not one number or a string."""
    msg = f"{name} must be a sequence of {what} (integers), e.g. (3, 17), got {drop!r}"
    if isinstance(drop, (str, bytes)) or not np.iterable(drop):
        raise TypeError(msg)
    try:
        return tuple(check_integer(name, v, lower=lower) for v in drop)
    except (TypeError, ValueError):
        raise TypeError(msg) from None


def _star_positions(coords):
    """``starcord_list`` as a tuple of ``(ra, dec)`` pairs in range, or None."""
    if coords is None:
        return None
    msg = f"starcord_list must be a sequence of (ra, dec) pairs in degrees, got {coords!r}"
    if isinstance(coords, (str, bytes)) or not np.iterable(coords):
        raise TypeError(msg)
    out = []
    for pair in coords:
        if isinstance(pair, (str, bytes)) or not np.iterable(pair) or len(pair) != 2:
            raise TypeError(msg)
        out.append(check_ra_dec(*pair, names=("starcord_list ra", "starcord_list dec")))
    if not out:
        msg = "starcord_list is empty: give at least one (ra, dec) pair, or None"
        raise ValueError(msg)
    return tuple(out)


class NoStarsError(ValueError):
    """No star survived selection; ``.table`` holds every star with its reason."""

    def __init__(self, msg, table):
        super().__init__(msg)
        self.table = table


SELECT_COLUMNS = ("id", "flux", "q", "fwhm", "isolation", "central_bad")
STAGES = ("detected", "catalog", "reference", "flux", "saturated", "blend", "shape", "fwhm", "isolation", "edge", "central",
          "drop")


def select_stars(catalog, criteria=None, *, reference=None, epoch=None):
    """Select PSF stars in GalfitS's order, keeping the reason each one was dropped.

    Stages: reference match (within ``gaia_radius`` of ``reference`` or of
    ``criteria.starcord_list``), flux, saturated (core at or above the
    saturation level, or flat-topped), blend (asymmetric light or a companion
    peak), axis ratio, FWHM window, isolation, stamp inside the frame, bad
    central pixels, manual drop.  The saturated and blend stages need the
    columns of :func:`find_stars` (``peak_raw``, ``flat_top``, ``peak_snr``,
    ``asymmetry``, ``companion``) and are skipped for a catalogue without them.

    Parameters
    ----------
    catalog : astropy.table.Table
        From :func:`find_stars`.
    criteria : StarCriteria
    reference : astropy.table.Table, optional
        Catalogue with ``ra, dec`` (Gaia, Tycho-2, ...).
    epoch : optional
        Image epoch for proper motions (see :func:`crossmatch`).

    Returns
    -------
    astropy.table.Table
        ``catalog`` plus ``selected`` (bool) and ``reason`` ("" if selected);
        ``meta["funnel"]``: stars left after each stage.

    Raises
    ------
    NoStarsError
        Nothing survived; the message names the stage that removed the last
        star and gives the counts so far.
    """
    crit = criteria if criteria is not None else StarCriteria()
    if not isinstance(crit, StarCriteria):
        msg = f"criteria must be a StarCriteria, got {type(crit).__name__}"
        raise TypeError(msg)
    if not isinstance(catalog, Table):
        msg = f"catalog must be an astropy Table (from find_stars), got {type(catalog).__name__}"
        raise TypeError(msg)
    check_columns("catalog", catalog, SELECT_COLUMNS, what="select_stars needs the measurements of find_stars")
    if len(catalog) == 0:
        msg = "catalog is empty: no sources were detected to select PSF stars from"
        raise ValueError(msg)
    t = Table(catalog, copy=True)
    n = len(t)
    alive = np.ones(n, bool)
    reason = np.full(n, "", dtype=object)
    funnel = {"detected": n}

    def stage(name, ok, why):
        ok = np.asarray(ok, bool)
        kill = alive & ~ok
        for i in np.nonzero(kill)[0]:
            reason[i] = why(i)
        alive[kill] = False
        funnel[name] = int(alive.sum())

    stage.alive = lambda: alive

    bad_index = [i for i in crit.drop_index if i >= n]
    if bad_index:
        msg = f"criteria.drop_index {bad_index} out of range: the catalogue has {n} rows (0-based indices)"
        raise ValueError(msg)
    if "found" in t.colnames:  # the user's star list (find_stars(positions=...)): no source at some positions
        found = np.asarray(t["found"], bool)
        gx = np.asarray(t["given_x"], float) if "given_x" in t.colnames else np.asarray(t["x"], float)
        gy = np.asarray(t["given_y"], float) if "given_y" in t.colnames else np.asarray(t["y"], float)
        stage("catalog", found, lambda i: f"no source detected at the given position ({gx[i]:.1f}, {gy[i]:.1f})")
    ref = reference
    if crit.starcord_list is not None:
        sc = np.atleast_2d(np.asarray(crit.starcord_list, dtype=float))
        ref = Table({"ra": sc[:, 0], "dec": sc[:, 1]})
    if ref is not None:
        radius = crit.gaia_radius
        if radius is None:
            scale = t.meta.get("pixel_scale")
            fw = t.meta.get("fwhm")
            if scale is None or fw is None:
                msg = ("criteria.gaia_radius is needed: the catalogue's meta has no pixel_scale/fwhm "
                       "to default it to 1.5 x FWHM")
                raise ValueError(msg)
            radius = 1.5 * fw * scale
        m = crossmatch(t, ref, radius, epoch=epoch)
        for c in ("matched", "sep", "ref_index"):
            t[c] = m[c]
        stage("reference", m["matched"], lambda i: f"no reference star within {radius:.2f} arcsec")
    flux = np.asarray(t["flux"], float)
    thr = crit.flux_threshold * np.nanmean(flux)
    stage("flux", flux > thr, lambda i: f"flux {flux[i]:.4g} <= {crit.flux_threshold:g} x mean flux")
    # the FWHM window is measured on the stars that pass the flux and shape cuts, whether or not they are
    # later found saturated or blended, so that those cuts do not narrow it
    q = np.asarray(t["q"], float)
    window = alive & (q >= crit.q_min)
    fw = np.asarray(t["fwhm"], float)
    live = fw[window & np.isfinite(fw)] if alive.any() else fw[alive]
    if live.size:
        med = float(np.median(live))
        rs = max(1.4826 * float(np.median(np.abs(live - med))), 0.02 * med)
        if crit.fwhm_median is not None:  # GalfitS medianfwhm: the window's centre given, its width the stars'
            med = crit.fwhm_median
        lo, hi = med - crit.fwhm_nsigma * rs, med + crit.fwhm_nsigma * rs
        if crit.fwhm_max is not None:
            hi = min(hi, crit.fwhm_max)
    _saturated_stage(t, crit, stage)
    if {"asymmetry", "companion"} <= set(t.colnames):
        asym = np.nan_to_num(np.asarray(t["asymmetry"], float))
        comp = np.nan_to_num(np.asarray(t["companion"], float))
        # an undersampled star (FWHM ~1 px) is never quite point-symmetric on its pixel grid: where the
        # stars themselves say so (their median asymmetry), the limit follows them (5 robust sigmas above
        # the median), so only stars that stand out from the population are called blends
        a_max = crit.asymmetry_max
        pop = asym[alive & np.isfinite(np.asarray(t["asymmetry"], float))]
        if pop.size >= 10:
            med = float(np.median(pop))
            a_max = max(a_max, med + 5.0 * 1.4826 * float(np.median(np.abs(pop - med))))

        def why_blend(i):
            if asym[i] > a_max:
                return f"blend: {asym[i]:.2f} of the light is asymmetric > {a_max:.3g} (asymmetry_max or the stars')"
            return (f"blend: a companion peak {comp[i]:.2f} of the star's > companion_max="
                    f"{crit.companion_max:g}")

        stage("blend", (asym <= a_max) & (comp <= crit.companion_max), why_blend)
    q = np.asarray(t["q"], float)
    stage("shape", q >= crit.q_min, lambda i: f"axis ratio q={q[i]:.2f} < q_min={crit.q_min:g}")
    if live.size:
        stage("fwhm", (fw >= lo) & (fw <= hi),
              lambda i: f"FWHM {fw[i]:.2f} px outside [{lo:.2f}, {hi:.2f}]")
    else:
        funnel["fwhm"] = 0
    iso = np.asarray(t["isolation"], float)
    stage("isolation", iso <= crit.isolate,
          lambda i: f"not isolated: {iso[i]:.2f} of the stamp's flux from other sources > {crit.isolate:g}")
    inside = np.asarray(t["in_frame"], bool) if "in_frame" in t.colnames else np.ones(n, bool)
    shape = t.meta.get("shape")
    if shape is not None and crit.size != t.meta.get("size"):  # the criteria's stamp size, not find_stars' box
        h = crit.size // 2
        ix = np.round(np.nan_to_num(np.asarray(t["x"], float), nan=-1e9))
        iy = np.round(np.nan_to_num(np.asarray(t["y"], float), nan=-1e9))
        inside = (ix - h >= 0) & (iy - h >= 0) & (ix + h < shape[1]) & (iy + h < shape[0])
    stage("edge", inside, lambda i: "stamp does not fit inside the frame"
          + ("" if crit.size == t.meta.get("size") else f" ({crit.size} px)"))
    cb = np.asarray(t["central_bad"], int)
    stage("central", cb <= crit.central_tol,
          lambda i: f"{cb[i]} bad/saturated central pixels > central_tol={crit.central_tol}")
    ids, rows = set(crit.drop), set(crit.drop_index)
    stage("drop", [int(v) not in ids and i not in rows for i, v in enumerate(t["id"])],
          lambda i: f"dropped by hand (row {i})" if i in rows else "dropped by hand")
    t["selected"] = alive
    t["reason"] = np.asarray(reason, dtype=str)
    t.meta["funnel"] = funnel
    if not alive.any():
        last = next(s for s in STAGES[1:] if s in funnel and funnel[s] == 0)
        counts = ", ".join(f"{k}={v}" for k, v in funnel.items())
        msg = f"no star left after selection: the '{last}' stage removed the last one ({counts})"
        raise NoStarsError(msg, t)
    return t


def _saturated_stage(t, crit, stage):
    """Reject stars whose core reaches the saturation level or is flat-topped (reason "saturated")."""
    if not {"peak_raw", "flat_top", "peak_snr"} <= set(t.colnames):
        return
    level, source = crit.saturation, "StarCriteria.saturation"
    if level is None and t.meta.get("saturation") is not None:
        level, source = float(t.meta["saturation"]), t.meta.get("saturation_source", "find_stars")
    peak = np.asarray(t["peak_raw"], float)
    nflat = np.asarray(t["flat_top"], int)
    snr = np.nan_to_num(np.asarray(t["peak_snr"], float))
    flat = (nflat >= FLAT_NPIX) & (snr >= FLAT_MIN_SNR)
    over = np.zeros(len(t), bool)
    if level is not None:
        with np.errstate(invalid="ignore"):
            over = peak >= level

    def why(i):
        if over[i]:
            return f"saturated: core peak {peak[i]:.6g} >= saturation level {level:.6g} ({source})"
        return (f"saturated: flat-topped core ({nflat[i]} pixels within {100 * FLAT_TOLERANCE:g}% of its peak "
                f"{peak[i]:.6g})")

    n_before = int(stage.alive().sum())
    stage("saturated", ~(over | flat), why)
    if level is None and n_before > int(stage.alive().sum()):
        import warnings

        warnings.warn(
            f"no saturation level is known (none given, none in the header): {n_before - int(stage.alive().sum())} "
            "star(s) with flat-topped cores were rejected as saturated; give the level (StarCriteria(saturation=...), "
            "[criteria] saturation, gsprep psf --saturation) to reject non-linear stars below it too",
            SaturationWarning, stacklevel=3)


class SaturationWarning(UserWarning):
    """Stars were rejected as saturated by their flat tops alone: no saturation level is known."""


# --------------------------------------------------------------------------
# stamps


@dataclass(frozen=True)
class Stamps:
    """Star stamps for the PSF fit.

    Attributes
    ----------
    data, sigma : ndarray (n, size, size)
        Cut from the frame; NaN (data) / inf (sigma) off the frame.
    mask : ndarray of bool (n, size, size)
        True = excluded: off the frame, non-finite, the user's mask, or
        another source's (grown) segment.
    positions : ndarray (n, 2)
        Each star's ``(x, y)`` in its stamp, 0-based pixels.
    ids : ndarray of int
        Catalogue ids.
    origins : ndarray (n, 2)
        Frame pixel ``(x, y)`` of each stamp's pixel ``(0, 0)``.
    """

    data: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    ids: np.ndarray
    origins: np.ndarray


def extract_stamps(data, sigma, catalog, size, *, mask=None, segmentation=None, grow=2):
    """Cut ``size x size`` stamps around the (selected) stars of ``catalog``.

    Parameters
    ----------
    data, sigma : array (ny, nx)
        Frame and its sigma image.
    catalog : Table
        With ``x, y`` (0-based) and ``id``; when it has a ``selected``
        column only selected rows are cut.
    size : int
        Odd stamp size, pixels.
    mask : bool array, optional
        True = bad.
    segmentation : Segmentation or int array, optional
        Label image whose labels are the catalogue ids; pixels of other
        sources, grown by ``grow`` pixels, are masked in each stamp so
        neighbours do not leak into the PSF.

    Returns
    -------
    Stamps
    """
    from scipy import ndimage

    arr = as_image("data", data)
    sig = np.asarray(sigma, dtype=float)
    if sig.shape != arr.shape:
        msg = f"sigma has shape {sig.shape} but data has shape {arr.shape}"
        raise ValueError(msg)
    size = _check_size("size", size, arr.shape)
    bad = as_mask("mask", mask, arr.shape) | ~np.isfinite(arr) | ~np.isfinite(sig) | (sig <= 0)
    rows = catalog
    if "selected" in catalog.colnames:
        rows = catalog[np.asarray(catalog["selected"], bool)]
    if len(rows) == 0:
        msg = "catalog has no (selected) stars to cut stamps for"
        raise ValueError(msg)
    labels = getattr(segmentation, "labels", segmentation)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != arr.shape:
            msg = f"segmentation has shape {labels.shape} but data has shape {arr.shape}"
            raise ValueError(msg)
    ny, nx = arr.shape
    h = size // 2
    n = len(rows)
    out_d = np.full((n, size, size), np.nan)
    out_s = np.full((n, size, size), np.inf)
    out_m = np.ones((n, size, size), bool)
    pos = np.zeros((n, 2))
    origins = np.zeros((n, 2), int)
    ids = np.asarray(rows["id"], dtype=int) if "id" in rows.colnames else np.arange(n)
    for k, row in enumerate(rows):
        x, y = float(row["x"]), float(row["y"])
        ix, iy = int(round(x)), int(round(y))
        x0, y0 = ix - h, iy - h
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + size, nx), min(y0 + size, ny)
        if sx0 >= sx1 or sy0 >= sy1:
            continue
        dst = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
        src = (slice(sy0, sy1), slice(sx0, sx1))
        out_d[k][dst] = arr[src]
        out_s[k][dst] = sig[src]
        m = bad[src].copy()
        if labels is not None:
            other = (labels[src] > 0) & (labels[src] != ids[k])
            if grow > 0 and other.any():
                other = ndimage.binary_dilation(other, iterations=int(grow))
            m |= other
        out_m[k][dst] = m
        pos[k] = (x - x0, y - y0)
        origins[k] = (x0, y0)
    out_d[out_m] = np.where(np.isfinite(out_d[out_m]), out_d[out_m], 0.0)
    return Stamps(out_d, out_s, out_m, pos, ids, origins)


# --------------------------------------------------------------------------
# a plain stack (GalfitS's makestackpsf)


def stack_psf(stamps, *, method="median", border=2):
    """A plain normalised stack of the star stamps: GalfitS's ``makestackpsf`` alternative PSF.

    Each stamp has its local sky (the median of its unmasked pixels within
    ``border`` pixels of the edge) removed and is scaled to unit flux (sum
    of its unmasked pixels); the stamps are then combined pixel by pixel
    (``"median"`` or ``"mean"``, masked pixels left out) and the result is
    renormalised to sum 1.  There is no sub-pixel recentring (each stamp is
    centred on its star's nearest pixel), so the stack is broader than the
    fitted PSF by up to half a pixel of jitter: a quick look or a fallback,
    not a replacement for :func:`gsprep.fit_epsf`.

    Parameters
    ----------
    stamps : Stamps
        From :func:`extract_stamps`.
    method : {"median", "mean"}
    border : int
        Width of the sky frame, pixels.

    Returns
    -------
    ndarray (size, size)
        Native-pixel PSF, sum 1, float64.
    """
    from ._checks import check_choice

    check_choice("method", method, ("median", "mean"))
    data = np.asarray(stamps.data, dtype=float)
    bad = np.asarray(stamps.mask, bool) | ~np.isfinite(data)
    if data.ndim != 3 or len(data) == 0:
        msg = f"stamps must hold at least one (size, size) stamp, got data of shape {data.shape}"
        raise ValueError(msg)
    size = data.shape[-1]
    border = check_integer("border", border, lower=1, upper=size // 2)
    edge = np.zeros((size, size), bool)
    edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = True, True, True, True
    norm = np.full(data.shape, np.nan)
    for k in range(len(data)):
        good = ~bad[k]
        sky_pix = data[k][edge & good]
        img = data[k] - (float(np.median(sky_pix)) if sky_pix.size else 0.0)
        flux = float(img[good].sum())
        if good.any() and flux > 0:
            norm[k] = np.where(good, img / flux, np.nan)
    if not np.isfinite(norm).any():
        msg = "no stamp has positive flux on its unmasked pixels: nothing to stack"
        raise ValueError(msg)
    import warnings

    with warnings.catch_warnings():  # pixels masked in every stamp: all-NaN slices, set to 0 below
        warnings.filterwarnings("ignore", r"All-NaN slice|Mean of empty slice", RuntimeWarning)
        out = np.nanmedian(norm, axis=0) if method == "median" else np.nanmean(norm, axis=0)
    out = np.where(np.isfinite(out), out, 0.0)
    total = out.sum()
    if not total > 0:
        msg = "the stacked stamps sum to zero or less: nothing to normalise"
        raise ValueError(msg)
    return out / total

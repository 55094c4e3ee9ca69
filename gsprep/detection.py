"""Source detection and mask growth shared by the sky and mask stages.

``detect`` smooths the frame with a Gaussian of the PSF FWHM, thresholds it
at ``nsigma`` times the noise, and runs photutils' segmentation (with optional
deblending) and ``SourceCatalog``.  ``grow_sources`` turns a segmentation into
a mask in which every source is covered by an ellipse scaled to its own size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage

from ._checks import as_image, as_mask, check_nonnegative, check_positive

# photutils switches a segment's deblending to "linear" where its values are not all positive and says so;
# gsprep does not depend on the mode, so that one message is not passed on
DEBLEND_MODE_WARNING = "The deblending mode of one or more source labels"

__all__ = ["Segmentation", "detect", "grow_sources", "background_stats"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class Segmentation:
    """Result of :func:`detect`.

    Attributes
    ----------
    labels : ndarray of int
        Segmentation image, 0 = no source.
    table : astropy.table.Table
        One row per source: ``label, x, y`` (0-based centroid), ``ra, dec``
        (degrees, when a WCS was given), ``flux`` (sum of background-subtracted
        data in the segment), ``area`` (pixels), ``a, b`` (semi-major and
        semi-minor second-moment sizes, pixels), ``theta`` (radians,
        counter-clockwise from +x), ``peak``, ``fwhm`` (pixels), ``q`` (b / a),
        ``a_iso`` (semi-major axis of the ellipse with the segment's area and
        axis ratio, pixels).
    background, rms : float
        Sigma-clipped background level and noise used for the threshold.
    smoothed : ndarray
        The Gaussian-smoothed, background-subtracted frame.
    """

    labels: np.ndarray
    table: Table
    background: float
    rms: float
    smoothed: np.ndarray


def background_stats(data, bad):
    """Sigma-clipped (median, std) of the good pixels."""
    good = data[~bad]
    if good.size == 0:
        msg = "data: every pixel is masked or non-finite; nothing to detect on"
        raise ValueError(msg)
    _, med, std = sigma_clipped_stats(good, sigma=3.0, maxiters=10)
    if not np.isfinite(std) or std <= 0:
        std = float(np.std(good)) or 1.0
    return float(med), float(std)


def _empty_table(with_sky):
    names = ["label", "x", "y", "flux", "area", "a", "b", "theta", "peak", "fwhm", "q", "a_iso"]
    if with_sky:
        names[3:3] = ["ra", "dec"]
    return Table(names=names, dtype=[int] + [float] * (len(names) - 1))


def detect(data, *, fwhm, nsigma=3.0, npixels=5, deblend=False, nlevels=32, contrast=0.001,
           mask=None, sigma=None, wcs=None):
    """Detect sources on a Gaussian-smoothed frame.

    Parameters
    ----------
    data : array (ny, nx)
        Image; non-finite pixels are treated as masked.
    fwhm : float
        PSF FWHM in pixels; the smoothing kernel is a Gaussian of this FWHM.
    nsigma : float
        Threshold in units of the noise rms.
    npixels : int
        Minimum number of connected pixels above threshold.
    deblend : bool
        Split blended sources with photutils' ``deblend_sources``.
    nlevels, contrast : int, float
        Deblending parameters (photutils).
    mask : bool array, optional
        True = ignore this pixel.
    sigma : array, optional
        Per-pixel noise (the sigma image); when given the threshold is
        ``nsigma * sigma`` instead of a sigma-clipped global rms.
    wcs : astropy.wcs.WCS, optional
        Adds ``ra, dec`` (ICRS degrees) to the table.

    Returns
    -------
    Segmentation
    """
    arr = as_image("data", data)
    fwhm = check_positive("fwhm", fwhm)
    nsigma = check_positive("nsigma", nsigma)
    npixels = int(check_positive("npixels", npixels))
    bad = as_mask("mask", mask, arr.shape) | ~np.isfinite(arr)
    if bad.all():
        msg = "data: every pixel is masked or non-finite; nothing to detect on"
        raise ValueError(msg)
    bkg, rms = background_stats(arr, bad)
    filled = np.where(bad, bkg, arr) - bkg
    smoothed = ndimage.gaussian_filter(filled, fwhm * FWHM_TO_SIGMA, mode="nearest")
    if sigma is not None:
        sig = np.asarray(sigma, dtype=float)
        if sig.shape != arr.shape:
            msg = f"sigma must have the image's shape {arr.shape}, got {sig.shape}"
            raise ValueError(msg)
        sig = np.where(np.isfinite(sig) & (sig > 0), sig, np.inf)
        # smoothing lowers white noise by ~ 1 / (2 sqrt(pi) s); keep the threshold on
        # the unsmoothed noise, as photutils and GalfitS do (conservative).
        threshold = nsigma * sig
        rms = float(np.nanmedian(np.where(np.isfinite(sig), sig, np.nan)))
    else:
        threshold = nsigma * rms
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)  # no source: handled below
        segm = detect_sources(smoothed, threshold, npixels, mask=bad)
    if segm is not None and deblend:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", DEBLEND_MODE_WARNING, AstropyUserWarning)
            segm = deblend_sources(smoothed, segm, npixels, n_levels=int(nlevels),
                                   contrast=float(contrast), progress_bar=False)
    if segm is None:
        return Segmentation(np.zeros(arr.shape, dtype=np.int32), _empty_table(wcs is not None),
                            bkg, rms, smoothed)
    labels = np.asarray(segm.data, dtype=np.int32)
    table = source_table(filled, labels, smoothed=smoothed, bad=bad, wcs=wcs)
    return Segmentation(labels, table, bkg, rms, smoothed)


def source_table(data, labels, *, smoothed=None, bad=None, wcs=None):
    """Measurement table (see :class:`Segmentation`) for a label image."""
    from photutils.segmentation import SegmentationImage

    segm = SegmentationImage(labels)
    cat = SourceCatalog(np.where(bad, 0.0, data) if bad is not None else data, segm,
                        convolved_data=smoothed, mask=bad, wcs=wcs)
    t = Table()
    t["label"] = np.asarray(cat.label, dtype=int)
    t["x"] = np.asarray(cat.x_centroid, dtype=float)
    t["y"] = np.asarray(cat.y_centroid, dtype=float)
    if wcs is not None:
        sky = wcs.pixel_to_world(t["x"], t["y"]).icrs
        t["ra"] = sky.ra.deg
        t["dec"] = sky.dec.deg
    t["flux"] = np.asarray(cat.segment_flux, dtype=float)
    t["area"] = np.asarray(cat.area.value, dtype=float)
    t["a"] = np.asarray(cat.semimajor_axis.value, dtype=float)
    t["b"] = np.asarray(cat.semiminor_axis.value, dtype=float)
    t["theta"] = np.radians(np.asarray(cat.orientation.value, dtype=float))
    t["peak"] = np.asarray(cat.max_value, dtype=float)
    t["fwhm"] = np.asarray(cat.fwhm.value, dtype=float)
    a = np.nan_to_num(np.asarray(t["a"]), nan=1.0)
    b = np.nan_to_num(np.asarray(t["b"]), nan=1.0)
    q = np.clip(np.where(a > 0, b / np.where(a > 0, a, 1), 1.0), 0.05, 1.0)
    t["q"] = q
    t["a_iso"] = np.sqrt(np.asarray(t["area"]) / (np.pi * q))
    t["theta"] = np.nan_to_num(np.asarray(t["theta"]))
    return t


def grow_sources(labels, table, *, magnification=3.0, max_grow=100, addgrow=0, exclude=()):
    """Mask every source by an ellipse scaled to its own size.

    Each source (row of ``table``) is covered by its own segment plus an
    ellipse centred on its centroid, with its orientation and axis ratio, and
    semi-major axis ``min(magnification * a_iso, a_iso + max_grow) + addgrow``
    pixels, where ``a_iso`` is the semi-major axis of the ellipse with the
    segment's area: bright and big sources get big masks, faint specks small
    ones.

    Parameters
    ----------
    labels : int array
        Segmentation image.
    table : Table
        From :func:`detect` (needs ``label, x, y, q, theta, a_iso``).
    magnification : float
        Scale of the ellipse relative to the segment's size (>= 1).
    max_grow : float
        Cap, in pixels, on how far the ellipse extends beyond ``a_iso``.
    addgrow : float
        Pixels added to every ellipse's axes.
    exclude : iterable of int
        Labels not to mask (e.g. the target).

    Returns
    -------
    grown : bool array
        True = covered by a (non-excluded) source.
    owner : int array
        Label of the source whose ellipse covers the pixel (the nearest one
        in the ellipse metric where ellipses overlap), 0 elsewhere.
    """
    mag = check_positive("magnification", magnification)
    if mag < 1:
        msg = f"magnification must be >= 1, got {magnification!r}"
        raise ValueError(msg)
    max_grow = check_nonnegative("max_grow", max_grow)
    addgrow = check_nonnegative("addgrow", addgrow)
    labels = np.asarray(labels)
    ny, nx = labels.shape
    exclude = {int(e) for e in exclude}
    owner = np.where(np.isin(labels, list(exclude)), 0, labels).astype(np.int32)
    best = np.where(owner > 0, 0.0, np.inf)
    for row in table:
        lab = int(row["label"])
        if lab in exclude:
            continue
        a_iso = float(row["a_iso"])
        semi_a = min(mag * a_iso, a_iso + max_grow) + addgrow
        q = float(row["q"])
        semi_b = max(semi_a * q, min(semi_a, 0.5 + addgrow))
        th = float(row["theta"])
        xc, yc = float(row["x"]), float(row["y"])
        if not (np.isfinite(xc) and np.isfinite(yc)):
            continue
        rr = int(np.ceil(semi_a)) + 1
        x0, x1 = max(int(xc) - rr, 0), min(int(xc) + rr + 2, nx)
        y0, y1 = max(int(yc) - rr, 0), min(int(yc) + rr + 2, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx - xc, yy - yc
        u = dx * np.cos(th) + dy * np.sin(th)
        v = -dx * np.sin(th) + dy * np.cos(th)
        d = (u / semi_a) ** 2 + (v / semi_b) ** 2
        sub_best = best[y0:y1, x0:x1]
        take = (d <= 1.0) & (d < sub_best)
        sub_best[take] = d[take]
        owner[y0:y1, x0:x1][take] = lab
    return owner > 0, owner

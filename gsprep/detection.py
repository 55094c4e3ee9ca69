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

__all__ = ["Segmentation", "TwoPass", "background_stats", "detect", "detect_twopass", "grow_segments", "grow_sources",
           "isophote_growth"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: isophote_growth: the slope's range, and the growth's cap in units of the footprint's radius
SLOPE_MIN, SLOPE_MAX, GROW_CAP = 1.5, 6.0, 2.0
#: isophote_growth: a source whose peak is this many times its footprint's isophote is measured in its wing
BRIGHT = 16.0


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
    if good.size > 1_000_000:  # a regular subsample of a million pixels estimates these as well, in less time
        good = good[:: good.size // 1_000_000 + 1]
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


# ---------------------------------------------------------------------------
# Two-pass detection for masks (GALAPAGOS's cold / hot SExtractor runs)


@dataclass(frozen=True)
class TwoPass:
    """Settings of :func:`detect_twopass`; thresholds in units of the smoothed frame's noise.

    The *cold* pass finds bright and extended sources on the frame smoothed
    by a Gaussian ``cold_smooth`` times the PSF FWHM, deblended gently, so a
    galaxy stays one object.  The *hot* pass finds faint and compact ones on
    the frame smoothed by the PSF (a matched filter, so ``hot_nsigma`` is the
    detection significance of a point source), deblended hard.  Hot objects
    are looked for outside the cold ones only (GALAPAGOS keeps the hot
    objects that do not overlap cold ones); a hot object whose peak touches a
    cold one is that object's wing and joins its footprint.  The hot pass
    runs on the frame minus a mesh background of ``hot_box`` FWHM (as
    SExtractor does); the cold pass on the frame as given (a sky-subtracted
    cutout: the target's halo is the target's), or minus a mesh background
    of ``cold_box`` FWHM when set (a whole frame whose sky is not yet
    fitted, as :func:`gsprep.sky_mask` sees it).  Defaults chosen on the real frames
    of ``tests/data`` against ``sep`` (SExtractor's defaults); see
    ``benchmarks/bench_mask.py``.  A hot object needs a peak of ``hot_peak``
    (4) times the noise: at 3, pure noise gave 685 objects per million
    pixels (as many as the real faint sources of those frames), at 4 it
    gives 30, and 96% of sep's objects with SNR > 5 are still found.
    """

    hot_nsigma: float = 2.0
    hot_peak: float = 4.0
    hot_npixels: int = 5
    hot_contrast: float = 0.0005
    cold_nsigma: float = 30.0
    cold_npixels: int = 20
    cold_contrast: float = 0.005
    cold_smooth: float = 1.5
    hot_box: float = 10.0
    cold_box: float | None = None
    nlevels: int = 32

    def __post_init__(self):
        for name in ("hot_nsigma", "hot_peak", "cold_nsigma", "cold_smooth", "hot_box"):
            check_positive(name, getattr(self, name))
        if self.cold_box is not None:
            check_positive("cold_box", self.cold_box)
        for name in ("hot_contrast", "cold_contrast"):
            v = check_nonnegative(name, getattr(self, name))
            if v >= 1:
                msg = f"{name} must be in [0, 1), got {v!r}"
                raise ValueError(msg)
        for name in ("hot_npixels", "cold_npixels", "nlevels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                msg = f"{name} must be an integer >= 1, got {v!r}"
                raise ValueError(msg)


def local_background(data, bad, box, *, largest=64):
    """SExtractor-style mesh background (photutils ``Background2D``) of box ``box`` pixels (16 to ``largest``)."""
    from photutils.background import Background2D, SExtractorBackground

    ny, nx = data.shape
    b = int(np.clip(round(box), 16, largest))
    b = max(min(b, ny // 2, nx // 2), 4)
    if min(ny, nx) < 8:
        return np.zeros_like(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            bk = Background2D(data, (b, b), filter_size=3, mask=bad, bkg_estimator=SExtractorBackground())
    except ValueError:  # too few good pixels in every box: no local term
        return np.zeros_like(data)
    return np.where(bad, 0.0, np.asarray(bk.background))


def smoothed_noise(smoothed, bad):
    """Robust rms of a smoothed frame's good pixels (the noise the thresholds count in)."""
    good = smoothed[~bad]
    if good.size > 1_000_000:  # a regular subsample is as good an estimate, and the percentiles cost less
        good = good[:: good.size // 1_000_000 + 1]
    # from the low side only, where sources, however many (a crowded field, a galaxy's halo), do not
    # reach: the median depth of the pixels below zero (half-normal), and the distance between the
    # 2.3 % and 15.9 % points (1 sigma for Gaussian noise, whatever the background offset); each is
    # only ever widened by what else is there (a gradient, a mesh's dip), so the smaller is taken
    neg = good[good < 0]
    est = [np.median(-neg) / 0.6744897501960817] if neg.size >= 10 else []
    if good.size >= 20:
        est.append(np.diff(np.percentile(good, [2.275013194817921, 15.865525393145708]))[0])
    est = [e for e in est if np.isfinite(e) and e > 0]
    std = float(min(est)) if est else np.nan
    if not np.isfinite(std) or std <= 0:
        std = float(np.std(good)) or 1.0
    return float(std)


def _segment_pass(smoothed, threshold, npixels, contrast, nlevels, bad, min_peak=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        segm = detect_sources(smoothed, threshold, int(npixels), mask=bad)
        if segm is None:
            return np.zeros(smoothed.shape, dtype=np.int32)
        warnings.filterwarnings("ignore", DEBLEND_MODE_WARNING, AstropyUserWarning)
        # only segments with two or more local maxima can split: deblending the others costs time for nothing;
        # with ``min_peak``, only maxima that high count (a child under it would be dropped, its pixels lost)
        lab = np.asarray(segm.data)
        peaks = (smoothed >= ndimage.maximum_filter(smoothed, size=3)) & (lab > 0)
        if min_peak is not None:
            peaks &= smoothed >= min_peak
        count = np.bincount(lab[peaks], minlength=int(lab.max()) + 1)
        multi = np.flatnonzero(count >= 2)
        if len(multi):
            segm = deblend_sources(smoothed, segm, int(npixels), labels=multi, n_levels=int(nlevels),
                                   contrast=float(contrast), progress_bar=False)
    return np.asarray(segm.data, dtype=np.int32)


def detect_twopass(data, *, fwhm, passes=None, mask=None, sigma=None, wcs=None):
    """Cold (bright, extended) plus hot (faint, compact) detection, merged as GALAPAGOS does.

    Parameters
    ----------
    data : array (ny, nx)
        Image (sky-subtracted or not: a sigma-clipped median is removed).
    fwhm : float
        PSF FWHM, pixels.
    passes : TwoPass, optional
        Thresholds and deblending of the two passes (default ``TwoPass()``).
    mask : bool array, optional
        True = ignore this pixel.
    sigma : array, optional
        Per-pixel noise: thresholds follow its variations (scaled so its
        median matches the smoothed frame's measured noise).
    wcs : astropy.wcs.WCS, optional
        Adds ``ra, dec`` to the table.

    Returns
    -------
    Segmentation
        ``table`` has a column ``cold`` (True for cold-pass objects);
        ``rms`` is the noise of the hot-smoothed frame, ``smoothed`` that frame.
    """
    p = TwoPass() if passes is None else passes
    if not isinstance(p, TwoPass):
        msg = f"passes must be a gsprep.detection.TwoPass, got {type(p).__name__}"
        raise TypeError(msg)
    arr = as_image("data", data)
    fwhm = check_positive("fwhm", fwhm)
    bad = as_mask("mask", mask, arr.shape) | ~np.isfinite(arr)
    if bad.all():
        msg = "data: every pixel is masked or non-finite; nothing to detect on"
        raise ValueError(msg)
    bkg, _ = background_stats(arr, bad)
    filled = np.where(bad, 0.0, arr - bkg)
    scale = None
    if sigma is not None:
        sig = np.asarray(sigma, dtype=float)
        if sig.shape != arr.shape:
            msg = f"sigma must have the image's shape {arr.shape}, got {sig.shape}"
            raise ValueError(msg)
        ok = np.isfinite(sig) & (sig > 0) & ~bad
        if ok.any():
            scale = np.where(ok, sig / np.median(sig[ok]), np.inf)
    # the hot pass runs on the frame minus a local (mesh) background, as SExtractor does; the cold pass on
    # the frame as given (a galaxy's halo is part of it), both with the noise measured on the flattened frame
    flat = filled - local_background(filled, bad, p.hot_box * fwhm)
    passes_out = []
    cold = None
    for smooth, nsig, npix, contrast in ((p.cold_smooth, p.cold_nsigma, p.cold_npixels, p.cold_contrast),
                                         (1.0, p.hot_nsigma, p.hot_npixels, p.hot_contrast)):
        width = smooth * fwhm * FWHM_TO_SIGMA
        sm_flat = ndimage.gaussian_filter(flat, width, mode="nearest")
        sm_given = ndimage.gaussian_filter(filled, width, mode="nearest")
        # each estimate can only be widened by what it leaves in (the mesh's dips around a bright source,
        # a gradient left in the frame): the smaller is the noise
        rms = min(smoothed_noise(sm_flat, bad), smoothed_noise(sm_given, bad))
        if smooth == 1.0:
            sm = sm_flat
        elif p.cold_box is None:
            sm = sm_given
        else:
            coarse = filled - local_background(filled, bad, p.cold_box * fwhm, largest=256)
            sm = ndimage.gaussian_filter(coarse, width, mode="nearest")
        thr = nsig * rms if scale is None else nsig * rms * scale
        # the hot pass looks only outside the cold objects, so a faint source next to a bright one is not
        # merged with it at the low threshold and then lost with it
        keep_out = bad if cold is None else bad | (cold > 0)
        min_peak = None if cold is None else p.hot_peak * rms * (1.0 if scale is None else scale)
        segs = _segment_pass(sm, thr, npix, contrast, p.nlevels, keep_out, min_peak=min_peak)
        if cold is None:
            cold = segs
        passes_out.append((sm, rms, segs))
    (_, _, cold), (hot_sm, hot_rms, hot) = passes_out
    labels = cold.copy()
    n = int(labels.max())
    if hot.any():
        # a hot object whose peak touches a cold object is that object's wing (the ring between the two
        # thresholds), not a source of its own: it goes to the cold object's footprint
        near_cold = ndimage.binary_dilation(cold > 0, iterations=1)
        nhot = int(hot.max())
        peak_lab, peak_at = _label_peaks(hot_sm, hot)
        peak_thr = p.hot_peak * hot_rms * (1.0 if scale is None else scale)
        peak_thr = np.broadcast_to(peak_thr, hot.shape).ravel()[peak_at]
        is_wing = np.zeros(nhot + 1, bool)
        lut = np.zeros(nhot + 1, np.int32)
        touches = near_cold.ravel()[peak_at]
        is_wing[peak_lab[touches]] = True
        kept = peak_lab[~touches & (hot_sm.ravel()[peak_at] >= peak_thr)]  # in label order
        lut[kept] = np.arange(n + 1, n + 1 + len(kept), dtype=np.int32)
        n += len(kept)
        wing = is_wing[hot]
        new = lut[hot]
        labels = np.where(new > 0, new, labels)
        if wing.any() and (cold > 0).any():
            # the wings join the footprint of the object whose light they are: flooded downhill from the
            # objects (cold, and the hot ones kept) on the smoothed frame, so the valley between two objects
            # parts them and a bright object's wing never wraps around a fainter neighbour
            labels[wing] = _flood(hot_sm, labels, wing, hot_rms)[wing]
    labels, _, _ = relabel_sequential_int(labels)
    if labels.max() == 0:
        t = _empty_table(wcs is not None)
        t["cold"] = np.zeros(0, bool)
        return Segmentation(labels, t, bkg, hot_rms, hot_sm)
    table = source_table(filled, labels, smoothed=hot_sm, bad=bad, wcs=wcs)
    ncold = int(np.count_nonzero(np.unique(cold)))  # the distinct cold labels (0 not counted)
    table["cold"] = np.asarray(table["label"]) <= ncold  # relabelling keeps the order: cold labels come first
    return Segmentation(labels, table, bkg, hot_rms, hot_sm)


def _label_peaks(values, labels):
    """Labels present (ascending) and the flat index of each one's highest pixel (the first, in raster order, on a tie)."""
    flat = np.flatnonzero(labels)
    if flat.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    lab = labels.ravel()[flat]
    order = np.lexsort((flat, -values.ravel()[flat], lab))
    lab_sorted = lab[order]
    first = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
    return lab_sorted[first], flat[order][first]


def _flood(smoothed, seeds, free, rms):
    """``seeds`` (labels) grown over the ``free`` pixels downhill on ``smoothed`` (watershed).

    A flooding watershed (scikit-image): level by level, each seed takes the
    free pixels next to it, so two objects part along the valley between
    them; a brighter object never wraps around a fainter one.
    """
    from skimage.segmentation import watershed

    region = free | (seeds > 0)
    t = np.arcsinh(np.where(region, smoothed, 0.0) / max(rms, 1e-30))
    markers = np.where(seeds > 0, seeds, 0).astype(np.int32)
    out = watershed(-t, markers, mask=region, connectivity=2)
    return np.where(free & (out > 0), out, 0)


def relabel_sequential_int(labels):
    """Labels renumbered 1..n in increasing order of the old values; returns (labels, old, new)."""
    old = np.unique(labels)
    old = old[old > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[old] = np.arange(1, len(old) + 1, dtype=np.int32)
    return lut[labels], old, lut[old]


def isophote_growth(labels, table, smoothed, *, rms, pixel_rms, floor, fwhm, level=0.2, exclude=()):
    """How far each source's light reaches beyond its footprint, from the slope of its own isophotes.

    On the PSF-smoothed frame (noise ``rms``), a source's footprint ends at
    the isophote ``L1`` (its faintest pixel, at least ``floor`` times
    ``rms``) and encloses the area of a circle of radius ``r1``; its pixels
    above ``2 L1`` that of a circle of radius ``r2``.  The profile's
    logarithmic slope there, ``s = ln 2 / ln(r1 / r2)``, extrapolated as a
    power law (shallower than the Gaussian or Moffat wing it meets, so on
    the safe side) falls to ``level`` times the pixel noise ``pixel_rms`` at
    ``r1 (L1 rms / (level pixel_rms)) ** (1 / s)``; the growth is that
    radius less ``r1``, at most twice the source's half-width (so a trail
    grows by its width, not its length).  A faint source (peak under
    ``BRIGHT`` = 16 times ``L1``), whose footprint is its core, whose slope
    is shallower than that of the wing beyond, takes no shallower a slope
    than the PSF-smoothed PSF's Gaussian core at ``r1``, ``r1^2 / (2
    sigma^2)``; one too faint for two isophotes takes that slope.  Bright
    sources with broad wings get wide margins, faint ones and steep stars
    narrow ones.

    Parameters
    ----------
    labels : int array
        Segmentation.
    table : Table
        One row per source (needs ``label``).
    smoothed : array
        The PSF-smoothed, background-subtracted frame the segments come from.
    rms, pixel_rms : float
        Noise of ``smoothed`` and of one pixel of the frame.
    floor : float
        The detection threshold, in units of ``rms``.
    fwhm : float
        PSF FWHM, pixels.
    level : float
        Surface brightness, in units of ``pixel_rms``, down to which a
        source's light is covered.
    exclude : iterable of int
        Labels to skip.

    Returns
    -------
    dict
        ``label: growth`` in pixels (>= 0).
    """
    level = check_positive("level", level)
    fwhm = check_positive("fwhm", fwhm)
    labels = np.asarray(labels)
    exclude = {int(e) for e in exclude}
    slices = ndimage.find_objects(labels)
    rms = max(float(rms), 1e-30)
    s2 = 2.0 * (fwhm * FWHM_TO_SIGMA) ** 2  # variance of the PSF smoothed by the PSF (Gaussian core)
    out = {}
    for row in table:
        lab = int(row["label"])
        if lab in exclude or lab > len(slices) or slices[lab - 1] is None:
            continue
        sl = slices[lab - 1]
        v = np.asarray(smoothed[sl])[labels[sl] == lab] / rms
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[lab] = 0.0
            continue
        # the faintest isophote the segment's own pixels trace all round (a deblended piece's edge
        # against its neighbour is not one): its tenth percentile, never below the threshold
        l1 = max(float(floor), float(np.percentile(v, 10)))
        a1 = max(int(np.count_nonzero(v >= l1)), 1)
        a2 = int(np.count_nonzero(v >= 2.0 * l1))
        # the cap is in units of the source's half-width (a trail's growth is bounded by its width)
        q = float(row["q"]) if "q" in row.colnames and np.isfinite(row["q"]) else 1.0
        sq = np.sqrt(np.clip(q, 0.05, 1.0))
        r1 = np.sqrt(a1 / np.pi)
        core = r1**2 / (2.0 * s2)  # the slope of the PSF-smoothed PSF's Gaussian core at r1
        peak = float(np.max(v))
        if peak >= 4.0 * l1 and 3 <= a2 < a1:
            slope = np.log(2.0) / np.log(r1 / np.sqrt(a2 / np.pi))
            if peak < BRIGHT * l1:
                # a faint source's footprint is its core, whose slope is shallower than the wing beyond:
                # no shallower than the PSF's core there (a bright source's isophotes lie in its own wing)
                slope = max(slope, core)
        else:
            slope = core
        slope = float(np.clip(slope, SLOPE_MIN, SLOPE_MAX))
        ratio = l1 * rms / (level * max(float(pixel_rms), 1e-30))
        r_all = np.sqrt(v.size / np.pi)
        g = float(r1 * ratio ** (1.0 / slope)) - r_all if ratio > 1 else 0.0
        out[lab] = float(np.clip(g, 0.0, GROW_CAP * r_all * sq))
    return out


def grow_segments(labels, table, *, magnification=2.0, max_grow=100, addgrow=0, min_grow=0, exclude=(), growth=None):
    """Mask every source by its own segment dilated in proportion to its size.

    Each source's segment is grown by ``g = min((magnification - 1) * r +
    min_grow, max_grow) + addgrow`` pixels, where ``r = sqrt(area / pi)`` is the
    radius of the circle with the segment's area: bright and big sources
    get wide margins, faint specks narrow ones, and the mask follows the
    segment's own shape, so two stars merged in one segment get two round
    masks rather than one long ellipse.  ``growth`` (``label: pixels``, e.g.
    from :func:`isophote_growth`) replaces ``(magnification - 1) * r`` for the
    labels it holds.

    Returns
    -------
    grown : bool array
        True = covered by a (non-excluded) source.
    owner : int array
        Label of the source whose grown segment covers the pixel (the
        nearest one in units of its growth where they overlap), 0 elsewhere.
    """
    mag = check_positive("magnification", magnification)
    if mag < 1:
        msg = f"magnification must be >= 1, got {magnification!r}"
        raise ValueError(msg)
    max_grow = check_nonnegative("max_grow", max_grow)
    addgrow = check_nonnegative("addgrow", addgrow)
    min_grow = check_nonnegative("min_grow", min_grow)
    labels = np.asarray(labels)
    ny, nx = labels.shape
    exclude = {int(e) for e in exclude}
    owner = np.where(np.isin(labels, list(exclude)), 0, labels).astype(np.int32)
    best = np.where(owner > 0, 0.0, np.inf)
    slices = ndimage.find_objects(labels)
    for row in table:
        lab = int(row["label"])
        if lab in exclude or lab > len(slices) or slices[lab - 1] is None:
            continue
        own_g = growth.get(lab) if growth is not None else None
        if own_g is None:
            g = min((mag - 1.0) * np.sqrt(float(row["area"]) / np.pi) + min_grow, max_grow) + addgrow
        else:
            g = min(max(float(own_g), min_grow), max_grow) + addgrow
        if g <= 0:
            continue
        sy, sx = slices[lab - 1]
        r = int(np.ceil(g)) + 1
        y0, y1 = max(sy.start - r, 0), min(sy.stop + r, ny)
        x0, x1 = max(sx.start - r, 0), min(sx.stop + r, nx)
        own = labels[y0:y1, x0:x1] == lab
        d = ndimage.distance_transform_edt(~own) / g
        sub_best = best[y0:y1, x0:x1]
        take = (d <= 1.0) & (d < sub_best)
        sub_best[take] = d[take]
        owner[y0:y1, x0:x1][take] = lab
    return owner > 0, owner

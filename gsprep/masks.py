"""Masks that hide a cutout's neighbours and keep the target (GalfitS's ``generate_cutmask``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.segmentation import SegmentationImage, deblend_sources
from scipy import ndimage

from ._bits import BAD, NEIGHBOUR, OFF_FRAME, SATURATED, USER
from ._checks import as_image, as_mask, check_pixel, check_positive
from .cutouts import Cutout
from .detection import (
    DEBLEND_MODE_WARNING,
    FWHM_TO_SIGMA,
    TwoPass,
    detect,
    detect_twopass,
    grow_segments,
    isophote_growth,
    smoothed_noise,
    source_table,
)

__all__ = ["Mask", "TargetNotFoundError", "cutout_mask"]

#: every neighbour's mask reaches this many PSF FWHMs beyond its footprint, whatever its size (the PSF's wings)
PSF_GROW = 0.5


class TargetNotFoundError(ValueError):
    """No source was detected at the cutout centre."""


@dataclass(frozen=True)
class Mask:
    """Result of :func:`cutout_mask`.

    Attributes
    ----------
    mask : ndarray of uint8
        1 = masked (excluded from the fit), 0 = good; ``bits != 0``.
    bits : ndarray of int16
        Why each pixel is masked, OR of :data:`gsprep.MASK_BITS` values:
        1 neighbour, 2 bad / non-finite, 4 off the frame, 8 user, 16 saturated.
    target_label : int
        Label of the target's segment in ``labels`` (0 if none).
    labels : ndarray of int
        Segmentation image used (after deblending the target).
    table : astropy.table.Table
        Measurements of every segment (see :class:`gsprep.Segmentation`).
    """

    mask: np.ndarray
    bits: np.ndarray
    target_label: int
    labels: np.ndarray
    table: Table

    @property
    def n_neighbours(self):
        """Number of masked neighbouring sources."""
        return int(np.count_nonzero(self.table["label"] != self.target_label))


def _find_target(labels, center, radius):
    ny, nx = labels.shape
    cx, cy = center
    ix, iy = round(cx), round(cy)
    if 0 <= ix < nx and 0 <= iy < ny and labels[iy, ix] > 0:
        return int(labels[iy, ix])
    r = int(np.ceil(radius))
    y0, y1, x0, x1 = max(iy - r, 0), min(iy + r + 1, ny), max(ix - r, 0), min(ix + r + 1, nx)
    sub = labels[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = np.where(sub > 0, (xx - cx) ** 2 + (yy - cy) ** 2, np.inf)
    if not np.isfinite(d2).any() or d2.min() > radius**2:
        return 0
    return int(sub.flat[np.argmin(d2)])


def _deblend_target(smoothed, labels, target, npixels, nlevels, contrast, center):
    only = np.where(labels == target, target, 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", DEBLEND_MODE_WARNING, AstropyUserWarning)  # the mode does not matter here
        child = deblend_sources(smoothed, SegmentationImage(only), npixels,
                                n_levels=int(nlevels), contrast=float(contrast), progress_bar=False)
    kids = np.asarray(child.data)
    if len(np.unique(kids[kids > 0])) <= 1:
        return labels, target
    out = labels.copy()
    base = int(labels.max())
    inside = kids > 0
    out[inside] = kids[inside] + base
    new_target = _find_target(np.where(inside, out, 0), center, np.inf)
    return out, new_target


def _saddle(sm, region, a, b, lo, hi, iters=12):
    """Levels (joined, apart) bracketing the highest at which pixels ``a`` and ``b`` are joined in ``region``."""
    struct = np.ones((3, 3), bool)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lab, _ = ndimage.label(region & (sm >= mid), structure=struct)
        if lab[a] > 0 and lab[a] == lab[b]:
            lo = mid
        else:
            hi = mid
    return lo, hi


def _annulus_median(img, ok, k, r):
    """Median of ``img[ok]`` in each annulus ``k``, interpolated in ``r`` (at each annulus' mean radius)."""
    kk, rr, vals = k[ok], r[ok], img[ok]
    order = np.argsort(kk, kind="stable")
    kk, rr, vals = kk[order], rr[order], vals[order]
    starts = np.flatnonzero(np.r_[True, kk[1:] != kk[:-1]])
    stops = np.r_[starts[1:], len(kk)]
    med = [np.median(vals[a:b]) for a, b in zip(starts, stops, strict=True)]
    centres = [np.mean(rr[a:b]) for a, b in zip(starts, stops, strict=True)]
    return np.interp(r, centres, med)


def _annulus_scatter(resid, ok, r, width):
    """Robust scatter (1.4826 MAD) of ``resid[ok]`` in annuli ``width`` wide, interpolated in ``r``."""
    res_ok = resid[ok]
    kb = (r[ok] / width).astype(int)
    scat, rc = [], []
    for b in np.unique(kb):
        v = res_ok[kb == b]
        if v.size >= 8:
            scat.append(1.4826 * np.median(np.abs(v - np.median(v))))
            rc.append((b + 0.5) * width)
    return np.interp(r, rc, scat) if scat else np.zeros_like(r)


def split_inner(data, labels, target, center, *, q, theta, rms, fwhm, nsigma=4.0, bad=None):
    """Neighbours inside the target's segment, each split off with its own pixels.

    The target's smooth light is modelled by the median of its segment in
    elliptical annuli (axis ratio ``q``, angle ``theta`` radians, around
    ``center``), so a neighbour sitting on the target, too faint to make a
    peak of its own in the image, still stands out in the residual.  The
    residual is smoothed by a Gaussian of ``fwhm`` (the detection's matched
    filter, whose noise is ``rms``); each local maximum more than one
    ``fwhm`` from the centre and at least ``nsigma * rms`` high is a
    neighbour, its pixels the residual above half its peak around it.

    Parameters
    ----------
    data : array
        Background-subtracted image (non-finite pixels ignored).
    labels : int array
        Segmentation; ``target`` is the target's label.

    Returns
    -------
    list of (bool array, (x, y))
        Per neighbour: its pixels (full frame) and its peak.
    """
    seg = labels == target
    if not seg.any():
        return []
    ny, nx = labels.shape
    pad = int(np.ceil(2 * fwhm)) + 1
    sl0 = ndimage.find_objects(seg.astype(np.int8))[0]
    y0, y1 = max(sl0[0].start - pad, 0), min(sl0[0].stop + pad, ny)
    x0, x1 = max(sl0[1].start - pad, 0), min(sl0[1].stop + pad, nx)
    region = seg[y0:y1, x0:x1]
    img = np.asarray(data, dtype=float)[y0:y1, x0:x1]
    ok = region & np.isfinite(img)
    if bad is not None:
        ok &= ~np.asarray(bad, bool)[y0:y1, x0:x1]
    if ok.sum() < 10:
        return []
    cx, cy = center[0] - x0, center[1] - y0
    yy, xx = np.mgrid[: y1 - y0, : x1 - x0]
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    qq = float(np.clip(q, 0.2, 1.0))
    r = np.sqrt(u**2 + (v / qq) ** 2)
    # annuli 0.5 px wide in the core (the profile's cusp), 0.5 FWHM (at least 1 px) further out
    wide = max(1.0, 0.5 * fwhm)
    inner_r = 3.0 * fwhm
    edges = np.concatenate([np.arange(0.0, inner_r, 0.5), np.arange(inner_r, float(r[ok].max()) + wide, wide)])
    k = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, len(edges) - 1)
    kfac = 1.0 / (2.0 * np.sqrt(np.pi) * fwhm * FWHM_TO_SIGMA)
    use = ok
    for _ in range(2):  # the second time without the pixels of what stood out the first (less absorbed)
        model = _annulus_median(img, use, k, r)
        resid = np.where(ok, img - model, 0.0)
        # the noise around the model, in annuli 2 FWHM wide (a neighbour a small part of each), the target's
        # own photon noise included, scaled to the smoothed frame; never below the sky's
        # measured on the residual less its mirror image (over sqrt 2), which the target's symmetric misfit
        # (see below) does not widen
        flip = ndimage.map_coordinates(resid, [2.0 * cy - yy, 2.0 * cx - xx], order=0, mode="constant", cval=np.nan)
        both = ok & np.isfinite(flip)
        anti = np.where(both, (resid - np.nan_to_num(flip)) / np.sqrt(2.0), 0.0)
        scatter = _annulus_scatter(anti, both, r, 2.0 * fwhm) if both.sum() >= 50 else \
            _annulus_scatter(resid, ok, r, 2.0 * fwhm)
        noise = np.maximum(scatter * kfac, rms)
        sm = ndimage.gaussian_filter(resid, fwhm * FWHM_TO_SIGMA, mode="constant") / noise
        # a galaxy is point-symmetric about its centre, to first order, and a neighbour is not: what the
        # residual holds at both a pixel and its mirror image (isophotes a little flatter or turned than the
        # ellipse assumed, a bar, two spiral arms) is the target's (as the SDSS deblender's templates), taken
        # off where it is itself over one sigma (noise at the mirror of a neighbour is not taken off it)
        mirror = ndimage.map_coordinates(sm, [2.0 * cy - yy, 2.0 * cx - xx], order=1, mode="constant", cval=0.0)
        sym = np.minimum(sm, mirror)
        sm = sm - np.where(sym > 1.0, sym, 0.0)
        use = ok & (sm < 2.0)
    size = max(3, round(fwhm) | 1)
    local = np.where(region, sm, -np.inf)
    is_max = region & (sm >= ndimage.maximum_filter(local, size=size, mode="constant", cval=-np.inf))
    is_max &= (sm >= nsigma) & (np.hypot(dx, dy) > fwhm)
    py, px = np.nonzero(is_max)
    out = []
    taken = np.zeros(region.shape, bool)
    ic = (int(np.clip(round(cy), 0, y1 - y0 - 1)), int(np.clip(round(cx), 0, x1 - x0 - 1)))
    max_area = 4.0 * np.pi * fwhm**2  # a compact source: larger ones are the cold pass's to split off
    for i in np.argsort(-sm[py, px]):
        pk = (int(py[i]), int(px[i]))
        if taken[pk]:
            continue
        top = float(sm[pk])
        lab, _ = ndimage.label(region & (sm >= 0.5 * top), structure=np.ones((3, 3), bool))
        piece = lab == lab[pk]
        if piece[ic]:  # joined to the centre's residual: cut at the saddle between the two
            _, hi = _saddle(sm, region, pk, ic, 0.5 * top, top)
            if top - hi < 0.5 * nsigma:
                continue
            lab, _ = ndimage.label(region & (sm >= hi), structure=np.ones((3, 3), bool))
            piece = lab == lab[pk]
            if piece[ic]:
                continue
        if piece.sum() > max_area:
            continue
        taken |= piece
        full = np.zeros(labels.shape, bool)
        full[y0:y1, x0:x1] = piece
        out.append((full, (pk[1] + x0, pk[0] + y0)))
    return out


def _grow_inner(piece, peak, center, g, shape, keep):
    """Pixels within ``g`` of an inner neighbour's piece, nearer its peak than the target's centre,
    and more than ``keep`` pixels from that centre."""
    ys, xs = np.nonzero(piece)
    px, py = peak
    r = int(np.ceil(g)) + 1
    ny, nx = shape
    y0, y1 = max(ys.min() - r, 0), min(ys.max() + r + 1, ny)
    x0, x1 = max(xs.min() - r, 0), min(xs.max() + r + 1, nx)
    d = ndimage.distance_transform_edt(~piece[y0:y1, x0:x1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dc = np.hypot(xx - center[0], yy - center[1])
    nearer = (np.hypot(xx - px, yy - py) < dc) & (dc > keep)
    out = np.zeros(shape, bool)
    out[y0:y1, x0:x1] = (d <= g) & nearer
    return out


def cutout_mask(data, *, fwhm, nsigma=None, npixels=None, deblend=None, nlevels=32, contrast=0.001,
                magnification=None, max_grow=100, addgrow=0, target_radius=None, keep_target=True,
                bad=None, saturation=None, sigma=None, center=None, off_frame=None,
                require_target=True, detection="twopass", passes=None, split_nsigma=4.0, wing_level=0.1):
    """Mask the neighbours of the target in a cutout, keeping the target's own light.

    Sources are found by a two-pass detection (``detection="twopass"``, the
    default; :func:`gsprep.detection.detect_twopass`): a *cold* pass for
    bright and extended sources, deblended gently, and a *hot* pass for faint
    and compact ones outside them, as GALAPAGOS runs SExtractor for GALFIT.
    ``detection="single"`` is the one-threshold :func:`gsprep.detect` of
    earlier versions.  The target is the segment under ``center`` (default
    the central pixel), or the nearest one within ``target_radius`` pixels.
    A neighbour *on* the target (a compact peak, more than one FWHM from the
    centre, ``split_nsigma`` times the noise high in the residual of a model
    of the target: the median of its segment in elliptical annuli; see
    :func:`split_inner`) is split off and masked, on the pixels nearer to it
    than to the target's centre and never within half a FWHM of that centre.
    Every other source is masked by its footprint grown as far as its own
    light reaches above ``wing_level`` times the pixel noise, extrapolated from the
    slope of its isophotes (:func:`gsprep.detection.isophote_growth`; at
    least ``fwhm / 2``, at most ``max_grow``, plus ``addgrow`` pixels), so a
    bright galaxy's wings are covered and a faint speck costs little; or,
    when ``magnification`` is given, by ``min((magnification - 1) * r +
    fwhm / 2, max_grow) + addgrow`` pixels, ``r`` the radius of the circle
    with the footprint's area (:func:`gsprep.detection.grow_segments`).  The
    target's own segment is never masked by another source's growth.

    Parameters
    ----------
    data : array (ny, nx) or Cutout
        The (sky-subtracted) cutout.  A :class:`gsprep.Cutout` also supplies
        ``off_frame``.
    fwhm : float
        PSF FWHM, pixels.
    nsigma, npixels : float, int, optional
        ``detection="twopass"``: the hot pass's threshold (units of the
        PSF-smoothed frame's noise, default ``TwoPass().hot_nsigma``) and
        minimum area.  ``"single"``: the threshold in units of the frame's
        noise (default 3) and minimum area (default 5).
    deblend : bool, optional
        Split neighbours off the target's segment.  Default True for
        ``"twopass"`` (by peaks, see above), False for ``"single"`` (by
        photutils' deblending, ``nlevels`` and ``contrast``).
    nlevels, contrast : int, float
        photutils deblending parameters (``detection="single"``).
    magnification : float, optional
        Grow each neighbour in proportion to its footprint's size, by this
        factor (>= 1; GalfitS's ``magnification``), instead of by its
        measured light (default; see above).
    max_grow, addgrow : float
        Cap on the growth and pixels added to every growth.
    target_radius : float, optional
        Search radius for the target, pixels (default ``2 * fwhm``).
    keep_target : bool
        False masks the target too (bit ``NEIGHBOUR``).
    bad : bool array, optional
        The user's own mask (True = masked), bit ``USER``.
    saturation : float, optional
        Pixels at or above this value get bit ``SATURATED``.
    sigma : array, optional
        Sigma image; detection thresholds follow it.
    center : (x, y), optional
        0-based target position in the cutout.
    off_frame : bool array, optional
        Pixels outside the parent frame, bit ``OFF_FRAME``.
    require_target : bool
        When no source is found at the centre: raise
        :class:`TargetNotFoundError` (default), or, if False, warn and
        mask every detected source.
    detection : {"twopass", "single"}
        Detection used (see above).
    passes : gsprep.detection.TwoPass, optional
        All the two-pass settings (``nsigma`` and ``npixels``, when given,
        replace its hot-pass ones).
    split_nsigma : float
        Height, in noise units of the smoothed residual, a peak on the
        target needs to be split off as a neighbour.
    wing_level : float
        Surface brightness, in units of the pixel noise, down to which each
        neighbour's light is masked (when ``magnification`` is not given).

    Returns
    -------
    Mask

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from gsprep import cutout
    >>> from gsprep.simulate import demo_frame
    >>> frame, header = demo_frame(fwhm=3.0, shape=(201, 201), n_stars=20)   # sky about 21
    >>> cut = cutout(frame - 21.0, WCS(header), 150.1, 2.2, 20.0)   # 101 x 101 px, the target at (50, 50)
    >>> m = cutout_mask(cut, fwhm=3.0)
    >>> bool(m.mask[50, 50]), bool(m.mask[15, 95])   # the target kept, its neighbour masked
    (False, True)
    """
    if isinstance(data, Cutout):
        if off_frame is None:
            off_frame = data.off_frame
        if center is None:
            center = data.center
        data = data.data
    if detection not in ("twopass", "single"):
        msg = f"detection must be 'twopass' or 'single', got {detection!r}"
        raise ValueError(msg)
    arr = as_image("data", data, require_finite=False)
    fwhm = check_positive("fwhm", fwhm)
    ny, nx = arr.shape
    user = as_mask("bad", bad, arr.shape)
    off = as_mask("off_frame", off_frame, arr.shape)
    nonfinite = ~np.isfinite(arr)
    if (nonfinite | user | off).all():
        msg = "data: every pixel of the cutout is masked or non-finite; nothing to mask around"
        raise ValueError(msg)
    if center is None:
        center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    center = check_pixel("center", center, arr.shape)
    radius = 2.0 * fwhm if target_radius is None else check_positive("target_radius", target_radius)
    split_nsigma = check_positive("split_nsigma", split_nsigma)

    if detection == "twopass":
        p = TwoPass() if passes is None else passes
        if not isinstance(p, TwoPass):
            msg = f"passes must be a gsprep.detection.TwoPass, got {type(p).__name__}"
            raise TypeError(msg)
        if nsigma is not None or npixels is not None:
            from dataclasses import replace

            # nsigma is the faintest pass's threshold; the bright pass is never below it (a raised nsigma
            # detects less, whichever pass would have found a source)
            p = replace(p, hot_nsigma=p.hot_nsigma if nsigma is None else nsigma,
                        cold_nsigma=p.cold_nsigma if nsigma is None else max(p.cold_nsigma, nsigma),
                        hot_npixels=p.hot_npixels if npixels is None else int(check_positive("npixels", npixels)))
        deblend = True if deblend is None else bool(deblend)
        seg = detect_twopass(arr, fwhm=fwhm, passes=p, mask=user | off, sigma=sigma)
        nsig_used, npix_used = p.hot_nsigma, p.hot_npixels
    else:
        nsig_used = 3.0 if nsigma is None else nsigma
        npix_used = 5 if npixels is None else npixels
        deblend = False if deblend is None else bool(deblend)
        seg = detect(arr, fwhm=fwhm, nsigma=nsig_used, npixels=npix_used, mask=user | off, sigma=sigma)
    labels, table = seg.labels, seg.table
    target = _find_target(labels, center, radius) if keep_target else 0
    if keep_target and target == 0:
        msg = (
            f"the target was not detected: no source within target_radius={radius:g} pixels of "
            f"the centre (x={center[0]:.1f}, y={center[1]:.1f}) at nsigma={nsig_used}, npixels={npix_used}; "
            "lower nsigma, raise target_radius, or pass require_target=False to mask every "
            "detected source and continue"
        )
        if require_target:
            raise TargetNotFoundError(msg)
        warnings.warn(msg, stacklevel=2)
    inner = []
    if deblend and target > 0:
        if detection == "twopass":
            trow = table[np.asarray(table["label"]) == target][0]
            inner = split_inner(np.where(nonfinite, 0.0, arr - seg.background), labels, target, center,
                                q=float(trow["q"]), theta=float(trow["theta"]), rms=seg.rms, fwhm=fwhm,
                                nsigma=split_nsigma, bad=nonfinite | user | off)
            if inner:
                labels = labels.copy()
                base = int(labels.max())
                for k, (piece, _) in enumerate(inner, start=1):
                    labels[piece] = base + k
        else:
            new_labels, new_target = _deblend_target(seg.smoothed, labels, target, int(npix_used), nlevels,
                                                     contrast, center)
            if new_target != target or not np.array_equal(new_labels, labels):
                labels, target = new_labels, new_target
        if inner or not np.array_equal(labels, seg.labels):
            bkg_sub = np.where(nonfinite, 0.0, arr - seg.background)
            table = source_table(bkg_sub, labels, smoothed=seg.smoothed, bad=nonfinite | user | off)
            if "cold" in seg.table.colnames:  # the split pieces are hot objects; the other labels are unchanged
                cold = dict(zip(np.asarray(seg.table["label"]).tolist(), np.asarray(seg.table["cold"]).tolist(),
                                strict=True))
                table["cold"] = [bool(cold.get(int(lab), False)) for lab in table["label"]]
    growth = None
    if magnification is None:
        clean = np.where(nonfinite | user | off, 0.0, arr - seg.background)
        sm = ndimage.gaussian_filter(clean, fwhm * FWHM_TO_SIGMA, mode="nearest")
        floor = p.hot_nsigma if detection == "twopass" else float(nsig_used)
        growth = isophote_growth(labels, table, sm, rms=seg.rms, pixel_rms=smoothed_noise(clean, nonfinite | user | off),
                                 floor=floor, fwhm=fwhm, level=wing_level,
                                 exclude=(target,) if target else ())
    grown, _ = grow_segments(labels, table, magnification=2.0 if magnification is None else magnification,
                             max_grow=max_grow, addgrow=addgrow, min_grow=PSF_GROW * fwhm,
                             exclude=(target,) if target else (), growth=growth)
    neighbour = grown & (labels != target) if target else grown
    if target:
        # nor is the centre itself, where it lies outside every footprint (a centre given off the target's peak)
        yy, xx = np.ogrid[:ny, :nx]
        neighbour &= ~((np.hypot(xx - center[0], yy - center[1]) <= 0.5 * fwhm) & (labels == 0))
    mag_inner = 2.0 if magnification is None else magnification
    for piece, peak in inner:
        g = min((mag_inner - 1.0) * np.sqrt(piece.sum() / np.pi) + PSF_GROW * fwhm, max_grow) + addgrow
        neighbour |= _grow_inner(piece, peak, center, g, arr.shape, keep=0.5 * fwhm)
    bits = np.zeros(arr.shape, dtype=np.int16)
    bits[neighbour] |= NEIGHBOUR
    bits[nonfinite & ~off] |= BAD
    bits[off] |= OFF_FRAME
    bits[user] |= USER
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            bits[arr >= float(saturation)] |= SATURATED
    return Mask((bits != 0).astype(np.uint8), bits, int(target), labels, table)

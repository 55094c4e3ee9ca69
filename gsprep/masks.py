"""Masks that hide a cutout's neighbours and keep the target (GalfitS's ``generate_cutmask``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.segmentation import SegmentationImage, deblend_sources

from ._bits import BAD, NEIGHBOUR, OFF_FRAME, SATURATED, USER
from ._checks import as_image, as_mask, check_pixel, check_positive
from .cutouts import Cutout
from .detection import DEBLEND_MODE_WARNING, detect, grow_sources, source_table

__all__ = ["Mask", "cutout_mask", "TargetNotFoundError"]


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
    ix, iy = int(round(cx)), int(round(cy))
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


def cutout_mask(data, *, fwhm, nsigma=3.0, npixels=5, deblend=False, nlevels=32, contrast=0.001,
                magnification=3.0, max_grow=100, addgrow=0, target_radius=None, keep_target=True,
                bad=None, saturation=None, sigma=None, center=None, off_frame=None,
                require_target=True):
    """Mask the neighbours of the target in a cutout, keeping the target's own light.

    Sources are detected on the cutout smoothed by a Gaussian of ``fwhm``
    pixels (:func:`gsprep.detect`).  The target is the segment under
    ``center`` (default the central pixel), or the nearest one within
    ``target_radius`` pixels.  Every other source is masked by its segment
    plus an ellipse ``magnification`` times its own size, at most
    ``max_grow`` pixels beyond it, plus ``addgrow`` pixels
    (:func:`gsprep.detection.grow_sources`).  The target's own segment is
    never masked by a neighbour's ellipse.

    Parameters
    ----------
    data : array (ny, nx) or Cutout
        The (sky-subtracted) cutout.  A :class:`gsprep.Cutout` also supplies
        ``off_frame``.
    fwhm : float
        PSF FWHM, pixels.
    nsigma, npixels : float, int
        Detection threshold (times the noise) and minimum connected pixels.
    deblend : bool
        Deblend the target's segment so a touching neighbour is split off
        and masked.
    nlevels, contrast : int, float
        photutils deblending parameters.
    magnification, max_grow, addgrow : float
        Growth of neighbour masks (see above); pixels for the last two.
    target_radius : float, optional
        Search radius for the target, pixels (default ``2 * fwhm``).
    keep_target : bool
        False masks the target too (bit ``NEIGHBOUR``).
    bad : bool array, optional
        The user's own mask (True = masked), bit ``USER``.
    saturation : float, optional
        Pixels at or above this value get bit ``SATURATED``.
    sigma : array, optional
        Sigma image; detection threshold becomes ``nsigma * sigma``.
    center : (x, y), optional
        0-based target position in the cutout.
    off_frame : bool array, optional
        Pixels outside the parent frame, bit ``OFF_FRAME``.
    require_target : bool
        When no source is found at the centre: raise
        :class:`TargetNotFoundError` (default), or, if False, warn and
        mask every detected source.

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
    >>> m = cutout_mask(cut, fwhm=3.0, deblend=True)
    >>> m.n_neighbours, bool(m.mask[50, 50]), bool(m.mask[15, 95])   # the target kept, its neighbour masked
    (1, False, True)
    """
    if isinstance(data, Cutout):
        if off_frame is None:
            off_frame = data.off_frame
        if center is None:
            center = data.center
        data = data.data
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

    seg = detect(arr, fwhm=fwhm, nsigma=nsigma, npixels=npixels, mask=user | off, sigma=sigma)
    labels, table = seg.labels, seg.table
    target = _find_target(labels, center, radius) if keep_target else 0
    if keep_target and target == 0:
        msg = (
            f"the target was not detected: no source within target_radius={radius:g} pixels of "
            f"the centre (x={center[0]:.1f}, y={center[1]:.1f}) at nsigma={nsigma}, npixels={npixels}; "
            "lower nsigma, raise target_radius, or pass require_target=False to mask every "
            "detected source and continue"
        )
        if require_target:
            raise TargetNotFoundError(msg)
        warnings.warn(msg, stacklevel=2)
    if deblend and target > 0:
        new_labels, new_target = _deblend_target(seg.smoothed, labels, target, int(npixels), nlevels,
                                                 contrast, center)
        if new_target != target or not np.array_equal(new_labels, labels):
            bkg_sub = np.where(nonfinite, 0.0, arr - seg.background)
            labels, target = new_labels, new_target
            table = source_table(bkg_sub, labels, smoothed=seg.smoothed, bad=nonfinite | user | off)
    grown, _ = grow_sources(labels, table, magnification=magnification, max_grow=max_grow,
                            addgrow=addgrow, exclude=(target,) if target else ())
    neighbour = grown & (labels != target) if target else grown
    bits = np.zeros(arr.shape, dtype=np.int16)
    bits[neighbour] |= NEIGHBOUR
    bits[nonfinite & ~off] |= BAD
    bits[off] |= OFF_FRAME
    bits[user] |= USER
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            bits[arr >= float(saturation)] |= SATURATED
    return Mask((bits != 0).astype(np.uint8), bits, int(target), labels, table)

"""Cut a target out of a frame (2-D image or 3-D cube) with a correct WCS."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from ._checks import as_image, check_choice, check_positive, check_ra_dec
from .wcs import pixel_scale

__all__ = ["Cutout", "cutout"]


@dataclass(frozen=True)
class Cutout:
    """A square cut around a target.

    Attributes
    ----------
    data : ndarray
        ``(2n+1, 2n+1)`` (or ``(nz, 2n+1, 2n+1)`` for a cube); NaN off the frame.
    wcs : astropy.wcs.WCS
        Celestial WCS of the cut, distortions kept (from ``Cutout2D``).
    origin : tuple of int
        0-based parent pixel ``(x, y)`` of cutout pixel ``(0, 0)``.
    center : tuple of float
        0-based cutout pixel ``(x, y)`` of ``(ra, dec)``.
    ra, dec : float
        ICRS degrees of the cut's target (the peak pixel's position when
        ``recenter="peak"`` moved the cut).
    pixel_scale : float
        arcsec / pixel.
    off_frame : ndarray of bool
        True where the cut lies outside the parent frame.
    r_arcsec : float
        Half-size asked for, arcsec.
    """

    data: np.ndarray
    wcs: WCS
    origin: tuple
    center: tuple
    ra: float
    dec: float
    pixel_scale: float
    off_frame: np.ndarray
    r_arcsec: float = float("nan")

    @property
    def n(self):
        """Half-size in pixels (the cut is ``2n+1`` wide)."""
        return (self.data.shape[-1] - 1) // 2


def _check_wcs(wcs):
    if not isinstance(wcs, WCS):
        msg = f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}"
        raise TypeError(msg)
    if not wcs.has_celestial:
        msg = "wcs has no celestial axes (RA/Dec); the frame needs a celestial WCS to be cut on the sky"
        raise ValueError(msg)
    return wcs.celestial


def _half_size_arcsec(r):
    if isinstance(r, u.Quantity):
        if not r.isscalar:
            msg = f"r must be one angle, got {r!r}"
            raise ValueError(msg)
        if r.unit.physical_type != "angle":
            msg = f"r must be an angle (arcsec) or a number of arcsec, got unit {r.unit}"
            raise ValueError(msg)
        r = r.to_value(u.arcsec)
    return check_positive("r", r)


def cutout(data, wcs, ra, dec, r, *, recenter=None, recenter_radius=5):
    """Cut a ``(2n+1) x (2n+1)`` box around ``(ra, dec)``.

    Parameters
    ----------
    data : array
        2-D image ``(ny, nx)`` or 3-D cube ``(nz, ny, nx)``; cut along the two
        spatial axes.
    wcs : astropy.wcs.WCS
        The frame's WCS (any celestial frame: ICRS, FK5, FK4, galactic...).
    ra, dec : float
        Target position, ICRS degrees.
    r : float or Quantity
        Half-size in arcsec (or an angle Quantity).  ``n = int(r / pixel_scale)``
        as in GalfitS.
    recenter : {None, "peak"}
        ``"peak"`` moves the cut to the brightest finite pixel within
        ``recenter_radius`` pixels of the target (GalfitS's ``usemaxpix``).
    recenter_radius : float
        Search radius for ``recenter="peak"``, pixels.

    Returns
    -------
    Cutout
        The target's nearest pixel is the central pixel ``(n, n)``.

    Raises
    ------
    ValueError
        No finite pixel, no celestial WCS, ``r`` below one pixel, target off
        the frame.

    Examples
    --------
    >>> c = cutout(img.data, img.wcs, 50.6738, -37.2083, 60.0)   # doctest: +SKIP
    >>> c.data.shape                                              # doctest: +SKIP
    (17, 17)
    """
    arr = as_image("data", data, ndim=(2, 3))
    cwcs = _check_wcs(wcs)
    check_choice("recenter", recenter, (None, "peak"))
    ra, dec = check_ra_dec(ra, dec)
    r_as = _half_size_arcsec(r)
    scale = pixel_scale(cwcs)
    n = int(r_as / scale)
    if n < 1:
        msg = f"r={r_as:g} arcsec is less than one pixel ({scale:.4g} arcsec/pixel); no cut to make"
        raise ValueError(msg)
    ny, nx = arr.shape[-2:]
    if n > max(nx, ny):
        msg = (f"r={r_as:g} arcsec asks for a cut of {2 * n + 1} x {2 * n + 1} pixels, more than twice the "
               f"frame ({nx} x {ny} pixels of {scale:.4g} arcsec); r can be at most "
               f"{(max(nx, ny) + 1) * scale:.4g} arcsec here")
        raise ValueError(msg)
    target = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    x, y = (float(v) for v in cwcs.world_to_pixel(target))
    if not (np.isfinite(x) and np.isfinite(y)):
        msg = f"target (ra={ra}, dec={dec}) cannot be placed on the frame by its WCS"
        raise ValueError(msg)
    ix, iy = round(x), round(y)
    if not (0 <= ix < nx and 0 <= iy < ny):
        msg = (
            f"target (ra={ra}, dec={dec}) falls at pixel (x={x:.1f}, y={y:.1f}), "
            f"outside the frame of {nx} x {ny} pixels"
        )
        raise ValueError(msg)
    if recenter == "peak":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # all-NaN columns of a cube
            plane = arr if arr.ndim == 2 else np.nanmean(arr, axis=0)
        check_positive("recenter_radius", recenter_radius)
        rr = int(np.ceil(recenter_radius))
        y0, y1 = max(iy - rr, 0), min(iy + rr + 1, ny)
        x0, x1 = max(ix - rr, 0), min(ix + rr + 1, nx)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        box = np.where((xx - ix) ** 2 + (yy - iy) ** 2 <= recenter_radius**2, plane[y0:y1, x0:x1], np.nan)
        if np.isfinite(box).any():
            k = np.nanargmax(box)
            ix, iy = int(xx.flat[k]), int(yy.flat[k])
            x, y = float(ix), float(iy)
            sky = cwcs.pixel_to_world(x, y).icrs
            ra, dec = float(sky.ra.deg), float(sky.dec.deg)
    size = 2 * n + 1
    # a zero-stride stand-in for the frame: Cutout2D only needs its shape for the slices and WCS
    c2 = Cutout2D(np.broadcast_to(np.float32(0), (ny, nx)), (ix, iy), (size, size), wcs=cwcs,
                  mode="partial", fill_value=np.nan)
    cut_wcs = _shift_lookup_tables(c2.wcs, (ix - n, iy - n))
    out = np.full(arr.shape[:-2] + (size, size), np.nan)
    off = np.ones((size, size), dtype=bool)
    so, sc = c2.slices_original, c2.slices_cutout
    out[(..., *sc)] = arr[(..., *so)]
    off[sc] = False
    origin = (ix - n, iy - n)
    return Cutout(
        data=out,
        wcs=cut_wcs,
        origin=origin,
        center=(x - origin[0], y - origin[1]),
        ra=float(ra),
        dec=float(dec),
        pixel_scale=scale,
        off_frame=off,
        r_arcsec=r_as,
    )


def _shift_lookup_tables(wcs, origin):
    """Move lookup-table distortions (CPDIS, D2IM) to the cut's pixel grid.

    ``Cutout2D`` shifts CRPIX and SIP but leaves the tables' reference pixel
    (``crval``, in detector pixels) where it was; shift it by ``origin``.
    """
    from astropy.wcs import DistortionLookupTable

    tables = [getattr(wcs, k) for k in ("cpdis1", "cpdis2", "det2im1", "det2im2")]
    if all(t is None for t in tables):
        return wcs
    w = wcs.deepcopy()
    for k, t in zip(("cpdis1", "cpdis2", "det2im1", "det2im2"), tables, strict=True):
        if t is None:
            continue
        crval = (t.crval[0] - origin[0], t.crval[1] - origin[1])
        setattr(w, k, DistortionLookupTable(np.asarray(t.data, dtype=np.float32), t.crpix, crval, t.cdelt))
    return w

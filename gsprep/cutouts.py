"""Cut a target out of a frame (2-D image or 3-D cube) with a correct WCS."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from ._checks import as_image, check_choice, check_number, check_positive, check_ra_dec
from .wcs import pixel_scale as _wcs_pixel_scale

__all__ = ["Cutout", "cutout"]


@dataclass(frozen=True)
class Cutout:
    """A square cut around a target.

    Attributes
    ----------
    data : ndarray
        ``(2n+1, 2n+1)`` (or ``(nz, 2n+1, 2n+1)`` for a cube); NaN off the frame.
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the cut, distortions kept (from ``Cutout2D``);
        None when the frame had no WCS (target given in pixels).
    origin : tuple of int
        0-based parent pixel ``(x, y)`` of cutout pixel ``(0, 0)``.
    center : tuple of float
        0-based cutout pixel ``(x, y)`` of ``(ra, dec)``.
    ra, dec : float
        ICRS degrees of the cut's target (the peak pixel's position when
        ``recenter="peak"`` moved the cut); NaN without a WCS.
    pixel_scale : float
        arcsec / pixel.
    off_frame : ndarray of bool
        True where the cut lies outside the parent frame.
    r_arcsec : float
        Half-size asked for, arcsec.
    """

    data: np.ndarray
    wcs: WCS | None
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


def cutout(data, wcs, ra=None, dec=None, r=None, *, x=None, y=None, pixel_scale=None, recenter=None,
           recenter_radius=5):
    """Cut a ``(2n+1) x (2n+1)`` box around ``(ra, dec)`` or around pixel ``(x, y)``.

    Parameters
    ----------
    data : array
        2-D image ``(ny, nx)`` or 3-D cube ``(nz, ny, nx)``; cut along the two
        spatial axes.
    wcs : astropy.wcs.WCS or None
        The frame's WCS (any celestial frame: ICRS, FK5, FK4, galactic...).
        ``None`` for a frame without one: the target is then given as
        ``x, y`` and ``pixel_scale`` is required.
    ra, dec : float, optional
        Target position, ICRS degrees.
    r : float or Quantity
        Half-size in arcsec (or an angle Quantity).  ``n = int(r / pixel_scale)``
        as in GalfitS.
    x, y : float, optional
        Target position instead of ``ra, dec``: 0-based frame pixels (as
        numpy ``data[y, x]``).  With a WCS, ``ra, dec`` are computed from it.
    pixel_scale : float, optional
        arcsec / pixel.  Required when ``wcs`` is None; with a WCS it
        overrides the WCS's scale in the half-size rule.
    recenter : {None, "peak"}
        ``"peak"`` moves the cut to the brightest finite pixel within
        ``recenter_radius`` pixels of the target (GalfitS's ``usemaxpix``).
    recenter_radius : float
        Search radius for ``recenter="peak"``, pixels.

    Returns
    -------
    Cutout
        The target's nearest pixel is the central pixel ``(n, n)``.  Without a
        WCS, ``wcs`` is None and ``ra, dec`` are NaN (``write_cutout`` writes a
        stand-in WCS, see :func:`gsprep.wcs.standin_wcs`).

    Raises
    ------
    ValueError
        No finite pixel, no celestial WCS, ``r`` below one pixel, target off
        the frame, both or neither of ``ra, dec`` and ``x, y``, no
        ``pixel_scale`` without a WCS.

    Examples
    --------
    >>> import numpy as np
    >>> from gsprep.simulate import tan_wcs
    >>> w = tan_wcs(150.1, 2.2, (201, 201), 0.4)                 # 0.4 arcsec/px, target at the centre
    >>> c = cutout(np.zeros((201, 201)), w, 150.1, 2.2, 10.0)    # n = int(10 / 0.4) = 25 px each side
    >>> c.data.shape, round(c.center[0], 6), round(c.center[1], 6)
    ((51, 51), 25.0, 25.0)
    >>> c = cutout(np.zeros((201, 201)), None, x=100.0, y=100.0, r=10.0, pixel_scale=0.4)  # no WCS: pixels
    >>> c.data.shape
    (51, 51)
    """
    arr = as_image("data", data, ndim=(2, 3))
    cwcs = None if wcs is None else _check_wcs(wcs)
    check_choice("recenter", recenter, (None, "peak"))
    by_sky = ra is not None or dec is not None
    by_pixel = x is not None or y is not None
    if by_sky and by_pixel:
        msg = "give the target either as ra, dec (degrees) or as x, y (pixels), not both"
        raise ValueError(msg)
    if not by_sky and not by_pixel:
        msg = "no target: give ra, dec (ICRS degrees) or x, y (0-based pixels)"
        raise ValueError(msg)
    if r is None:
        msg = "r (the cut's half-size, arcsec) is required"
        raise ValueError(msg)
    if cwcs is None:
        if by_sky:
            msg = "wcs is None: a frame without a WCS takes its target as x=, y= (0-based pixels), not ra, dec"
            raise ValueError(msg)
        if pixel_scale is None:
            msg = ("pixel_scale (arcsec/pixel) is required when wcs is None: without a WCS the half-size r "
                   "in arcsec cannot be turned into pixels")
            raise ValueError(msg)
    ny, nx = arr.shape[-2:]
    if by_pixel:
        x = check_number("x", x)
        y = check_number("y", y)
        where = f"(x={x:g}, y={y:g})"
        if cwcs is not None:
            sky = cwcs.pixel_to_world(x, y).icrs
            ra, dec = float(sky.ra.deg), float(sky.dec.deg)
            if not (np.isfinite(ra) and np.isfinite(dec)):
                msg = f"target pixel {where} has no sky position in the frame's WCS"
                raise ValueError(msg)
        else:
            ra = dec = float("nan")
    else:
        ra, dec = check_ra_dec(ra, dec)
        where = f"(ra={ra}, dec={dec})"
    r_as = _half_size_arcsec(r)
    scale = _wcs_pixel_scale(cwcs) if pixel_scale is None else check_positive("pixel_scale", pixel_scale)
    n = int(r_as / scale)
    if n < 1:
        msg = f"r={r_as:g} arcsec is less than one pixel ({scale:.4g} arcsec/pixel); no cut to make"
        raise ValueError(msg)
    if n > max(nx, ny):
        msg = (f"r={r_as:g} arcsec asks for a cut of {2 * n + 1} x {2 * n + 1} pixels, more than twice the "
               f"frame ({nx} x {ny} pixels of {scale:.4g} arcsec); r can be at most "
               f"{(max(nx, ny) + 1) * scale:.4g} arcsec here")
        raise ValueError(msg)
    if by_sky:
        target = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
        x, y = (float(v) for v in cwcs.world_to_pixel(target))
        if not (np.isfinite(x) and np.isfinite(y)):
            msg = f"target {where} cannot be placed on the frame by its WCS"
            raise ValueError(msg)
    ix, iy = round(x), round(y)
    if not (0 <= ix < nx and 0 <= iy < ny):
        msg = (
            f"target {where} falls at pixel (x={x:.1f}, y={y:.1f}), "
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
            if cwcs is not None:
                sky = cwcs.pixel_to_world(x, y).icrs
                ra, dec = float(sky.ra.deg), float(sky.dec.deg)
    size = 2 * n + 1
    # a zero-stride stand-in for the frame: Cutout2D only needs its shape for the slices and WCS
    c2 = Cutout2D(np.broadcast_to(np.float32(0), (ny, nx)), (ix, iy), (size, size), wcs=cwcs,
                  mode="partial", fill_value=np.nan)
    cut_wcs = None if cwcs is None else _shift_lookup_tables(c2.wcs, (ix - n, iy - n))
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

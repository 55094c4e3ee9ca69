"""WCS helpers: the WCS a cutout file carries, and a parent header without any WCS.

A cutout's own WCS is a TAN projection about the target (CRVAL = the
target, CRPIX = its 1-based pixel) fitted to the parent's full WCS over the
cut.  Where a linear TAN cannot follow the parent (strong field distortion:
IRAC, wide-field cameras), SIP distortion polynomials of the lowest degree
that reach :data:`WCS_TOL` pixels are added.  Every other WCS convention of
the parent (DSS plate solutions, IRAF ``WAT``/``LTV``, SIP, ``PV``/TPV,
distortion lookup tables, alternate WCSs ``CTYPE1A``...) is removed from the
header, so the file's WCS, read by astropy from the file alone, is the one
gsprep fitted.

A cut from a frame without a WCS (target given in pixels) gets a stand-in
linear TAN WCS (:func:`standin_wcs`): GalfitS needs a WCS and the target's
sky position (``R2)``), so the target is placed at :data:`STANDIN_CRVAL`
with the pixel scale given; the file says so with ``WCSFAKE = T``.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import proj_plane_pixel_scales

__all__ = ["STANDIN_CRVAL", "WCS_TOL", "StandInWCSWarning", "cut_wcs_header", "pixel_scale", "standin_wcs",
           "strip_wcs", "wcs_deviation"]

#: worst sky-position difference (pixels) a written cutout WCS may have against the parent's
WCS_TOL = 0.01

#: (RA, Dec) degrees given to the target of a cut whose frame has no WCS: on the equator, where a TAN
#: projection's RA and Dec offsets are the plain pixel offsets times the scale, and away from RA = 0/360,
#: so no position wraps round
STANDIN_CRVAL = (180.0, 0.0)


class StandInWCSWarning(UserWarning):
    """A cutout file carries a stand-in WCS: its sky positions are not real."""


def standin_wcs(center, scale):
    """The stand-in WCS of a cut without a parent WCS.

    A linear TAN projection with CRVAL = :data:`STANDIN_CRVAL` at the target
    (CRPIX = ``center`` + 1, the 1-based pixel), North up and East left
    (CDELT = ``(-scale, scale) / 3600`` degrees, ``scale`` in arcsec/pixel).
    Sky positions read from it are offsets from the target, not real ones.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(STANDIN_CRVAL)
    w.wcs.crpix = [float(center[0]) + 1.0, float(center[1]) + 1.0]
    w.wcs.cdelt = [-float(scale) / 3600.0, float(scale) / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w

# every keyword that describes a WCS, in any convention (an optional alternate-WCS letter after it)
_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PC\d{6}|CD\d{6}|PV\d_\d+|PS\d_\d+|PROJP\d"
    r"|CRDER\d|CSYER\d|LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH|WCSNAME|MJDREF|DATEREF|WCSDIM"
    r"|A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+|A_DMAX|B_DMAX|SIPSYM"
    r"|D2IM[\w.]*|CPDIS[\w.]*|CPERR[\w.]*|DP\d[\w.]*|DQ\d[\w.]*|AXISCORR|D2IMEXT|D2IMERR\w*|WCSDVARR"
    # DSS plate solutions
    r"|PLTRAH|PLTRAM|PLTRAS|PLTDECSN|PLTDECD|PLTDECM|PLTDECS|PLTSCALE|XPIXELSZ|YPIXELSZ|PPO\d+|AMD[XY]\d+"
    r"|CNPIX\d"
    # IRAF (TNX/ZPX/TPV in WAT cards; physical-to-image transformation)
    r"|WAT\d_\d+|LTV\d|LTM\d_\d|DC-FLAG"
    r")[A-Z]?$"
)
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|BSCALE|BZERO|BLANK|EXTNAME|EXTVER"
    r"|CHECKSUM|DATASUM|Z\w+|TFIELDS|TTYPE\d+|TFORM\d+)$"
)


def strip_wcs(header):
    """Copy of ``header`` without WCS (any convention), distortion and structural keywords."""
    out = fits.Header()
    if header is None:
        return out
    for card in header.cards:
        key = card.keyword
        if not key or _WCS_KEY.match(key) or _STRUCTURAL.match(key):
            continue
        with contextlib.suppress(ValueError, KeyError):
            out.append((key, card.value, card.comment), bottom=True)
    return out


def pixel_scale(wcs):
    """Mean pixel scale of a celestial WCS at its reference point, arcsec/pixel."""
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def _gnomonic(ra, dec, ra0, dec0):
    """Standard coordinates (deg) of (ra, dec) about the tangent point (ra0, dec0)."""
    a, d, a0, d0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def _terms(u, v, degree):
    """Monomials ``u^p v^q`` with ``1 <= p + q <= degree``, and their ``(p, q)``."""
    pq = [(p, o - p) for o in range(1, degree + 1) for p in range(o, -1, -1)]
    return np.column_stack([u**p * v**q for p, q in pq]), pq


def _grid(size, n, offset=0.0):
    g = np.clip(np.linspace(0, size - 1, n) + offset, 0, size - 1)
    gx, gy = np.meshgrid(g, g)
    return gx.ravel(), gy.ravel()


def wcs_deviation(wcs_file, c, n=33):
    """Worst distance (pixels) between where ``wcs_file`` and the cut's full WCS put the same sky positions.

    Evaluated on an ``n x n`` grid over the cut (``c`` a :class:`gsprep.Cutout`).
    """
    size = c.data.shape[-1]
    gx, gy = _grid(size, min(size, n), offset=0.37)
    sky = wcs_file.pixel_to_world(gx, gy)
    px, py = c.wcs.world_to_pixel(sky)
    return float(np.nanmax(np.hypot(px - gx, py - gy)))


def cut_wcs_header(c, *, tol=WCS_TOL, max_degree=5):
    """The cutout's own WCS header: TAN (ICRS) about the target, SIP added where the parent needs it.

    CRVAL is the target, CRPIX its 1-based pixel.  The CD matrix (written
    as CDELT = pixel scale and a PC rotation) and, when a linear map is off
    by more than ``tol`` pixels somewhere in the cut, SIP polynomials of the
    lowest degree (2 to ``max_degree``) that reach ``tol`` are fitted by
    least squares to the gnomonic projection of the cut's full WCS
    (distortions, rotation and the frame's equinox included).

    Returns ``(header, max_deviation_pixels)``: the deviation is measured
    with the WCS astropy reads back from the returned header alone, on a
    grid other than the one fitted.

    A cut without a WCS (``c.wcs`` None) gets :func:`standin_wcs` about its
    centre, with ``WCSFAKE = T`` in the header, and a deviation of -1.
    """
    if c.wcs is None:
        hdr = standin_wcs(c.center, c.pixel_scale).to_header()
        hdr["WCSFAKE"] = (True, "no parent WCS: stand-in TAN, sky positions not real")
        return hdr, -1.0
    size = c.data.shape[-1]
    gx, gy = _grid(size, min(size, 31))
    world = c.wcs.pixel_to_world(gx, gy).icrs
    xi, eta = _gnomonic(world.ra.deg, world.dec.deg, c.ra, c.dec)
    ok = np.isfinite(xi) & np.isfinite(eta)
    u, v = gx[ok] - c.center[0], gy[ok] - c.center[1]
    target = np.column_stack([xi[ok], eta[ok]])
    scale = c.pixel_scale / 3600.0
    cdelt = np.array([-scale, scale])
    best = None
    for degree in range(1, max_degree + 1):
        # polynomial in (u, v) without a constant (the target is at CRPIX); scaled for conditioning
        half = max(size / 2.0, 1.0)
        mat, pq = _terms(u / half, v / half, degree)
        if mat.shape[1] > 0.5 * len(u):
            break
        coef, *_ = np.linalg.lstsq(mat, target, rcond=None)  # (terms, 2)
        cd = coef[:2].T / half  # the linear part: rows (xi, eta), columns (u, v)
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"] if degree == 1 else ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.wcs.crval = [c.ra, c.dec]
        w.wcs.crpix = [c.center[0] + 1.0, c.center[1] + 1.0]
        w.wcs.cdelt = cdelt
        w.wcs.pc = cd / cdelt[:, None]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.radesys = "ICRS"
        if degree > 1:
            # xi = CD (u + f, v + g): f, g = CD^-1 (the non-linear part)
            nl = np.linalg.solve(cd, coef[2:].T)  # (2, terms - 2)
            a = np.zeros((degree + 1, degree + 1))
            b = np.zeros((degree + 1, degree + 1))
            for j, (p, q) in enumerate(pq[2:]):
                a[p, q] = nl[0, j] / half ** (p + q)
                b[p, q] = nl[1, j] / half ** (p + q)
            w.sip = Sip(a, b, None, None, w.wcs.crpix)
        hdr = w.to_header(relax=True)
        dev = wcs_deviation(WCS(hdr), c)
        if best is None or dev < best[1]:
            best = (hdr, dev)
        if dev <= tol:
            break
    hdr, dev = best
    return hdr, dev

"""Deterministic synthetic frames with known truth, for tests, benchmarks and the demo.

Everything here is numpy; nothing is random unless a seeded
``numpy.random.Generator`` is passed in.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from scipy.special import gammaincinv

__all__ = ["tan_wcs", "moffat_psf", "render_psf", "sersic_image", "add_stars", "demo_frame"]


def tan_wcs(ra, dec, shape, pixel_scale, *, rotation_deg=0.0, crpix=None, radesys="ICRS"):
    """A TAN WCS centred on ``(ra, dec)`` (degrees), ``pixel_scale`` arcsec/pixel.

    ``shape`` is ``(ny, nx)``; CRPIX defaults to the frame centre.  North up,
    east left, rotated counter-clockwise by ``rotation_deg``.
    """
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix) if crpix is not None else [(nx + 1) / 2.0, (ny + 1) / 2.0]
    s = pixel_scale / 3600.0
    th = np.radians(rotation_deg)
    w.wcs.cd = np.array([[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]])
    w.wcs.radesys = radesys
    w.pixel_shape = (nx, ny)
    return w


def _subpixel_grid(shape, x0, y0, k):
    """Sub-pixel sample offsets (dx, dy) from (x0, y0): ``k x k`` samples per pixel, shape (ny*k, nx*k)."""
    ny, nx = shape
    off = (np.arange(k) + 0.5) / k - 0.5
    xs = (np.arange(nx)[:, None] + off[None, :]).ravel() - x0
    ys = (np.arange(ny)[:, None] + off[None, :]).ravel() - y0
    return np.meshgrid(xs, ys)


def _pixel_mean(samples, shape, k):
    ny, nx = shape
    return samples.reshape(ny, k, nx, k).mean(axis=(1, 3))


def moffat_psf(shape, x0, y0, *, fwhm, beta=3.0, e1=0.0, e2=0.0, oversample=8):
    """Pixel-integrated elliptical Moffat PSF (sum 1 over an infinite grid).

    ``(x0, y0)`` is the centre in 0-based pixels of an array of ``shape``;
    ``(e1, e2)`` a shear applied to the circular profile.  Pixels are
    integrated by averaging ``oversample**2`` sub-pixel samples.
    """
    k = int(oversample)
    xx, yy = _subpixel_grid(shape, x0, y0, k)
    # inverse shear: circular profile of sheared coordinates
    g = np.hypot(e1, e2)
    if g > 0:
        m = np.array([[1 - e1, -e2], [-e2, 1 + e1]]) / np.sqrt(1 - g**2)
        u = m[0, 0] * xx + m[0, 1] * yy
        v = m[1, 0] * xx + m[1, 1] * yy
    else:
        u, v = xx, yy
    alpha = fwhm / (2.0 * np.sqrt(2 ** (1.0 / beta) - 1.0))
    prof = (beta - 1) / (np.pi * alpha**2) * (1 + (u**2 + v**2) / alpha**2) ** (-beta)
    return _pixel_mean(prof, shape, k)


def render_psf(shape, x0, y0, flux, **kw):
    """``flux`` times :func:`moffat_psf`."""
    return flux * moffat_psf(shape, x0, y0, **kw)


def sersic_image(shape, x0, y0, *, flux, r_eff, n=1.0, q=1.0, theta=0.0, oversample=3):
    """Pixel-integrated Sérsic profile with total ``flux`` (on an infinite grid).

    ``r_eff`` in pixels along the major axis, ``theta`` radians from +x.
    """
    k = int(oversample)
    xx, yy = _subpixel_grid(shape, x0, y0, k)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    r = np.sqrt(u**2 + (v / q) ** 2)
    bn = gammaincinv(2 * n, 0.5)
    from scipy.special import gamma

    ie = flux / (2 * np.pi * r_eff**2 * q * n * np.exp(bn) * bn ** (-2 * n) * gamma(2 * n))
    prof = ie * np.exp(-bn * ((r / r_eff) ** (1.0 / n) - 1.0))
    return _pixel_mean(prof, shape, k)


def add_stars(image, positions, fluxes, *, fwhm, beta=3.0, e1=0.0, e2=0.0, half=15):
    """Return ``image`` plus Moffat stars at 0-based ``positions`` ``[(x, y), ...]``."""
    out = np.array(image, dtype=float, copy=True)
    ny, nx = out.shape
    for (x, y), f in zip(positions, fluxes, strict=True):
        ix, iy = int(round(x)), int(round(y))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        out[y0:y1, x0:x1] += render_psf((y1 - y0, x1 - x0), x - x0, y - y0, f,
                                        fwhm=fwhm, beta=beta, e1=e1, e2=e2)
    return out


def demo_frame(*, fwhm, beta=3.0, seed=0, shape=(500, 500), ra=150.1, dec=2.2, pixel_scale=0.4, n_stars=60,
               galaxy_flux=4e5, exptime=100.0, gain=2.0):
    """A deterministic survey-like frame with known truth (count rate, counts/s).

    A Sérsic galaxy at ``(ra, dec)`` (the frame centre), a neighbouring
    galaxy, ``n_stars`` Moffat stars of FWHM ``fwhm`` pixels (kept away from
    the galaxy), a sky gradient, Poisson and read noise, and a TAN WCS.

    Returns
    -------
    data : ndarray
    header : astropy.io.fits.Header
        WCS plus EXPTIME and GAIN.
    """
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    ny, nx = shape
    w = tan_wcs(ra, dec, shape, pixel_scale)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    y, x = np.mgrid[:ny, :nx]
    sky = 20.0 + 3.0 * x / nx - 2.0 * y / ny + 2.0 * (x / nx) ** 2
    img = sersic_image(shape, cx, cy, flux=galaxy_flux, r_eff=12, n=2.0, q=0.6, theta=0.5)
    img += sersic_image(shape, cx + 45, cy - 35, flux=0.15 * galaxy_flux, r_eff=5, n=1.0, q=0.5, theta=1.2)
    pos = rng.uniform(30, min(shape) - 30, size=(3 * n_stars, 2))
    pos = pos[np.hypot(pos[:, 0] - cx, pos[:, 1] - cy) > 80][:n_stars]
    img = add_stars(img, pos, np.exp(rng.uniform(np.log(3e3), np.log(8e4), len(pos))), fwhm=fwhm, beta=beta,
                    half=30)
    counts = np.clip((img + sky) * exptime * gain, 0, None)
    data = rng.poisson(counts) / (exptime * gain) + rng.normal(0, 0.05, shape)
    header = fits.Header(w.to_header())
    header["EXPTIME"] = exptime
    header["GAIN"] = gain
    return data, header

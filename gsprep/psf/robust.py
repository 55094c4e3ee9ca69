"""Robust weighting: pixels hit by cosmic rays or neighbours, and stars that do not fit, are left out.

A cosmic ray or a neighbour belongs to one star; a PSF mismatch is shared by
all of them.  Both tests here compare each star with what all stars share,
so that only the former is removed.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .solver import psf
from .model import models

#: below this FWHM (native px) of the stars' median stamp the pre-fit clipping (:func:`gross_outliers`) is skipped:
#: measured as ``2 sqrt(A / pi)``, ``A`` the pixels at or above half the peak, it is 1.13 when one pixel is (EY UMa,
#: Roman F184 at 0.11"), 1.60 for two
UNDERSAMPLED_FWHM = 1.5


def gross_outliers(d, w, flux, sky, thr, xy=None):
    """Weights with gross outliers removed, before any PSF model exists (numpy).

    Each star's sky-subtracted, flux-normalised stamp is compared with the
    median of all of them (moved to the star's centre ``xy`` when given); a
    pixel is an outlier when it lies above it by
    more than ``thr`` sigma plus what a 0.7-pixel shift of the median stamp
    allows (the stars' sub-pixel offsets).  Nothing is clipped when the
    median stamp's FWHM is below :data:`UNDERSAMPLED_FWHM`: an undersampled
    star's shape is set by its sub-pixel phase, so the median cannot tell
    its own pixels from foreign ones.  Only excess flux counts (cosmic
    rays and neighbours add light), and the star's own core (within half the
    median stamp's FWHM of its centre ``xy``, at least 1 px) is never clipped here: a sharp
    star half a pixel off the median differs most there, and the fit's own
    clipping, with a model, judges those pixels later.  Returns the new
    weights and each star's flux refitted to the median profile on its
    remaining pixels.
    """
    from scipy import ndimage

    f = np.where(np.abs(flux) > 0, flux, 1.0)[:, None, None]
    stack = np.where(w > 0, (d - sky[:, None, None]) / f, np.nan)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        med = np.nanmedian(stack, axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    peak = med.max()
    if peak <= 0 or 2.0 * np.sqrt((med >= 0.5 * peak).sum() / np.pi) < UNDERSAMPLED_FWHM:
        # undersampled stars: a star's shape is its sub-pixel phase, not the median's; the median says nothing
        # about which pixels are foreign (on EY UMa this clipped the stars' cores' neighbours, and the fit put
        # a pedestal there: fluxes 2-30x the aperture's); the fit's own clipping, with a model, judges them
        return w, flux
    grad = ndimage.maximum_filter(med, 3) - ndimage.minimum_filter(med, 3)
    ref = np.broadcast_to(med, d.shape)
    if xy is not None:  # the median profile moved to each star's own centre (sub-pixel phases)
        n, size, _ = d.shape
        yy, xx = np.mgrid[:size, :size]
        pos = np.clip(med, 0, None)
        tot = pos.sum()
        c0 = np.array([(pos * xx).sum(), (pos * yy).sum()]) / tot if tot > 0 else np.full(2, (size - 1) / 2.0)
        ref = np.stack([ndimage.shift(med, (xy[s, 1] - c0[1], xy[s, 0] - c0[0]), order=3, mode="constant")
                        for s in range(n)])
    dev = (d - sky[:, None, None] - f * ref) * np.sign(f)
    allowed = thr / np.sqrt(np.where(w > 0, w, 1.0)) + 0.7 * np.abs(f) * grad[None]
    bad = (dev > allowed) & (w > 0)
    bad = ndimage.binary_dilation(bad, structure=np.ones((1, 3, 3), bool))
    if xy is not None:
        n, size, _ = d.shape
        peak = med.max()
        rad = max(1.0, np.sqrt((med >= 0.5 * peak).sum() / np.pi)) if peak > 0 else 1.0
        core = np.hypot(xx[None] - xy[:, 0, None, None], yy[None] - xy[:, 1, None, None]) <= rad
        bad &= ~core
    w2 = np.where(bad, 0.0, w)
    num = np.sum(w2 * ref * (d - sky[:, None, None]), axis=(1, 2))
    den = np.sum(w2 * ref**2, axis=(1, 2))
    flux2 = np.where(den > 0, num / np.where(den > 0, den, 1.0), flux)
    return w2, flux2


def robust_weights(st, d, w0, flagged, sx, clip, chi2_nsigma):
    """Zero the weight of outlying pixels (and their neighbours); flag chi-square-outlier stars.

    A pixel is clipped when its residual, after removing the part shared by
    all stars at that stamp position (the PSF model's own error, scaled by
    each star's flux), exceeds ``clip`` sigma.  A star is flagged when its
    reduced chi-square lies ``chi2_nsigma`` robust sigmas above the median
    (and above 1.5), or when its fitted flux is not positive.  Returns
    ``(weights, flagged, many_clipped)``.
    """
    dt = d.dtype
    m = models(psf(st, sx), st.xy, st.flux, st.sky, sx.size, sx.k, sx.psf_size)
    raw = d - m
    f = jnp.where(jnp.abs(st.flux) > 0, st.flux, 1.0)[:, None, None]
    common = jnp.nanmedian(jnp.where(w0 > 0, raw / f, jnp.nan), axis=0)
    common = jnp.where(jnp.isfinite(common), common, 0.0)
    r = (raw - f * common[None]) * jnp.sqrt(st.w)
    bad = (jnp.abs(r) > clip).astype(dt)
    ker = jnp.ones((3, 3), dt)
    grown = jax.vmap(lambda b: jax.scipy.signal.convolve2d(b, ker, mode="same"))(bad) > 0
    w = jnp.where(grown, 0.0, w0)
    npix = jnp.sum(w > 0, axis=(1, 2))
    r_full = raw * jnp.sqrt(st.w)
    chi = jnp.sum(jnp.where(w > 0, r_full**2, 0.0), axis=(1, 2)) / jnp.maximum(npix - 4, 1).astype(dt)
    live = (npix > 3) & ~flagged
    med = jnp.nanmedian(jnp.where(live, chi, jnp.nan))
    mad = 1.4826 * jnp.nanmedian(jnp.where(live, jnp.abs(chi - med), jnp.nan))
    out = live & (chi > med + chi2_nsigma * jnp.maximum(mad, 0.05 * med)) & (chi > 1.5) & (jnp.sum(live) >= 5)
    # a star fitted with no positive flux is no star of this PSF (a hole, a bad column, a negative ghost)
    flagged = flagged | out | (live & ~(st.flux > 0))
    w = jnp.where(flagged[:, None, None], 0.0, w)
    many = 4 * jnp.sum(grown & (w0 > 0), axis=(1, 2)) > jnp.maximum(jnp.sum(w0 > 0, axis=(1, 2)), 1)
    return w, flagged, many

"""photutils' EPSFBuilder on gsprep stamps: the comparison method, and GalfitS's ``photutils_method``."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from .model import from_epsf_convention, psf_shape
from .start import centroids, prepare_arrays

__all__ = ["photutils_epsf_raw"]


def photutils_epsf_raw(stamps, sigmas, masks=None, *, oversampling=1, centers=None):
    """photutils' EPSFBuilder (defaults) on gsprep stamps; returns its ePSF array (its own convention)."""
    d, w = prepare_arrays(stamps, sigmas, masks)
    return _photutils_build(d, w, int(oversampling), centers)


def _photutils_build(d, w, k, centers):
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars

    n, size, _ = d.shape
    xy = centroids(d, w, size) if centers is None else np.asarray(centers, float)
    stars = []
    for s in range(n):
        if (w[s] > 0).sum() <= 3:
            continue
        ok = w[s] > 0
        sky = np.median(d[s][ok])
        stars.append(EPSFStar(np.where(ok, d[s] - sky, 0.0), weights=np.sqrt(w[s]), cutout_center=tuple(xy[s])))
    with warnings.catch_warnings():
        # EPSFBuilder warns when it stops at maxiters; that is its normal use here
        warnings.filterwarnings("ignore", category=AstropyUserWarning)
        out = EPSFBuilder(oversampling=k, progress_bar=False)(EPSFStars(stars))
    epsf = out[0] if isinstance(out, tuple) else getattr(out, "epsf", out)
    return np.asarray(epsf.data, dtype=float), xy


def photutils_epsf(d, w, k, psf_size, centers):
    """EPSFBuilder's ePSF resampled onto gsprep's grid and converted to sub-pixel flux fractions."""
    from ..results import EPSFResult
    from scipy import ndimage

    n = d.shape[0]
    e, xy = _photutils_build(d, w, k, centers)
    ic = (np.array(e.shape) - 1) / 2.0  # photutils: the star centre is the central sample
    kk = k * psf_size
    off = np.arange(kk) - (kk - 1) / 2.0  # gsprep fine-pixel centres, in fine pixels from the centre
    yy, xx = np.meshgrid(ic[0] + off, ic[1] + off, indexing="ij")
    on_grid = ndimage.map_coordinates(e, [yy, xx], order=3, mode="constant")
    psf = from_epsf_convention(on_grid, k)
    s = psf_shape(psf, k)
    shape = dict(fwhm=s["fwhm"], ellipticity=s["ellipticity"], e1=s["e1"], e2=s["e2"], reg_kind="photutils")
    return EPSFResult(psf=psf, centers=xy, fluxes=np.full(n, np.nan), sky=np.full(n, np.nan),
                      chi2=np.full(n, np.nan), loss_history=np.array([]),
                      flags=np.zeros(n, np.int32), oversampling=k, converged=True, n_iter=0, **shape)

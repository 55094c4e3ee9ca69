"""Result types of the PSF fit and their numpy-only helpers (no JAX: :mod:`gsprep.io` reads and writes them).

* :class:`EPSFResult`: a fitted PSF, its stars, its quality report and, for
  a PSF that varies across the frame, its spatial model (:meth:`EPSFResult.psf_at`).
* :func:`psf_shape`: FWHM and ellipticity of a PSF as a star image shows them.
* :func:`monomials`: the polynomial terms of the spatial model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EPSFResult", "FLAG_BITS", "PSFConvergenceWarning", "PSFExtrapolationWarning", "monomials",
           "n_terms", "psf_shape"]

#: star flags (OR-ed): 1 chi-square outlier (left out of the fit), 2 no usable pixels,
#: 4 more than a quarter of its pixels clipped, 8 fitted flux not positive (left out of the fit)
FLAG_BITS = {1: "chi2 outlier", 2: "no usable pixels", 4: "many pixels clipped", 8: "flux not positive"}


class PSFConvergenceWarning(UserWarning):
    """The PSF fit stopped at ``max_iter`` before the PSF stopped changing."""


@dataclass(frozen=True)
class EPSFResult:
    """Result of :func:`fit_epsf` (a leading band axis on every array field when stamps had one).

    Attributes
    ----------
    psf : ndarray (k*p, k*p)
        The PSF: sub-pixel flux fractions, sum 1, centroid at the centre of
        the central native pixel.
    centers : ndarray (n, 2)
        Each star's ``(x, y)`` in its stamp, 0-based native pixels.
    fluxes, sky : ndarray (n,)
        Total flux (within the PSF grid) and constant local sky, data units.
    chi2 : ndarray (n,)
        Reduced chi-square of each star (NaN without usable pixels).
    loss_history : ndarray
        Objective per pixel in use (chi-square plus penalties) after each
        step of the final fit, on a fixed pixel set: it never rises.  With
        bands, ``(bands, longest)`` padded with NaN (:meth:`band` cuts it).
    flags : ndarray of int (n,)
        See :data:`FLAG_BITS`; 0 = good.
    oversampling : int
    converged : bool or ndarray
        Whether the final fit stopped because the PSF stopped changing
        (``tol``), not because it reached ``max_iter``.
    n_iter : int or ndarray
        Gauss-Newton steps of the final fit.
    heldout_chi2 : float or ndarray
        Median over the stars of each star's reduced chi-square when fitted
        with a PSF made without it (cross-validation); ~1 when the PSF is as
        good as the noise allows.  NaN when there were too few stars to hold
        any out.
    residual_flux : float or ndarray
        Median over held-out stars of ``sqrt(max(sum(r^2 - sigma^2), 0)) / F``:
        the fraction of a star's flux left in residual structure beyond the noise.
    fwhm, ellipticity, e1, e2 : float or ndarray
        Shape of the pixel-integrated PSF in native pixels, the same for any
        oversampling (:func:`gsprep.psf.psf_shape`).
    reg_kind, reg_strength : str, float (or arrays)
        The regularisation used (``"profile"``: curvature of the departure
        from the fitted Moffat; ``"smooth"``: curvature of the PSF), and its
        strength in units of the data's information per fine pixel.
    cv_scores : ndarray (n_candidates, 3) or None
        Every candidate's ``(gamma, strength, score)``: the mean held-out
        reduced chi-square, each star's capped at 5 x the median.
    """

    psf: np.ndarray
    centers: np.ndarray
    fluxes: np.ndarray
    sky: np.ndarray
    chi2: np.ndarray
    loss_history: np.ndarray
    flags: np.ndarray
    oversampling: int = 1
    converged: object = True
    n_iter: object = 0
    heldout_chi2: object = np.nan
    residual_flux: object = np.nan
    fwhm: object = np.nan
    ellipticity: object = np.nan
    e1: object = np.nan
    e2: object = np.nan
    reg_kind: object = ""
    reg_strength: object = np.nan
    cv_scores: object = field(default=None, repr=False)
    degree: object = 0
    spatial: object = field(default=None, repr=False)

    @property
    def native_psf(self):
        """The PSF at native sampling (sum of each ``k x k`` block)."""
        k = self.oversampling
        p = np.asarray(self.psf)
        sh = p.shape[:-2] + (p.shape[-2] // k, k, p.shape[-1] // k, k)
        return p.reshape(sh).sum(axis=(-3, -1))

    def band(self, i, n_stars=None):
        """Band ``i`` of a band-stacked result, as a one-band result (its first ``n_stars`` stars)."""
        p = np.asarray(self.psf)
        if p.ndim != 3:
            msg = f"band() needs a band-stacked result (psf of shape (bands, K, K)), got {p.shape}"
            raise ValueError(msg)
        m = slice(None) if n_stars is None else slice(0, int(n_stars))
        n_iter = int(np.asarray(self.n_iter)[i])
        cv = None if self.cv_scores is None else np.asarray(self.cv_scores)[i]
        return EPSFResult(psf=p[i], centers=np.asarray(self.centers)[i, m], fluxes=np.asarray(self.fluxes)[i, m],
                          sky=np.asarray(self.sky)[i, m], chi2=np.asarray(self.chi2)[i, m],
                          loss_history=np.asarray(self.loss_history)[i, :n_iter], flags=np.asarray(self.flags)[i, m],
                          oversampling=self.oversampling, converged=bool(np.asarray(self.converged)[i]), n_iter=n_iter,
                          heldout_chi2=float(np.asarray(self.heldout_chi2)[i]),
                          residual_flux=float(np.asarray(self.residual_flux)[i]), fwhm=float(np.asarray(self.fwhm)[i]),
                          ellipticity=float(np.asarray(self.ellipticity)[i]), e1=float(np.asarray(self.e1)[i]),
                          e2=float(np.asarray(self.e2)[i]), reg_kind=str(np.asarray(self.reg_kind)[i]),
                          reg_strength=float(np.asarray(self.reg_strength)[i]), cv_scores=cv,
                          degree=int(np.asarray(self.degree)[i]), spatial=self._band_spatial(i))

    def _band_spatial(self, i):
        sp = self.spatial
        if sp is None or int(np.asarray(sp["degree"])[i]) == 0:
            return None
        deg = int(np.asarray(sp["degree"])[i])
        return {"degree": deg, "planes": np.asarray(sp["planes"])[i, : n_terms(deg)],
                "offset": np.asarray(sp["offset"])[i], "scale": np.asarray(sp["scale"])[i], "hull": sp["hull"][i],
                **{key: sp[key][i] if sp.get(key) is not None else None for key in ("scores", "stars_xy", "heldout")}}

    def psf_at(self, x, y, *, warn=True):
        """The PSF at frame pixel ``(x, y)`` (0-based), same convention as :attr:`psf` (sum 1, centred).

        With a spatial model (``degree > 0``) the PSF's sub-pixel values are
        the polynomial in frame position evaluated there; a position outside
        the convex hull of the stars that made it is an extrapolation and
        warns (:class:`PSFExtrapolationWarning`); beyond the stars' bounding
        box the polynomial is evaluated at the box's nearest point (a
        polynomial runs away outside its data).  A constant PSF
        (``degree = 0``) is the same everywhere.  ``x, y`` may be arrays of
        the same shape: then one PSF per position, ``(..., K, K)``; a
        band-stacked result gives ``(bands, ..., K, K)``.
        """
        xa = np.asarray(x, dtype=float)
        ya = np.asarray(y, dtype=float)
        if xa.shape != ya.shape or not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
            msg = f"psf_at: x and y must be finite numbers or arrays of one shape, got {x!r}, {y!r}"
            raise ValueError(msg)
        p = np.asarray(self.psf)
        sp = self.spatial
        if sp is None:
            if xa.ndim == 0:
                return p.copy()
            q = p.reshape(p.shape[:-2] + (1,) * xa.ndim + p.shape[-2:])
            return np.broadcast_to(q, p.shape[:-2] + xa.shape + p.shape[-2:]).copy()
        planes = np.asarray(sp["planes"], float)
        offset, scale = np.asarray(sp["offset"], float), np.asarray(sp["scale"], float)
        deg = int(np.max(sp["degree"]))
        if warn:
            hulls = sp["hull"] if planes.ndim == 4 else [sp["hull"]]
            outside = [~inside_hull(np.asarray(h, float), xa, ya) for h in hulls if h is not None]
            if any(np.any(o) for o in outside):
                warnings.warn(f"psf_at: ({x}, {y}) lies outside the stars' convex hull: the PSF there is "
                              "extrapolated from the spatial model (held at the stars' bounding box) and may be "
                              "inaccurate",
                              PSFExtrapolationWarning, stacklevel=2)
        xy = np.stack([xa, ya], axis=-1)
        if planes.ndim == 3:
            c = monomials(np.clip((xy - offset) / scale, -1.0, 1.0), deg)  # (..., T)
            out = np.tensordot(c, planes[: c.shape[-1]], axes=(-1, 0))
            return out / out.sum(axis=(-2, -1), keepdims=True)
        outs = []
        for b in range(planes.shape[0]):
            c = monomials(np.clip((xy - offset[b]) / scale[b], -1.0, 1.0), deg)
            o = np.tensordot(c, planes[b, : c.shape[-1]], axes=(-1, 0))
            outs.append(o / o.sum(axis=(-2, -1), keepdims=True))
        return np.stack(outs)


class PSFExtrapolationWarning(UserWarning):
    """A PSF was evaluated outside the stars' convex hull (the spatial model extrapolates there)."""


def n_terms(degree):
    """Number of polynomial terms of total degree <= ``degree`` in two variables."""
    d = int(degree)
    return (d + 1) * (d + 2) // 2


def term_degrees(degree):
    """Total degree of each term, in :func:`monomials` order."""
    return np.array([t for t in range(int(degree) + 1) for _ in range(t + 1)], dtype=int)


def monomials(u, degree, xp=np):
    """Terms ``1, x, y, x^2, x y, y^2, ...`` of total degree <= ``degree`` at normalised positions ``u (..., 2)``.

    Returns ``(..., n_terms(degree))``.  ``xp`` is the array module (numpy
    or jax.numpy).
    """
    x, y = u[..., 0], u[..., 1]
    terms = [x**(t - j) * y**j for t in range(int(degree) + 1) for j in range(t + 1)]
    return xp.stack(terms, axis=-1)


def convex_hull(points):
    """Vertices ``(m, 2)`` of the convex hull of ``points (n, 2)`` (all points when fewer than 3 or collinear)."""
    pts = np.unique(np.asarray(points, float).reshape(-1, 2), axis=0)
    if len(pts) < 3:
        return pts
    # Andrew's monotone chain
    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def inside_hull(hull, x, y, tol=1.0):
    """Whether ``(x, y)`` lies inside the convex polygon ``hull`` (counter-clockwise vertices), or within ``tol`` px of it."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    h = np.asarray(hull, float)
    if len(h) < 3:
        return np.zeros(np.broadcast(x, y).shape, bool)
    ok = np.ones(np.broadcast(x, y).shape, bool)
    for i in range(len(h)):
        a, b = h[i], h[(i + 1) % len(h)]
        edge = max(float(np.hypot(*(b - a))), 1e-12)
        # signed distance to the edge's line, positive inside
        ok &= ((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])) / edge >= -tol
    return ok


def psf_shape(psf, oversampling, *, upsample=None):
    """FWHM and ellipticity of a PSF as a star image shows them, independent of the oversampling.

    The PSF is first integrated over the native pixel (sums of ``k x k``
    sub-pixels), so every oversampling describes the same function, the
    pixel-integrated PSF, and then measured on a grid of 1/8 native pixel
    (band-limited upsampling):

    * ``fwhm``: the diameter of the circle whose area equals the area above
      half the peak (native pixels), a direct measure for any profile;
    * ``e1, e2, ellipticity``: from adaptive (elliptical-Gaussian-weighted)
      second moments, ``e = (a^2 - b^2) / (a^2 + b^2)``.

    Returns a dict with ``fwhm``, ``e1``, ``e2``, ``ellipticity`` and
    ``sigma`` (adaptive-moment size, native px).
    """
    from scipy import ndimage, signal

    k = int(oversampling)
    p = np.asarray(psf, float)
    n = p.shape[0]
    # the flux in a native-pixel box is exact where the box's edges fall on sub-pixel edges: the sum of
    # k x k sub-pixels, a box centred on a sub-pixel corner for even k (to_epsf_convention's half
    # weights at even k blur the PSF: +3% FWHM at k = 2)
    e = signal.convolve2d(p, np.ones((k, k)), mode="full") if k > 1 else p
    ne = e.shape[0]
    up = max(1, int(np.ceil(8 / k))) if upsample is None else int(upsample)
    # band-limited (Fourier) upsampling, exact for a PSF sampled above Nyquist
    fine = signal.resample(signal.resample(e, ne * up, axis=0), ne * up, axis=1) if up > 1 else e
    step = 1.0 / (k * up)
    # output sample j sits at index j / up of e, i.e. sub-pixel j / up - (k - 1) / 2 of the PSF, whose
    # centre is sub-pixel (n - 1) / 2
    coord = (np.arange(fine.shape[0]) / up - (k - 1) / 2.0 - (n - 1) / 2.0) / k
    yy, xx = np.meshgrid(coord, coord, indexing="ij")
    peak = fine.max()
    if not np.isfinite(peak) or peak <= 0:
        return dict(fwhm=np.nan, e1=np.nan, e2=np.nan, ellipticity=np.nan, sigma=np.nan)
    # the half-maximum region connected to the peak
    above = fine >= 0.5 * peak
    lab, _ = ndimage.label(above)
    core = lab == lab[np.unravel_index(np.argmax(fine), fine.shape)]
    fwhm = 2.0 * np.sqrt(core.sum() * step**2 / np.pi)
    # adaptive moments (Bernstein & Jarvis 2002 style fixed point)
    s = max(fwhm / 2.3548, 0.3)
    mxx = myy = s**2
    mxy = 0.0
    x0 = y0 = 0.0
    for _ in range(50):
        det = mxx * myy - mxy**2
        ixx, iyy, ixy = myy / det, mxx / det, -mxy / det
        dx, dy = xx - x0, yy - y0
        w = np.exp(-0.5 * (ixx * dx**2 + 2 * ixy * dx * dy + iyy * dy**2)) * fine
        t = w.sum()
        if t <= 0:
            break
        x0, y0 = (w * xx).sum() / t, (w * yy).sum() / t
        dx, dy = xx - x0, yy - y0
        nxx, nyy, nxy = 2 * (w * dx * dx).sum() / t, 2 * (w * dy * dy).sum() / t, 2 * (w * dx * dy).sum() / t
        done = abs(nxx - mxx) + abs(nyy - myy) + abs(nxy - mxy) < 1e-6 * (mxx + myy)
        mxx, myy, mxy = max(nxx, 1e-4), max(nyy, 1e-4), nxy
        if done:
            break
    e1 = (mxx - myy) / (mxx + myy)
    e2 = 2 * mxy / (mxx + myy)
    return dict(fwhm=float(fwhm), e1=float(e1), e2=float(e2), ellipticity=float(np.hypot(e1, e2)),
                sigma=float(np.sqrt((mxx + myy) / 2)))

"""The PSF model: a pixelated PSF on a ``k``-times finer grid, shifted and binned onto each star.

Model of star ``s`` in its stamp (native pixels)::

    model_s = F_s * A(y_s) @ P @ A(x_s).T + b_s

``P`` (``K x K``, ``K = k * psf_size``) holds the fraction of the star's
flux in each sub-pixel (sum 1).  ``A(x)`` (``size x K``) shifts the fine
grid by the star's sub-pixel offset with band-limited (sinc) interpolation
and sums each ``k`` fine pixels into one native pixel, so the model is
separable: two small matrix products per star.  The sinc is periodic over
``2 K`` fine pixels, twice the PSF grid, so flux shifted past a stamp edge
leaves the stamp instead of wrapping round to the other side, while the
shift stays exact for a PSF that is band-limited on the fine grid (every
diffraction-limited PSF sampled at ``k >= 2``, and every seeing PSF).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..results import psf_shape

__all__ = ["psf_model_stamps", "to_epsf_convention", "psf_shape"]


def centre(k, psf_size):
    """Fine-grid coordinate (0-based) of the PSF centre: the centre of the central native pixel."""
    return k * (psf_size // 2) + (k - 1) / 2.0


def moffat_fine(theta, k, psf_size):
    """Elliptical Moffat integrated over each fine pixel (sum 1), centred on the central pixel.

    ``theta = (log alpha [fine px], log(beta - 1), e1, e2)``.  Only a
    starting point and a reference shape for the regularisation.
    """
    dt = theta.dtype
    kk = k * psf_size
    c = centre(k, psf_size)
    m = max(2, 8 // k)
    off = (jnp.arange(m, dtype=dt) + 0.5) / m - 0.5
    t = (jnp.arange(kk, dtype=dt)[:, None] + off[None, :]).reshape(-1) - c
    dy, dx = t[:, None], t[None, :]
    # bounded: a Moffat fitted to a PSF with strong wings or spikes must not run off to a
    # delta core with beta -> 1 (it is only a start and a reference shape)
    alpha = jnp.exp(jnp.clip(theta[0], np.log(0.3 * k), np.log(kk)))
    beta = 1.0 + jnp.exp(jnp.clip(theta[1], np.log(0.5), np.log(20.0)))
    e1 = jnp.clip(theta[2], -0.8, 0.8)
    e2 = jnp.clip(theta[3], -0.8, 0.8)
    u = (1 - e1) * dx - e2 * dy
    v = -e2 * dx + (1 + e1) * dy
    prof = (1 + (u**2 + v**2) / alpha**2) ** (-beta)
    prof = prof.reshape(kk, m, kk, m).mean(axis=(1, 3))
    return prof / jnp.sum(prof)


def normalise(p):
    tot = jnp.sum(p)
    return p / jnp.where(jnp.abs(tot) > 0, tot, jnp.ones_like(tot))


def psf_of(theta, resid, k, psf_size):
    """The PSF: ``normalise(moffat(theta) + resid)``."""
    return normalise(moffat_fine(theta, k, psf_size) + resid)


def _dirichlet(x, period):
    """Periodic band-limited interpolation kernel (exact shift of a band-limited periodic signal)."""
    t = jnp.pi * x / period
    small = jnp.abs(jnp.sin(t)) < 1e-6
    ts = jnp.where(small, 0.5, t)
    xs = jnp.where(small, 0.5 * period / jnp.pi, x)
    if period % 2:
        val = jnp.sin(jnp.pi * xs) / (period * jnp.sin(ts))
    else:
        val = jnp.sin(jnp.pi * xs) / (period * jnp.tan(ts))
    return jnp.where(small, jnp.ones_like(val), val)


def design(pos, size, k, psf_size):
    """``(size, k*psf_size)`` matrix: shift the fine PSF to ``pos`` (native px) and bin it to native pixels.

    Fine PSF pixel ``j`` moves to fine stamp position ``j + k (pos - c)``
    (``c`` the PSF's central pixel) by sinc interpolation with period
    ``2 k psf_size`` (no wrap-around onto the stamp); native stamp pixel
    ``X`` then collects fine positions ``kX ... kX + k - 1``.
    """
    dt = pos.dtype
    cp = psf_size // 2
    kk = k * psf_size
    period = 2 * kk + k * max(size - psf_size, 0)
    s_f = k * (pos - cp)
    # the kernel depends on i - j only: evaluate it once per offset, binned over the k sub-rows
    m = jnp.arange(-(kk - 1), k * size, dtype=dt)
    t = jnp.arange(k, dtype=dt)
    b = _dirichlet(m[:, None] + t[None, :] - s_f, period).sum(axis=1)
    idx = k * np.arange(size)[:, None] - np.arange(kk)[None, :] + (kk - 1)
    return b[idx]


def designs(xy, size, k, psf_size):
    f = jax.vmap(lambda p: design(p, size, k, psf_size))
    return f(xy[:, 1]), f(xy[:, 0])  # Ay, Ax: (n, S, K)


def apply(ay, p, ax):
    """``A(y_s) @ p @ A(x_s).T`` for every star, ``(n, S, S)`` (the first product as one matrix product)."""
    n, s, kk = ay.shape
    q = (ay.reshape(n * s, kk) @ p).reshape(n, s, kk)
    return jnp.einsum("syl,sxl->syx", q, ax)


def adjoint(ay, g, ax):
    """``sum_s A(y_s).T @ g_s @ A(x_s)``, ``(K, K)``: the transpose of :func:`apply`."""
    n, s, kk = ay.shape
    t = jnp.einsum("syx,sxl->syl", g, ax)
    return ay.reshape(n * s, kk).T @ t.reshape(n * s, kk)


def models(psf, xy, flux, sky, size, k, psf_size):
    """Model stamps ``F_s * PSF(x - x_s) + b_s``, ``(n, size, size)``."""
    ay, ax = designs(xy, size, k, psf_size)
    return flux[:, None, None] * apply(ay, psf, ax) + sky[:, None, None]


def star_columns(psf, pos, f, size, k, psf_size):
    """A star's unit-flux model and its Jacobian columns for (x, y, flux, sky), ``(size*size, 4)``."""

    one = jnp.ones((), pos.dtype)
    ay, day = jax.jvp(lambda y: design(y, size, k, psf_size), (pos[1],), (one,))
    ax, dax = jax.jvp(lambda x: design(x, size, k, psf_size), (pos[0],), (one,))
    q = ay @ psf  # (S, K): the PSF shifted and binned in y
    m1 = q @ ax.T
    jx = q @ dax.T
    jy = day @ (psf @ ax.T)
    cols = jnp.stack([f * jx, f * jy, m1, jnp.ones_like(m1)], axis=-1).reshape(-1, 4)
    return m1, cols


def ring(kk, k, dtype):
    """1 on the outer native pixel of the fine PSF grid (where the PSF pedestal meets the sky)."""
    m = jnp.ones((kk, kk), dtype)
    return m.at[k:-k, k:-k].set(0.0)


def laplacian(p):
    """Five-point Laplacian on the fine grid (zero outside)."""
    z0 = jnp.zeros((1, p.shape[1]), p.dtype)
    z1 = jnp.zeros((p.shape[0], 1), p.dtype)
    return (jnp.diff(p, n=2, axis=0, prepend=z0, append=z0) + jnp.diff(p, n=2, axis=1, prepend=z1, append=z1))


_models_jit = jax.jit(models, static_argnums=(4, 5, 6))


def psf_model_stamps(result, size=None):
    """Model stamps ``F * PSF(x - x_s) + b`` of a fit (one band), for residual plots.

    Parameters
    ----------
    result : EPSFResult
        One band's fit (no leading band axis).
    size : int, optional
        Stamp size (native pixels, odd); default the PSF's native size.

    Returns
    -------
    ndarray (n, size, size)
        Each star's model in data units, on its stamp's pixels.
    """
    psf = np.asarray(result.psf)
    if psf.ndim != 2:
        msg = f"psf_model_stamps takes one band's result, got a PSF of shape {psf.shape}"
        raise ValueError(msg)
    k = int(result.oversampling)
    psf_size = psf.shape[-1] // k
    size = psf_size if size is None else int(size)
    dt = jnp.float32
    sp = getattr(result, "spatial", None)
    xy = np.asarray(result.centers, float)
    if sp is not None and sp.get("stars_xy") is not None and len(sp["stars_xy"]) == len(xy):
        # a PSF that varies across the frame: each star with the PSF at its own position
        local = result.psf_at(sp["stars_xy"][:, 0], sp["stars_xy"][:, 1], warn=False)
        return np.concatenate([np.asarray(_models_jit(jnp.asarray(local[i], dt), jnp.asarray(xy[i:i + 1], dt),
                                                      jnp.asarray(result.fluxes[i:i + 1], dt),
                                                      jnp.asarray(result.sky[i:i + 1], dt), size, k, psf_size))
                               for i in range(len(xy))])
    return np.asarray(_models_jit(jnp.asarray(psf, dt), jnp.asarray(xy, dt),
                                  jnp.asarray(result.fluxes, dt), jnp.asarray(result.sky, dt), size, k, psf_size))


def to_epsf_convention(psf, oversampling):
    """gsprep PSF (sub-pixel flux) -> photutils ePSF convention (pixel-integrated PSF at 1/k steps).

    Each value becomes the flux in a native-pixel-sized box centred on that
    fine pixel (a ``k``-wide box sum; half weights at the edges for even
    ``k``).  The result sums to ``k**2``.
    """
    from scipy import ndimage

    k = int(oversampling)
    p = np.asarray(psf, dtype=float)
    if k % 2:
        ker = np.ones(k)
    else:
        ker = np.ones(k + 1)
        ker[0] = ker[-1] = 0.5
    out = ndimage.convolve1d(p, ker, axis=-1, mode="constant")
    return ndimage.convolve1d(out, ker, axis=-2, mode="constant")


def from_epsf_convention(e, k, iters=200):
    """Inverse of :func:`to_epsf_convention` by non-negative least squares (Richardson-Lucy)."""
    e = np.clip(np.asarray(e, float), 0, None)
    f = np.full_like(e, e.sum() / k**2 / e.size)
    for _ in range(iters):
        model = to_epsf_convention(f, k)
        ratio = np.where(model > 0, e / np.where(model > 0, model, 1), 0.0)
        f = f * to_epsf_convention(ratio, k) / k**2
    return f / f.sum()

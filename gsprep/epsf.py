"""Empirical PSF: a jit-compiled joint fit of one pixelated PSF and every star's centre, flux and sky.

Model of star ``s`` in its stamp (native pixels)::

    model_s = F_s * A(y_s) @ P @ A(x_s).T + b_s

``P`` is the PSF on a grid ``oversampling`` (``k``) times finer than the
pixels, each value the fraction of the star's flux in that sub-pixel (sum 1):
an elliptical Moffat plus a free pixel correction held by weak priors.
``A(x)`` (``size x k*psf_size``) shifts the fine grid by the star's sub-pixel
offset with band-limited (periodic sinc) interpolation, which conserves flux,
and sums each ``k`` fine pixels into one native pixel, so the model is
separable: two small matrix products per star.

All parameters are fitted together by Gauss-Newton on the chi-square with
the sigma images: each step solves the normal equations matrix-free
(``jax.linearize``), eliminating the stars exactly (they do not interact)
and running preconditioned conjugate gradients on the PSF.  A few steps
converge; there is no learning rate to tune.  The whole fit is one
jit-compiled function and takes a band axis through ``jax.vmap``.

The PSF centroid is pinned to the centre of the central pixel (a penalty that
fixes the shift shared by the PSF and all star centres), the PSF is
normalised to sum 1, and the fit is robust by default: gross outliers are
removed before anything is fitted, pixels beyond ``clip`` sigma are clipped
after the first PSF steps, and stars whose reduced chi-square is an outlier
are flagged and left out of the last steps.

Note on conventions: gsprep's oversampled PSF is the flux in each sub-pixel
(summing each ``k x k`` block gives the native-pixel PSF).  photutils' ePSF
instead samples the pixel-integrated PSF at ``1/k`` pixel steps;
:func:`to_epsf_convention` converts gsprep's PSF to that convention exactly.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_nonnegative, check_positive

__all__ = ["EPSFResult", "fit_epsf", "fit_stars", "to_epsf_convention", "psf_model_stamps", "FLAG_BITS"]

#: star flags (OR-ed): 1 chi-square outlier (left out of the refit), 2 no usable pixels,
#: 4 more than a quarter of its pixels clipped
FLAG_BITS = {1: "chi2 outlier", 2: "no usable pixels", 4: "many pixels clipped"}


@dataclass(frozen=True)
class EPSFResult:
    """Result of :func:`fit_epsf` (a leading band axis on every field when stamps had one).

    Attributes
    ----------
    psf : ndarray (k*p, k*p)
        The PSF: sub-pixel flux fractions, sum 1, centre at the centre of
        the central native pixel.
    centers : ndarray (n, 2)
        Each star's ``(x, y)`` in its stamp, 0-based native pixels.
    fluxes, sky : ndarray (n,)
        Total flux and constant local sky, data units.
    chi2 : ndarray (n,)
        Reduced chi-square of each star (NaN without usable pixels).
    loss_history : ndarray
        Reduced chi-square (on the pixels in use) after each Gauss-Newton step.
    flags : ndarray of int (n,)
        See :data:`FLAG_BITS`; 0 = good.
    oversampling : int
    converged : bool or ndarray
        Whether the last step changed the PSF by less than ``tol`` of its peak.
    n_iter : int or ndarray
        Gauss-Newton steps taken.
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

    @property
    def native_psf(self):
        """The PSF at native sampling (sum of each ``k x k`` block)."""
        k = self.oversampling
        p = np.asarray(self.psf)
        sh = p.shape[:-2] + (p.shape[-2] // k, k, p.shape[-1] // k, k)
        return p.reshape(sh).sum(axis=(-3, -1))


class _State(eqx.Module):
    """Fit state (a pytree, so jit and vmap pass straight through).

    The PSF is ``normalise(moffat(theta) + resid)``: an elliptical Moffat on
    the fine grid (4 numbers) plus a free pixel correction ``resid`` held
    near zero by a Gaussian prior, so the PSF can take any shape the data
    demand while the noise in poorly constrained pixels shrinks to a smooth
    profile instead of becoming PSF structure.
    """

    theta: jax.Array  # (4,): log alpha (fine px), log(beta - 1), e1, e2
    resid: jax.Array  # (K, K)
    xy: jax.Array  # (n, 2) native px in the stamp
    flux: jax.Array  # (n,)
    sky: jax.Array  # (n,)
    w: jax.Array  # (n, S, S) pixel weights in use (1 / sigma^2, 0 = excluded)


def _centre(k, psf_size):
    return k * (psf_size // 2) + (k - 1) / 2.0


def _moffat_fine(theta, k, psf_size):
    """Elliptical Moffat integrated over each fine pixel (sum 1), centred on the central pixel."""
    kk = k * psf_size
    c = _centre(k, psf_size)
    m = max(2, 8 // k)
    off = (jnp.arange(m, dtype=theta.dtype) + 0.5) / m - 0.5
    t = (jnp.arange(kk, dtype=theta.dtype)[:, None] + off[None, :]).reshape(-1) - c
    dy, dx = t[:, None], t[None, :]
    alpha = jnp.exp(theta[0])
    beta = 1.0 + jnp.exp(theta[1])
    e1 = jnp.clip(theta[2], -0.8, 0.8)
    e2 = jnp.clip(theta[3], -0.8, 0.8)
    u = (1 - e1) * dx - e2 * dy
    v = -e2 * dx + (1 + e1) * dy
    prof = (1 + (u**2 + v**2) / alpha**2) ** (-beta)
    prof = prof.reshape(kk, m, kk, m).mean(axis=(1, 3))
    return prof / jnp.sum(prof)


def _psf_of(theta, resid, k, psf_size):
    p = _moffat_fine(theta, k, psf_size) + resid
    tot = jnp.sum(p)
    return p / jnp.where(jnp.abs(tot) > 0, tot, 1.0)


def _dirichlet(x, period):
    """Periodic band-limited interpolation kernel (exact shift of a band-limited signal)."""
    t = jnp.pi * x / period
    small = jnp.abs(jnp.sin(t)) < 1e-6
    ts = jnp.where(small, 0.5, t)
    xs = jnp.where(small, 0.5 * period / jnp.pi, x)
    if period % 2:
        val = jnp.sin(jnp.pi * xs) / (period * jnp.sin(ts))
    else:
        val = jnp.sin(jnp.pi * xs) / (period * jnp.tan(ts))
    return jnp.where(small, 1.0, val)  # the limit at every multiple of the period


def _design(pos, size, k, psf_size):
    """(size, k*psf_size) matrix: shift the fine PSF to ``pos`` and bin it to native pixels.

    Fine PSF pixel ``j`` moves to fine stamp position ``j + k (pos - c)``
    (``c`` the PSF's central pixel) by band-limited (periodic sinc)
    interpolation on the stamp's fine grid, which conserves flux and is
    exact for a PSF that is well sampled on the fine grid; native stamp
    pixel ``X`` then collects fine positions ``kX ... kX + k - 1``.
    """
    cp = psf_size // 2
    kk = k * psf_size
    s_f = k * (pos - cp)
    # the kernel depends on i - j only: evaluate it once per offset, binned over the k sub-rows
    m = jnp.arange(-(kk - 1), k * size, dtype=pos.dtype)
    t = jnp.arange(k, dtype=pos.dtype)
    b = _dirichlet(m[:, None] + t[None, :] - s_f, k * size).sum(axis=1)
    idx = k * jnp.arange(size)[:, None] - jnp.arange(kk)[None, :] + (kk - 1)
    return b[idx]


def _ring(kk, k, dtype):
    """1 on the outer native pixel of the fine PSF grid.

    The pixel correction's mean there is held at 0: a constant added to the
    PSF is exactly degenerate with every star's local sky (the PSF grid
    covers the whole stamp), so the far wings follow the Moffat instead.
    """
    m = jnp.ones((kk, kk), dtype)
    return m.at[k:-k, k:-k].set(0.0)


def _designs(xy, size, k, psf_size):
    f = jax.vmap(lambda p: _design(p, size, k, psf_size))
    return f(xy[:, 1]), f(xy[:, 0])  # Ay, Ax: (n, S, K)


def _models(psf, xy, flux, sky, size, k, psf_size):
    ay, ax = _designs(xy, size, k, psf_size)
    return flux[:, None, None] * jnp.einsum("syj,jl,sxl->syx", ay, psf, ax) + sky[:, None, None]


def _star_columns(psf, pos, f, size, k, psf_size):
    """A star's unit-flux model and its Jacobian columns for (x, y, flux, sky), ``(size*size, 4)``."""

    def unit(p):
        return _design(p[1], size, k, psf_size) @ psf @ _design(p[0], size, k, psf_size).T

    m1 = unit(pos)
    jac = jax.jacfwd(unit)(pos)  # (S, S, 2)
    cols = jnp.stack([f * jac[..., 0], f * jac[..., 1], m1, jnp.ones_like(m1)], axis=-1).reshape(-1, 4)
    return m1, cols


def _star_step(st, d, size, k, psf_size, a_sky=0.0, n_gn=3):
    """Gauss-Newton on each star's (x, y, flux, sky) with the PSF fixed."""
    psf = _psf_of(st.theta, st.resid, k, psf_size)

    def one(pos, f, b, data, w):
        def it(carry, _):
            pos, f, b = carry
            m1, cols = _star_columns(psf, pos, f, size, k, psf_size)
            r = data - (f * m1 + b)
            ww = w.reshape(-1)
            h = cols.T @ (ww[:, None] * cols)
            g = cols.T @ (ww * r.reshape(-1))
            sw = jnp.sum(ww)
            h = h.at[3, 3].add(a_sky * sw)
            g = g.at[3].add(-a_sky * sw * b)
            h = h + 1e-6 * jnp.diag(jnp.diag(h)) + 1e-30 * jnp.eye(4)
            step = jnp.linalg.solve(h, g)
            step = jnp.where(jnp.isfinite(step), step, 0.0)
            dp = jnp.clip(step[:2], -0.3, 0.3)
            return (pos + dp, f + step[2], b + step[3]), None

        (pos, f, b), _ = jax.lax.scan(it, (pos, f, b), None, length=n_gn)
        return pos, f, b

    xy, flux, sky = jax.vmap(one)(st.xy, st.flux, st.sky, d, st.w)
    ok = jnp.sum(st.w > 0, axis=(1, 2)) > 3
    xy = jnp.where(ok[:, None], xy, st.xy)
    flux = jnp.where(ok, flux, st.flux)
    sky = jnp.where(ok, sky, st.sky)
    return eqx.tree_at(lambda s: (s.xy, s.flux, s.sky), st, (xy, flux, sky))


def _fit_theta(psf0, k, psf_size, n_it=15):
    """Moffat parameters of a PSF image by Gauss-Newton (the starting shape)."""
    c = _centre(k, psf_size)
    kk = k * psf_size
    g = jnp.arange(kk, dtype=psf0.dtype) - c
    r2 = g[:, None] ** 2 + g[None, :] ** 2
    wts = psf0.sum()
    var = jnp.sum(jnp.clip(psf0, 0, None) * r2 * (r2 < (4 * k) ** 2)) / jnp.maximum(wts, 1e-30) / 2
    fwhm = 2.3548 * jnp.sqrt(jnp.clip(var, 0.25 * k**2, (psf_size * k / 4) ** 2))
    theta = jnp.array([jnp.log(fwhm / 1.0197), jnp.log(2.0), 0.0, 0.0], dtype=psf0.dtype)

    def res(th):
        return (_moffat_fine(th, k, psf_size) - psf0).reshape(-1)

    def it(th, _):
        jac = jax.jacfwd(res)(th)
        h = jac.T @ jac
        h = h + 1e-3 * jnp.diag(jnp.diag(h)) + 1e-30 * jnp.eye(4)
        step = jnp.linalg.solve(h, -jac.T @ res(th))
        step = jnp.where(jnp.isfinite(step), jnp.clip(step, -0.5, 0.5), 0.0)
        return th + step, None

    theta, _ = jax.lax.scan(it, theta, None, length=n_it)
    return theta


def _chi2_map(st, d, size, k, psf_size):
    psf = _psf_of(st.theta, st.resid, k, psf_size)
    m = _models(psf, st.xy, st.flux, st.sky, size, k, psf_size)
    return (d - m) * jnp.sqrt(st.w)


def _robust_weights(st, d, w0, flagged, size, k, psf_size, clip, chi2_nsigma, flag_stars=True):
    """Zero the weight of outlying pixels (and their neighbours); flag chi2-outlier stars.

    A pixel is clipped when its residual, after removing the part shared by
    all stars at that stamp position (the PSF model's own error, scaled by
    each star's flux), exceeds ``clip`` sigma: a cosmic ray or a neighbour
    belongs to one star, a PSF mismatch to all of them, and only the former
    is clipped.
    """
    psf = _psf_of(st.theta, st.resid, k, psf_size)
    m = _models(psf, st.xy, st.flux, st.sky, size, k, psf_size)
    raw = d - m
    f = jnp.where(jnp.abs(st.flux) > 0, st.flux, 1.0)[:, None, None]
    common = jnp.nanmedian(jnp.where(w0 > 0, raw / f, jnp.nan), axis=0)
    common = jnp.where(jnp.isfinite(common), common, 0.0)
    r = (raw - f * common[None]) * jnp.sqrt(st.w)
    bad = (jnp.abs(r) > clip).astype(d.dtype)
    ker = jnp.ones((3, 3), d.dtype)
    grown = jax.vmap(lambda b: jax.scipy.signal.convolve2d(b, ker, mode="same"))(bad) > 0
    w = jnp.where(grown, 0.0, w0)
    npix = jnp.sum(w > 0, axis=(1, 2))
    r_full = raw * jnp.sqrt(st.w)
    chi = jnp.sum(jnp.where(w > 0, r_full**2, 0.0), axis=(1, 2)) / jnp.maximum(npix - 4, 1)
    live = (npix > 3) & ~flagged
    med = jnp.nanmedian(jnp.where(live, chi, jnp.nan))
    mad = 1.4826 * jnp.nanmedian(jnp.where(live, jnp.abs(chi - med), jnp.nan))
    out = live & (chi > med + chi2_nsigma * jnp.maximum(mad, 0.05 * med)) & (chi > 1.5) & (jnp.sum(live) >= 5)
    out = out & flag_stars
    flagged = flagged | out
    w = jnp.where(flagged[:, None, None], 0.0, w)
    many = jnp.sum(grown & (w0 > 0), axis=(1, 2)) > 0.25 * jnp.maximum(jnp.sum(w0 > 0, axis=(1, 2)), 1)
    return w, flagged, many


def _gn_step(st, d, size, k, psf_size, a_sky, a_tv, prior, smooth, n_cg, shape_phase):
    """One joint Gauss-Newton step on every parameter, solved matrix-free by Jacobi-preconditioned CG.

    The normal equations ``J^T W J delta = -J^T W r`` are applied with
    ``jax.linearize`` (a Jacobian-vector product and its transpose), so the
    PSF and every star move together: the couplings that make alternating
    fits crawl (sky against PSF wings, centres against PSF asymmetry) are
    handled in one step.  Penalty rows: the PSF centroid pinned to the centre
    of the central pixel; the pixel correction's Gaussian prior (``prior``
    times the PSF peak, per fine pixel) and curvature (``smooth``); total
    variation (``a_tv``, reweighted); the sky prior (``a_sky``).
    """
    c = _centre(k, psf_size)
    K = k * psf_size
    g = jnp.arange(K, dtype=d.dtype) - c
    sw = jnp.sqrt(st.w)
    psf_now = _psf_of(st.theta, st.resid, k, psf_size)
    ay, ax = _designs(st.xy, size, k, psf_size)
    f2w = (st.flux**2)[:, None, None] * st.w
    diag_p = jnp.einsum("syj,syx,sxl->jl", ay**2, f2w, ax**2)
    scale = jnp.maximum(jnp.mean(diag_p), 1e-30)
    lam_c = scale * K
    lam_r = 1.0 / (prior * jnp.max(psf_now)) ** 2
    lam_s = smooth * scale
    tv_y = a_tv * scale / (jnp.abs(jnp.diff(psf_now, axis=0)) + 1e-3 * jnp.max(psf_now))
    tv_x = a_tv * scale / (jnp.abs(jnp.diff(psf_now, axis=1)) + 1e-3 * jnp.max(psf_now))
    nw = jnp.sum(st.w, axis=(1, 2))
    ring = _ring(K, k, d.dtype)

    def lap(p):
        return jnp.diff(p, n=2, axis=0, prepend=0.0, append=0.0) + jnp.diff(p, n=2, axis=1, prepend=0.0, append=0.0)

    def resid(th):
        theta, rpix, xy, flux, sky = th
        # phase 1 fits the Moffat (correction frozen), phase 2 the correction (Moffat frozen):
        # fitted together they are nearly degenerate and CG crawls
        theta = jnp.where(shape_phase, theta, jax.lax.stop_gradient(theta))
        rpix = jnp.where(shape_phase, jax.lax.stop_gradient(rpix), rpix)
        psf = _psf_of(theta, rpix, k, psf_size)
        m = _models(psf, xy, flux, sky, size, k, psf_size)
        cx = jnp.sum(psf.sum(0) * g)
        cy = jnp.sum(psf.sum(1) * g)
        ring_mean = jnp.sum(ring * rpix) / jnp.sum(ring)
        # the ring term only fixes the PSF-pedestal / sky degeneracy; a sky prior (a_sky > 0) does it better
        ring_w = jnp.where(a_sky > 0, 0.0, K)
        return ((d - m) * sw, jnp.sqrt(lam_c) * jnp.stack([cx, cy, ring_mean * ring_w]), jnp.sqrt(lam_r) * rpix,
                jnp.sqrt(lam_s) * lap(rpix), jnp.sqrt(tv_y) * jnp.diff(psf, axis=0),
                jnp.sqrt(tv_x) * jnp.diff(psf, axis=1), jnp.sqrt(a_sky * nw) * sky)

    theta0 = (st.theta, st.resid, st.xy, st.flux, st.sky)
    r0, jvp = jax.linearize(resid, theta0)
    jt = jax.linear_transpose(jvp, theta0)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, theta0)
    mu = 1e-4

    def normal(v):
        (out,) = jt(jvp(v))
        return out

    # exact 4x4 normal-equation block of every star (x, y, flux, sky): the stars do not
    # interact, so they are eliminated exactly (Schur complement) and CG runs on the PSF alone
    def star_block(pos, f, w, nwi):
        _, cols = _star_columns(psf_now, pos, f, size, k, psf_size)
        h = cols.T @ (w.reshape(-1)[:, None] * cols)
        h = h.at[3, 3].add(a_sky * nwi)
        return h + mu * jnp.diag(jnp.diag(h)) + 1e-20 * jnp.eye(4) * (jnp.trace(h) + 1e-30)

    blocks = jax.vmap(star_block)(st.xy, st.flux, st.w, nw)
    live = jnp.sum(st.w > 0, axis=(1, 2)) > 3
    blocks = jnp.where(live[:, None, None], blocks, jnp.eye(4, dtype=d.dtype))
    binv = jnp.where(live[:, None, None], jnp.linalg.inv(blocks), 0.0)  # a star without pixels moves nothing

    def split_star(v):
        return jnp.concatenate([v[2], v[3][:, None], v[4][:, None]], axis=1)  # (n, 4)

    def join_star(z):
        return (jnp.zeros(4, d.dtype), jnp.zeros((K, K), d.dtype), z[:, :2], z[:, 2], z[:, 3])

    def solve_stars(v):
        return jnp.einsum("sij,sj->si", binv, split_star(v))

    def psf_part(v):
        return (v[0], v[1])

    def as_full(vp):
        return (vp[0], vp[1], zeros[2], zeros[3], zeros[4])

    # Jacobi preconditioner for the reduced PSF system
    def theta_col(i):
        e = eqx.tree_at(lambda t: t[0], zeros, jnp.zeros(4, d.dtype).at[i].set(1.0))
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(jvp(e)))

    d_theta = jnp.stack([theta_col(i) for i in range(4)])
    dr = diag_p + lam_c * (g[None, :] ** 2 + g[:, None] ** 2) / K**2 + lam_r + 36 * lam_s
    # the pixel correction's block is close to a convolution: the data couple the fine pixels
    # of one native pixel (a k-wide triangle per axis, whatever the sub-pixel phases), the
    # priors act per pixel and on the Laplacian; precondition with that operator's inverse in
    # Fourier space, scaled by the true diagonal
    fx = jnp.fft.fftfreq(K).astype(d.dtype)
    tri = jnp.where(jnp.abs(fx) > 0, (jnp.sin(jnp.pi * fx * k) / (k * jnp.sin(jnp.pi * jnp.where(fx == 0, 1.0, fx)))) ** 2 * k, k)
    chat = tri[:, None] * tri[None, :]
    lhat = (2 * jnp.cos(2 * jnp.pi * fx)[:, None] + 2 * jnp.cos(2 * jnp.pi * fx)[None, :] - 4) ** 2
    dmean = jnp.mean(dr)
    alpha = jnp.mean(diag_p) / dmean
    gf = 1.0 / (alpha * chat + (lam_r + lam_s * lhat) / dmean + 1e-6)
    sdr = 1.0 / jnp.sqrt((1 + mu) * dr + 1e-30)

    def pre_r(v):
        return sdr * jnp.real(jnp.fft.ifft2(gf * jnp.fft.fft2(sdr * v))).astype(d.dtype)

    pre = (1.0 / ((1 + mu) * d_theta + 1e-30), lambda v: v / ((1 + mu) * dr + 1e-30))

    def schur(vp):
        full = normal(as_full(vp))
        z = solve_stars(full)
        bz = normal(join_star(z))
        return (full[0] - bz[0] + mu * d_theta * vp[0], full[1] - bz[1] + mu * dr * vp[1])

    (grad,) = jt(r0)
    rhs = jax.tree_util.tree_map(lambda a: -a, grad)
    z0 = solve_stars(rhs)
    bz0 = normal(join_star(z0))
    rhs_p = (rhs[0] - bz0[0], rhs[1] - bz0[1])
    dp, _ = jax.scipy.sparse.linalg.cg(schur, rhs_p, x0=psf_part(zeros)[:2],
                                       M=lambda v: (pre[0] * v[0], pre[1](v[1])), maxiter=n_cg, tol=1e-8)
    bt = normal(as_full(dp))
    ds = jnp.einsum("sij,sj->si", binv, split_star(rhs) - split_star(bt))
    delta = (dp[0], dp[1], ds[:, :2], ds[:, 2], ds[:, 3])
    delta = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), delta)
    theta = st.theta + jnp.clip(delta[0], -0.3, 0.3)
    rpix = st.resid + delta[1]
    xy = st.xy + jnp.clip(delta[2], -0.3, 0.3)
    flux = st.flux + delta[3]
    sky = st.sky + delta[4]
    ok = jnp.sum(st.w > 0, axis=(1, 2)) > 3
    xy = jnp.where(ok[:, None], xy, st.xy)
    flux = jnp.where(ok, flux, st.flux)
    sky = jnp.where(ok, sky, st.sky)
    return eqx.tree_at(lambda s: (s.theta, s.resid, s.xy, s.flux, s.sky), st, (theta, rpix, xy, flux, sky))


@partial(jax.jit, static_argnames=("size", "k", "psf_size", "n_outer", "n_cg", "robust", "n_shape"))
def _fit_core(st, psf0, d, a_tv, a_sky, prior, smooth, clip, chi2_nsigma, *, size, k, psf_size, n_outer, n_cg,
              robust, n_shape=2):
    w0 = st.w
    n = d.shape[0]
    theta = _fit_theta(psf0, k, psf_size)
    st = eqx.tree_at(lambda s: s.theta, st, theta)
    st = _star_step(st, d, size, k, psf_size, a_sky)

    def body(i, carry):
        st, flagged, many, hist, dpsf = carry
        old = _psf_of(st.theta, st.resid, k, psf_size)
        st = _gn_step(st, d, size, k, psf_size, a_sky, a_tv, prior, smooth, n_cg, i < n_shape)
        if robust:
            # after the pixel correction has had a step (a Moffat-only model leaves residuals
            # in bright cores that are not outliers)
            do = (i == n_shape) | (i == n_shape + 1)
            w_new, fl_new, many_new = _robust_weights(st, d, w0, flagged, size, k, psf_size, clip, chi2_nsigma)
            st = eqx.tree_at(lambda s: s.w, st, jnp.where(do, w_new, st.w))
            flagged = jnp.where(do, fl_new, flagged)
            many = jnp.where(do, many_new, many)
        r = _chi2_map(st, d, size, k, psf_size)
        loss = jnp.sum(jnp.where(st.w > 0, r**2, 0.0)) / jnp.maximum(jnp.sum(st.w > 0), 1)
        new = _psf_of(st.theta, st.resid, k, psf_size)
        dpsf = jnp.sqrt(jnp.mean((new - old) ** 2)) / jnp.max(new)
        return st, flagged, many, hist.at[i].set(loss), dpsf

    init = (st, jnp.zeros(n, bool), jnp.zeros(n, bool), jnp.full((n_outer,), jnp.nan, d.dtype),
            jnp.array(jnp.inf, d.dtype))
    st, flagged, many, hist, dpsf = jax.lax.fori_loop(0, n_outer, body, init)
    return st, flagged, many, hist, dpsf


# --------------------------------------------------------------------------
# starting point (numpy)


def _centroids(d, w, size):
    """Windowed centroid of each stamp around its centre (native px)."""
    n = d.shape[0]
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size].astype(float)
    out = np.full((n, 2), c)
    for s in range(n):
        img = np.where(w[s] > 0, d[s], 0.0)
        cx, cy = c, c
        for sw in (3.0, 1.5):
            win = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sw**2)) * np.clip(img, 0, None)
            tot = win.sum()
            if tot > 0:
                cx, cy = (win * xx).sum() / tot, (win * yy).sum() / tot
        out[s] = (np.clip(cx, c - 2, c + 2), np.clip(cy, c - 2, c + 2))
    return out


def _initial(d, w, xy, k, psf_size, size, flux=None):
    """Starting sky (stamp-border median), flux (sum) and PSF (flux-normalised stack).

    The stack splats every native pixel of every star onto the fine grid at
    its sub-pixel position (bilinear weights, stars weighted by flux^2 /
    noise^2), smoothed by half a native pixel where the stack is thin: only
    a start, from which the Moffat shape is fitted.
    """
    n = d.shape[0]
    yy, xx = np.mgrid[:size, :size]
    border = (xx < 2) | (yy < 2) | (xx >= size - 2) | (yy >= size - 2)
    sky = np.zeros(n)
    given = flux is not None
    flux = np.ones(n) if flux is None else np.clip(np.asarray(flux, float), 1e-3, None)
    for s in range(n):
        ok = (w[s] > 0) & border
        sky[s] = np.median(d[s][ok]) if ok.sum() > 3 else 0.0
        good = w[s] > 0
        if not given:
            flux[s] = max(float(np.sum((d[s] - sky[s])[good]) * good.size / max(good.sum(), 1)), 1e-3)
    kk = k * psf_size
    cp = psf_size // 2
    acc = np.zeros((kk, kk))
    wt = np.zeros((kk, kk))
    for s in range(n):
        good = w[s] > 0
        if not good.any() or flux[s] <= 0:
            continue
        # fine-grid coordinates of each native pixel centre, relative to the PSF grid
        fx = (xx - xy[s, 0] + cp) * k + (k - 1) / 2.0
        fy = (yy - xy[s, 1] + cp) * k + (k - 1) / 2.0
        val = (d[s] - sky[s]) / flux[s] / k**2
        ws = np.where(good, 1.0 / max(np.median(1.0 / np.sqrt(w[s][good])) ** 2, 1e-30), 0.0) * flux[s] ** 2
        x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
        tx, ty = fx - x0, fy - y0
        for ox, oy, bw in ((0, 0, (1 - tx) * (1 - ty)), (1, 0, tx * (1 - ty)), (0, 1, (1 - tx) * ty), (1, 1, tx * ty)):
            ix, iy = x0 + ox, y0 + oy
            ok = good & (ix >= 0) & (ix < kk) & (iy >= 0) & (iy < kk)
            np.add.at(acc, (iy[ok], ix[ok]), (bw * ws * val)[ok])
            np.add.at(wt, (iy[ok], ix[ok]), (bw * ws)[ok])
    from scipy import ndimage

    sig = max(k / 2.0, 0.5)
    num = ndimage.gaussian_filter(acc, sig, mode="constant")
    den = ndimage.gaussian_filter(wt, sig, mode="constant")
    psf = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    if k > 1:  # keep the unsmoothed average where the stack is well covered (the core stays sharp)
        raw = np.where(wt > 0, acc / np.where(wt > 0, wt, 1), 0.0)
        psf = np.where(wt > 0.2 * wt.max(), raw, psf)
    psf = np.clip(psf, 0, None)
    if psf.sum() <= 0:
        psf = np.zeros((kk, kk))
        psf[kk // 2, kk // 2] = 1.0
    return psf / psf.sum(), flux, sky


def _prepare(stamps, sigmas, masks):
    d = np.asarray(stamps, dtype=float)
    s = np.asarray(sigmas, dtype=float)
    if d.shape != s.shape:
        msg = f"stamps and sigmas must have the same shape, got {d.shape} and {s.shape}"
        raise ValueError(msg)
    if d.ndim not in (3, 4):
        msg = f"stamps must be (n, size, size) or (bands, n, size, size), got shape {d.shape}"
        raise ValueError(msg)
    if d.shape[-1] != d.shape[-2] or d.shape[-1] % 2 == 0:
        msg = f"stamps must be square with an odd size, got {d.shape[-2]} x {d.shape[-1]}"
        raise ValueError(msg)
    if masks is None:
        m = np.zeros(d.shape, bool)
    else:
        m = np.asarray(masks).astype(bool)
        if m.shape != d.shape:
            msg = f"masks must have the stamps' shape {d.shape}, got {m.shape}"
            raise ValueError(msg)
    ok_sigma = np.isfinite(s) | m
    if np.any(ok_sigma & ~m & (s <= 0)):
        msg = "sigmas must be > 0 at every unmasked pixel (found zero or negative values); mask those pixels"
        raise ValueError(msg)
    good = ~m & np.isfinite(d) & np.isfinite(s) & (s > 0)
    w = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    d = np.where(good, d, 0.0)
    return d, w


def _gross_outliers(d, w, flux, sky, thr):
    """Weights with gross outliers removed, before any PSF model exists (numpy).

    Each star's sky-subtracted, flux-normalised stamp is compared with the
    median of all of them; a pixel is an outlier when it departs by more than
    ``thr`` sigma plus what a 0.7-pixel shift of the median stamp allows
    (the stars' sub-pixel offsets).  Catches cosmic rays and bright
    neighbours; PSF structure, shared by every star, is left alone.
    Returns the new weights and each star's flux refitted to the median
    profile on its remaining pixels.
    """
    from scipy import ndimage

    f = np.where(np.abs(flux) > 0, flux, 1.0)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(w > 0, (d - sky[:, None, None]) / f, np.nan), axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    grad = ndimage.maximum_filter(med, 3) - ndimage.minimum_filter(med, 3)
    dev = np.abs(d - sky[:, None, None] - f * med[None])
    allowed = thr / np.sqrt(np.where(w > 0, w, 1.0)) + 0.7 * np.abs(f) * grad[None]
    bad = (dev > allowed) & (w > 0)
    bad = ndimage.binary_dilation(bad, structure=np.ones((1, 3, 3), bool))
    w2 = np.where(bad, 0.0, w)
    num = np.sum(w2 * med[None] * (d - sky[:, None, None]), axis=(1, 2))
    den = np.sum(w2 * med[None] ** 2, axis=(1, 2))
    flux2 = np.where(den > 0, num / np.where(den > 0, den, 1.0), flux)
    return w2, flux2


def _band_start(d, w, xy_init, k, psf_size, clip=None):
    """Numpy starting point for one band: centres, a stacked PSF, fluxes and skies."""
    n, size, _ = d.shape
    valid = (w > 0).reshape(n, -1).sum(1) > 3
    if not valid.any():
        msg = "every stamp is fully masked: no usable pixels to fit a PSF"
        raise ValueError(msg)
    xy0 = _centroids(d, w, size) if xy_init is None else np.asarray(xy_init, float)
    psf0, flux0, sky0 = _initial(d, w, xy0, k, psf_size, size)
    if clip is not None:  # robust: cosmic rays and bright neighbours out before anything is fitted
        for _ in range(2):
            w, flux0 = _gross_outliers(d, w, flux0, sky0, 4.0 * clip)
        if xy_init is None:
            xy0 = _centroids(d, w, size)
        psf0, _, sky0 = _initial(d, w, xy0, k, psf_size, size, flux=flux0)
    wt = np.where(valid[:, None, None], w, 0.0)
    dt = jnp.float32
    kk = k * psf_size
    st = _State(jnp.zeros(4, dt), jnp.zeros((kk, kk), dt), jnp.asarray(xy0, dt), jnp.asarray(flux0, dt),
                jnp.asarray(sky0, dt), jnp.asarray(wt, dt))
    return st, jnp.asarray(psf0, dt), valid


def _core_args(opts):
    dt = jnp.float32
    return tuple(jnp.asarray(opts[key], dt) for key in ("a_tv", "a_sky", "prior", "smooth", "clip", "chi2_nsigma"))


def _core_static(size, k, psf_size, opts):
    return dict(size=size, k=k, psf_size=psf_size, n_outer=opts["n_outer"], n_cg=opts["n_cg"], robust=opts["robust"],
                n_shape=opts.get("n_shape", 2))


@partial(jax.jit, static_argnames=("size", "k", "psf_size", "n_outer", "n_cg", "robust", "n_shape"))
def _fit_core_bands(st, psf0, d, a_tv, a_sky, prior, smooth, clip, chi2_nsigma, **static):
    """Every band in one compiled call (``jax.vmap`` of the single-band fit)."""
    fn = partial(_fit_core, **static)
    return jax.vmap(fn, in_axes=(0, 0, 0, None, None, None, None, None, None))(
        st, psf0, d, a_tv, a_sky, prior, smooth, clip, chi2_nsigma)


def _bucket(n):
    """The star count a fit is compiled for: ``n`` padded up to 8, 12, 16, 24, 32, 48, ...

    Fitting with a few fully masked stamps added gives the same PSF, and
    targets with different star counts then share a handful of compiled
    fits (a compile costs seconds; a batch of targets would otherwise
    compile once per target and band).
    """
    b = 8
    while True:
        for m in (b, b * 3 // 2):
            if m >= n:
                return m
        b *= 2


def _pad_stars(st, d, n_to):
    """Append ``n_to - n`` fully masked stars (zero weight, ignored by every step).

    In numpy, so that no padding op is compiled per star count; returns numpy arrays.
    """
    n, size, _ = d.shape
    p = n_to - n
    st = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float32), st)
    d = np.asarray(d, np.float32)
    if p > 0:
        c = (size - 1) / 2.0
        st = _State(st.theta, st.resid, np.concatenate([st.xy, np.full((p, 2), c, np.float32)]),
                    np.concatenate([st.flux, np.ones(p, np.float32)]),
                    np.concatenate([st.sky, np.zeros(p, np.float32)]),
                    np.concatenate([st.w, np.zeros((p, size, size), np.float32)]))
        d = np.concatenate([d, np.zeros((p, size, size), np.float32)])
    return st, d


@partial(jax.jit, static_argnames=("size", "k", "psf_size"))
def _psf_and_models(st, size, k, psf_size):
    psf = _psf_of(st.theta, st.resid, k, psf_size)
    return psf, _models(psf, st.xy, st.flux, st.sky, size, k, psf_size)


def _band_finish(st, flagged, many, hist, dpsf, d, w, valid, k, psf_size, opts):
    """Numpy results of one band, with every star's reduced chi-square and flags.

    ``st``, ``flagged`` and ``many`` may hold padding stars beyond the ``n`` of ``d``: they are
    dropped here (after the model, so that it is compiled for the padded count only).
    """
    n, size, _ = d.shape
    psf_j, model_j = _psf_and_models(st, size, k, psf_size)
    psf = np.asarray(psf_j, dtype=float)
    xy, flux, sky = (np.asarray(v, dtype=float)[:n] for v in (st.xy, st.flux, st.sky))
    w_fit = np.asarray(st.w, dtype=float)[:n]
    flagged, many = np.asarray(flagged)[:n], np.asarray(many)[:n]
    flags = (np.where(flagged, 1, 0) | np.where(valid, 0, 2) | np.where(many, 4, 0))
    model = np.asarray(model_j, dtype=float)[:n]
    # reduced chi-square of every star (flagged ones too) on its own unclipped pixels
    w_eval = np.where((flags & 1)[:, None, None] > 0, np.where(valid[:, None, None], w, 0.0), w_fit)
    if opts["robust"]:
        w_eval = np.where(np.abs(d - model) * np.sqrt(w_eval) > opts["clip"], 0.0, w_eval)
    res2 = np.where(w_eval > 0, (d - model) ** 2 * w_eval, 0.0).reshape(n, -1).sum(1)
    dof = (w_eval > 0).reshape(n, -1).sum(1) - 4
    chi2 = np.where(dof > 0, res2 / np.maximum(dof, 1), np.nan)
    converged = bool(float(dpsf) < opts["tol"])
    return dict(psf=psf, centers=xy, fluxes=flux, sky=sky, chi2=chi2, loss_history=np.asarray(hist, float),
                flags=flags.astype(np.int32), converged=converged, n_iter=opts["n_outer"])


def fit_epsf(stamps, sigmas=None, masks=None, *, oversampling=1, a_tv=0.0, a_sky=0.0, psf_size=None,
             centers=None, prior=1.0, smooth=1.0, robust=True, clip=5.0, chi2_nsigma=5.0, n_outer=6, n_cg=60, tol=1e-4,
             method="gsprep"):
    """Fit an empirical PSF jointly with every star's sub-pixel centre, flux and local sky.

    Parameters
    ----------
    stamps : array (n, size, size) or (bands, n, size, size), or Stamps
        Star stamps (odd size), data units, sky not subtracted.  A
        :class:`gsprep.Stamps` supplies sigmas, masks and centres too.
    sigmas : array, same shape
        Per-pixel noise (> 0 where unmasked).
    masks : bool array, same shape, optional
        True = excluded.  Non-finite data or sigma are excluded too.  For
        several bands with unequal star counts, pad with fully masked stamps.
    oversampling : int
        PSF sampling factor ``k``; the PSF has shape ``(k*psf_size, k*psf_size)``.
    a_tv : float
        Total-variation penalty on the PSF (GalfitS's ``a_tv``), per unit of
        the reduced chi-square.
    a_sky : float
        Penalty pulling each star's local sky to zero, in units of its
        uncertainty (GalfitS's ``a_sky``).
    psf_size : int, optional
        Native PSF size (odd, <= stamp size); default the stamp size.
    centers : array (n, 2), optional
        Starting ``(x, y)`` of each star in its stamp; default a windowed
        centroid.
    prior : float
        Gaussian prior on the PSF's pixel correction (its departure from the
        fitted elliptical Moffat), per sub-pixel, in units of the PSF peak
        (default 1: weak).
    smooth : float
        Curvature prior on the pixel correction, in units of the data's
        mean information per sub-pixel (default 1).  It turns noise in
        sub-pixels the data barely constrain into a smooth profile; it also
        smooths real sharp structure, so use ``smooth=0`` for very high
        signal-to-noise stars or PSFs with diffraction spikes.
    robust : bool
        Drop gross outliers before fitting (pixels far from the median
        star), then, after the first PSF steps, clip pixels beyond ``clip``
        sigma (and their neighbours) and flag stars whose reduced chi-square
        lies more than ``chi2_nsigma`` robust sigmas above the median; the
        last steps are fitted without them (default True).
    n_outer, n_cg : int
        Gauss-Newton steps (the first two fit the Moffat, the rest the pixel
        correction) and conjugate-gradient iterations per step.
    tol : float
        The fit is reported converged when the last PSF step changed the PSF
        by less than ``tol`` of its peak (rms).
    method : {"gsprep", "photutils"}
        ``"photutils"`` runs photutils' ``EPSFBuilder`` on the same stamps
        and returns its PSF converted to gsprep's convention (as GalfitS's
        ``photutils_method``).

    Returns
    -------
    EPSFResult

    Examples
    --------
    >>> res = fit_epsf(st.data, st.sigma, st.mask, oversampling=2)   # doctest: +SKIP
    >>> res.psf.sum()                                                  # doctest: +SKIP
    1.0
    """
    if hasattr(stamps, "positions") and hasattr(stamps, "sigma"):
        st = stamps
        stamps, sigmas = st.data, st.sigma if sigmas is None else sigmas
        masks = st.mask if masks is None else masks
        centers = st.positions if centers is None else centers
    if sigmas is None:
        msg = "sigmas is required (the per-pixel noise of the stamps)"
        raise ValueError(msg)
    if isinstance(oversampling, bool) or int(oversampling) != oversampling or oversampling < 1:
        msg = f"oversampling must be an integer >= 1, got {oversampling!r}"
        raise ValueError(msg)
    k = int(oversampling)
    a_tv, a_sky = check_nonnegative("a_tv", a_tv), check_nonnegative("a_sky", a_sky)
    check_positive("clip", clip)
    if method not in ("gsprep", "photutils"):
        msg = f"method must be 'gsprep' or 'photutils', got {method!r}"
        raise ValueError(msg)
    d, w = _prepare(stamps, sigmas, masks)
    size = d.shape[-1]
    psf_size = size if psf_size is None else int(psf_size)
    if psf_size % 2 == 0 or psf_size > size or psf_size < 3:
        msg = f"psf_size must be odd, >= 3 and <= the stamp size {size}, got {psf_size}"
        raise ValueError(msg)
    if method == "photutils":
        if d.ndim == 4:
            msg = "method='photutils' fits one band at a time: pass (n, size, size) stamps"
            raise ValueError(msg)
        return _photutils_epsf(d, w, k, psf_size, centers)
    opts = dict(a_tv=a_tv, a_sky=a_sky, smooth=check_nonnegative("smooth", smooth),
                prior=check_positive("prior", prior), tol=float(tol), n_outer=int(n_outer), n_cg=int(n_cg), robust=bool(robust),
                clip=float(clip), chi2_nsigma=float(chi2_nsigma))
    bands = d[None] if d.ndim == 3 else d
    wb = w[None] if w.ndim == 3 else w
    nb, n, size, _ = bands.shape
    cb = None if centers is None else np.asarray(centers, float).reshape(nb, n, 2)
    for b in range(nb):
        nvalid = int(((wb[b] > 0).reshape(n, -1).sum(1) > 3).sum())
        if nvalid == 1:
            warnings.warn("fit_epsf: a single star constrains the PSF poorly (its noise is the PSF's noise); "
                          "use several stars when you can", stacklevel=2)
    clip_start = opts["clip"] if opts["robust"] else None
    starts = [_band_start(bands[b], wb[b], None if cb is None else cb[b], k, psf_size, clip_start) for b in range(nb)]
    static = _core_static(size, k, psf_size, opts)
    n_fit = _bucket(n)
    padded = [_pad_stars(s[0], bands[b], n_fit) for b, s in enumerate(starts)]
    if d.ndim == 3:
        (st, db), (_, psf0, valid) = padded[0], starts[0]
        out = jax.tree_util.tree_map(np.asarray, _fit_core(st, psf0, db, *_core_args(opts), **static))
        return EPSFResult(oversampling=k, **_band_finish(*out, bands[0], wb[0], valid, k, psf_size, opts))
    st = jax.tree_util.tree_map(lambda *x: np.stack(x), *[p[0] for p in padded])
    psf0 = np.stack([np.asarray(s[1]) for s in starts])
    out = _fit_core_bands(st, psf0, np.stack([p[1] for p in padded]), *_core_args(opts), **static)
    out = jax.tree_util.tree_map(np.asarray, out)
    results = []
    for b in range(nb):
        ob = jax.tree_util.tree_map(lambda x, b=b: x[b], out)
        results.append(_band_finish(*ob, bands[b], wb[b], starts[b][2], k, psf_size, opts))
    stack = {key: np.stack([r[key] for r in results])
             for key in ("psf", "centers", "fluxes", "sky", "chi2", "flags", "loss_history")}
    return EPSFResult(oversampling=k, converged=np.array([r["converged"] for r in results]),
                      n_iter=np.array([r["n_iter"] for r in results]), **stack)


def fit_stars(psf, stamps, sigmas, masks=None, *, oversampling=1, centers=None, n_gn=8):
    """Fit every star's centre, flux and sky with a fixed PSF (gsprep convention).

    Returns ``(centers, fluxes, sky)``; used as the reference ("true PSF") fit
    in the benchmarks and available for photometry with a built PSF.
    """
    d, w = _prepare(stamps, sigmas, masks)
    if d.ndim != 3:
        msg = "fit_stars takes (n, size, size) stamps"
        raise ValueError(msg)
    n, size, _ = d.shape
    k = int(oversampling)
    p = np.asarray(psf, dtype=float)
    psf_size = p.shape[-1] // k
    xy0 = _centroids(d, w, size) if centers is None else np.asarray(centers, float)
    _, flux0, sky0 = _initial(d, w, xy0, k, psf_size, size)
    dt = jnp.float32
    theta = jnp.array([np.log(2.0 * k), np.log(2.0), 0.0, 0.0], dt)
    resid = jnp.asarray(p / p.sum(), dt) - _moffat_fine(theta, k, psf_size)
    st = _State(theta, resid, jnp.asarray(xy0, dt), jnp.asarray(flux0, dt), jnp.asarray(sky0, dt), jnp.asarray(w, dt))
    st = _star_step_jit(st, jnp.asarray(d, dt), size, k, psf_size, n_gn)
    return np.asarray(st.xy, float), np.asarray(st.flux, float), np.asarray(st.sky, float)


_star_step_jit = jax.jit(lambda st, d, size, k, psf_size, n_gn: _star_step(st, d, size, k, psf_size, 0.0, n_gn),
                         static_argnums=(2, 3, 4, 5))


def psf_model_stamps(result, size=None):
    """Model stamps ``F * PSF(x - x_s) + b`` of a fit (one band), for residual plots."""
    psf = np.asarray(result.psf)
    k = result.oversampling
    psf_size = psf.shape[-1] // k
    size = psf_size if size is None else size
    return np.asarray(_models(jnp.asarray(psf, jnp.float32), jnp.asarray(result.centers, jnp.float32),
                              jnp.asarray(result.fluxes, jnp.float32), jnp.asarray(result.sky, jnp.float32),
                              size, k, psf_size))


def to_epsf_convention(psf, oversampling):
    """gsprep PSF (sub-pixel flux) -> photutils ePSF convention (pixel-integrated PSF at 1/k steps).

    Each value becomes the flux in a native-pixel-sized box centred on that
    fine pixel (a ``k``-wide box sum; half weights at the edges for even
    ``k``).  The result sums to ``k**2``.
    """
    k = int(oversampling)
    p = np.asarray(psf, dtype=float)
    if k % 2:
        ker = np.ones(k)
    else:
        ker = np.ones(k + 1)
        ker[0] = ker[-1] = 0.5
    from scipy import ndimage

    out = ndimage.convolve1d(p, ker, axis=-1, mode="constant")
    return ndimage.convolve1d(out, ker, axis=-2, mode="constant")


def _from_epsf_convention(e, k, iters=200):
    """Inverse of :func:`to_epsf_convention` by non-negative least squares (Richardson-Lucy)."""
    e = np.clip(np.asarray(e, float), 0, None)
    f = np.full_like(e, e.sum() / k**2 / e.size)
    for _ in range(iters):
        model = to_epsf_convention(f, k)
        ratio = np.where(model > 0, e / np.where(model > 0, model, 1), 0.0)
        f = f * to_epsf_convention(ratio, k) / k**2
    return f / f.sum()


def photutils_epsf_raw(stamps, sigmas, masks=None, *, oversampling=1, centers=None):
    """photutils' EPSFBuilder (defaults) on gsprep stamps; returns its ePSF array (its own convention)."""
    d, w = _prepare(stamps, sigmas, masks)
    return _photutils_build(d, w, int(oversampling), centers)


def _photutils_build(d, w, k, centers):
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars

    n, size, _ = d.shape
    xy = _centroids(d, w, size) if centers is None else np.asarray(centers, float)
    stars = []
    for s in range(n):
        if (w[s] > 0).sum() <= 3:
            continue
        ok = w[s] > 0
        sky = np.median(d[s][ok])
        stars.append(EPSFStar(np.where(ok, d[s] - sky, 0.0), weights=np.sqrt(w[s]), cutout_center=tuple(xy[s])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = EPSFBuilder(oversampling=k, progress_bar=False)(EPSFStars(stars))
    epsf = out[0] if isinstance(out, tuple) else getattr(out, "epsf", out)
    return np.asarray(epsf.data, dtype=float), xy


def _photutils_epsf(d, w, k, psf_size, centers):
    """EPSFBuilder's ePSF resampled onto gsprep's grid and converted to sub-pixel flux fractions."""
    from scipy import ndimage

    n = d.shape[0]
    t0 = time.perf_counter()
    e, xy = _photutils_build(d, w, k, centers)
    ic = (np.array(e.shape) - 1) / 2.0  # photutils: the star centre is the central sample
    kk = k * psf_size
    off = np.arange(kk) - (kk - 1) / 2.0  # gsprep fine-pixel centres, in fine pixels from the centre
    yy, xx = np.meshgrid(ic[0] + off, ic[1] + off, indexing="ij")
    on_grid = ndimage.map_coordinates(e, [yy, xx], order=3, mode="constant")
    psf = _from_epsf_convention(on_grid, k)
    return EPSFResult(psf=psf, centers=xy, fluxes=np.full(n, np.nan), sky=np.full(n, np.nan),
                      chi2=np.full(n, np.nan), loss_history=np.array([time.perf_counter() - t0]),
                      flags=np.zeros(n, np.int32), oversampling=k, converged=True, n_iter=0)

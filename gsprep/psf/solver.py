"""Gauss-Newton solver of the joint PSF + stars fit, as a pure ``step`` on a typed state.

The unknowns are the PSF (a Moffat ``theta`` used as a starting shape and a
free pixel correction ``resid`` on the fine grid) and every star's centre,
flux and local sky.  One step linearises the residuals (``jax.linearize``),
eliminates the stars exactly (each star's 4 x 4 block; stars do not
interact) and solves the PSF's normal equations by preconditioned conjugate
gradients, so the PSF and every star move together.  Steps are damped
(Levenberg-Marquardt): a step that does not lower the objective is refused
and the damping raised, so the objective falls monotonically.

Regularisation (:class:`Reg`): a curvature penalty ``lam * |Laplacian(resid
+ gamma * moffat)|^2``, i.e. on the departure from the fitted Moffat
(``gamma = 0``) or on the PSF itself (``gamma = 1``).  Its kind and strength
are chosen by cross-validation on held-out stars (:mod:`.validation`);
``lam`` is in units of the data's mean information per fine pixel.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .model import adjoint, apply, centre, designs, laplacian, models, moffat_fine, normalise, psf_of, ring, star_columns


class FitState(eqx.Module):
    """Everything the fit moves (a pytree: ``jit`` and ``vmap`` pass straight through)."""

    theta: jax.Array  # (4,): log alpha (fine px), log(beta - 1), e1, e2
    resid: jax.Array  # (K, K) pixel correction
    xy: jax.Array  # (n, 2) native px in the stamp
    flux: jax.Array  # (n,)
    sky: jax.Array  # (n,)
    w: jax.Array  # (n, S, S) pixel weights in use (1 / sigma^2, 0 = excluded)

    def __check_init__(self):
        if self.resid.ndim >= 2 and self.resid.shape[-1] != self.resid.shape[-2]:
            msg = f"resid must be square, got {self.resid.shape}"
            raise ValueError(msg)


class Reg(NamedTuple):
    """Penalties of the fit (traced numbers: changing them does not recompile)."""

    lam: jax.Array  # curvature strength, units of the mean data information per fine pixel
    gamma: jax.Array  # 0: curvature of the departure from the Moffat; 1: of the PSF itself
    a_tv: jax.Array  # total variation (GalfitS's a_tv), per unit of the reduced chi-square
    a_sky: jax.Array  # prior pulling each star's sky to 0, in units of its uncertainty
    pin: float = 1.0  # weight of the centroid pin (0: the PSF centroid is free, for fixed star centres)
    ring0: float = 0.0  # level of the pixel correction on the grid's outer native pixel (:func:`sky_slope`)


class Static(NamedTuple):
    size: int
    k: int
    psf_size: int
    n_cg: int


def psf(st, sx):
    return psf_of(st.theta, st.resid, sx.k, sx.psf_size)


def star_step(st, d, sx, a_sky, n_gn=3):
    """Gauss-Newton on each star's (x, y, flux, sky) with the PSF fixed."""
    xy, flux, sky = stars_gn(psf(st, sx), st.xy, st.flux, st.sky, d, st.w, sx, a_sky, n_gn)
    return eqx.tree_at(lambda s: (s.xy, s.flux, s.sky), st, (xy, flux, sky))


def stars_gn(p, xy, flux, sky, d, w, sx, a_sky=0.0, n_gn=3):
    """``n_gn`` Gauss-Newton steps on each star's (x, y, flux, sky); returns ``(xy, flux, sky)``.

    ``p``: one PSF ``(K, K)`` for every star, or each star's own ``(n, K, K)``
    (a PSF that varies across the frame).  ``a_sky`` pulls each star's sky
    towards 0, in units of its uncertainty.  A star with 3 or fewer usable
    pixels keeps its values.
    """
    dt = d.dtype

    def one(p, pos, f, b, data, w):
        def it(carry, _):
            pos, f, b = carry
            m1, cols = star_columns(p, pos, f, sx.size, sx.k, sx.psf_size)
            r = data - (f * m1 + b)
            ww = w.reshape(-1)
            h = cols.T @ (ww[:, None] * cols)
            g = cols.T @ (ww * r.reshape(-1))
            sw = jnp.sum(ww)
            h = h.at[3, 3].add(a_sky * sw)
            g = g.at[3].add(-a_sky * sw * b)
            h = h + 1e-6 * jnp.diag(jnp.diag(h)) + 1e-30 * jnp.eye(4, dtype=dt)
            step = jnp.linalg.solve(h, g)
            step = jnp.where(jnp.isfinite(step), step, 0.0)
            dp = jnp.clip(step[:2], -0.3, 0.3)
            return (pos + dp, f + step[2], b + step[3]), None

        (pos, f, b), _ = jax.lax.scan(it, (pos, f, b), None, length=n_gn)
        return pos, f, b

    nxy, nflux, nsky = jax.vmap(one, in_axes=(0 if p.ndim == 3 else None, 0, 0, 0, 0, 0))(p, xy, flux, sky, d, w)
    ok = jnp.sum(w > 0, axis=(1, 2)) > 3
    return jnp.where(ok[:, None], nxy, xy), jnp.where(ok, nflux, flux), jnp.where(ok, nsky, sky)


def fit_theta(psf0, k, psf_size, n_it=15):
    """Moffat parameters of a PSF image by Gauss-Newton (the starting shape)."""
    dt = psf0.dtype
    c = centre(k, psf_size)
    kk = k * psf_size
    g = jnp.arange(kk, dtype=dt) - c
    r2 = g[:, None] ** 2 + g[None, :] ** 2
    wts = psf0.sum()
    var = jnp.sum(jnp.where(r2 < (4 * k) ** 2, jnp.clip(psf0, 0, None) * r2, 0.0)) / jnp.maximum(wts, 1e-30) / 2
    fwhm = 2.3548 * jnp.sqrt(jnp.clip(var, 0.25 * k**2, (psf_size * k / 4) ** 2))
    theta = jnp.stack([jnp.log(fwhm / 1.0197), jnp.log(jnp.asarray(2.0, dt)), jnp.zeros((), dt), jnp.zeros((), dt)])

    # weighted towards the core: the Moffat is a reference shape, its wings matter least
    wt = jnp.sqrt(jnp.clip(psf0, 0, None) / jnp.maximum(jnp.max(psf0), 1e-30)) + 0.03

    def res(th):
        return (wt * (moffat_fine(th, k, psf_size) - psf0)).reshape(-1)

    def it(th, _):
        jac = jax.jacfwd(res)(th)
        h = jac.T @ jac
        h = h + 1e-3 * jnp.diag(jnp.diag(h)) + 1e-30 * jnp.eye(4, dtype=dt)
        step = jnp.linalg.solve(h, -jac.T @ res(th))
        step = jnp.where(jnp.isfinite(step), jnp.clip(step, -0.5, 0.5), 0.0)
        return th + step, None

    theta, _ = jax.lax.scan(it, theta, None, length=n_it)
    return theta


def info(st, sx):
    """The data's information per fine pixel (sum over stars of F^2 w A^2): ``(mean, map / mean)``.

    The curvature penalty is weighted by this map (floored at 1e-3 of the
    mean), so that its strength relative to the data is the same across the
    PSF (the bright core of a star carries far less information per pixel
    than its wings, its Poisson noise being larger), which also makes the
    normal equations nearly stationary and the Fourier preconditioner exact
    for evenly weighted stars.
    """
    ay, ax = designs(st.xy, sx.size, sx.k, sx.psf_size)
    f2w = (st.flux**2)[:, None, None] * st.w
    diag_p = adjoint(ay**2, f2w, ax**2)
    scale = jnp.maximum(jnp.mean(diag_p), 1e-30)
    return jax.lax.stop_gradient(scale), jax.lax.stop_gradient(jnp.maximum(diag_p / scale, 1e-3))


def _residual_fn(st, d, reg, sx, inf):
    """The residual vector (data and every penalty) as a function of ``(resid, xy, flux, sky)``, and the
    PSF's penalties alone as a function of ``resid``.

    The reference Moffat (``st.theta``) is fixed: it is refitted to the PSF
    between phases (:func:`rebase`), never moved by these steps.
    """
    dt = d.dtype
    k, psf_size = sx.k, sx.psf_size
    kk = k * psf_size
    g = jnp.arange(kk, dtype=dt) - centre(k, psf_size)
    sw = jnp.sqrt(st.w)
    scale, dloc = inf
    psf_now = psf(st, sx)
    mof = moffat_fine(st.theta, k, psf_size)
    # pins as stiff as the data's mean information, no stiffer (a stiffer pin ruins CG in float32)
    lam_c = 10.0 * scale / (kk * jnp.sum(g**2)) * reg.pin
    peak = jnp.max(psf_now)
    tv_y = reg.a_tv * scale / (jnp.abs(jnp.diff(psf_now, axis=0)) + 1e-3 * peak)
    tv_x = reg.a_tv * scale / (jnp.abs(jnp.diff(psf_now, axis=1)) + 1e-3 * peak)
    nw = jnp.sum(st.w, axis=(1, 2))
    rg = ring(kk, k, dt)
    # the ring term only fixes the PSF-pedestal / sky degeneracy; a sky prior (a_sky > 0) does it instead
    ring_w = jnp.where(reg.a_sky > 0, 0.0, jnp.sqrt(10.0 * scale * jnp.sum(rg))).astype(dt)
    lam_s = reg.lam * scale
    lam_0 = 1e-6 * scale  # keeps pixels no star constrains (all masked) at the Moffat

    def penalties(rpix):
        """The PSF's penalty residuals (pins, curvature, total variation): functions of its pixels only."""
        p = normalise(mof + rpix)
        cx = jnp.sum(p.sum(0) * g)
        cy = jnp.sum(p.sum(1) * g)
        ring_mean = jnp.sum(rg * rpix) / jnp.sum(rg) - reg.ring0
        # the PSF is normalised, so the scale of moffat + resid is free: pinned at 1 (else a null direction)
        total = jnp.sqrt(10.0 * scale) / kk * (jnp.sum(mof + rpix) - 1.0)
        return (jnp.stack([jnp.sqrt(lam_c) * cx, jnp.sqrt(lam_c) * cy, ring_mean * ring_w, total]),
                jnp.sqrt(lam_s * dloc) * laplacian(rpix + reg.gamma * mof), jnp.sqrt(lam_0) * rpix,
                jnp.sqrt(tv_y) * jnp.diff(p, axis=0), jnp.sqrt(tv_x) * jnp.diff(p, axis=1))

    def resid(th):
        rpix, xy, flux, sky = th
        m = models(normalise(mof + rpix), xy, flux, sky, sx.size, k, psf_size)
        return ((d - m) * sw, *penalties(rpix), jnp.sqrt(reg.a_sky * nw) * sky)

    return resid, penalties


def objective(st, d, reg, sx, inf):
    """Total objective (chi-square plus penalties) at ``st``; ``inf`` (:func:`info`) fixes the penalties' units."""
    r = _residual_fn(st, d, reg, sx, inf)[0]((st.resid, st.xy, st.flux, st.sky))
    return sum(jnp.sum(x**2) for x in r)


def normal_system(st, d, reg, mu, sx, inf=None, fix_stars=False):
    """The damped Gauss-Newton normal equations, reduced to the PSF by eliminating the stars.

    Returns ``(schur, rhs, precondition, back_substitute)``: solve
    ``schur(dp) = rhs`` for the PSF's pixel correction ``dp``, then
    ``back_substitute(dp)`` gives the full step ``(resid, xy, flux, sky)``.
    ``mu`` is the Levenberg-Marquardt damping (a fraction of each
    parameter's own curvature added to the normal equations).  With
    ``fix_stars`` only the PSF moves (centres, fluxes and skies held).
    """
    dt = d.dtype
    k, psf_size, size = sx.k, sx.psf_size, sx.size
    kk = k * psf_size
    now = info(st, sx)
    inf = now if inf is None else inf
    scale, dloc = inf
    dnow = now[1]
    diag_p = dnow * scale
    psf_now = psf(st, sx)
    nw = jnp.sum(st.w, axis=(1, 2))
    x0 = (st.resid, st.xy, st.flux, st.sky)
    resid_fn, pen_fn = _residual_fn(st, d, reg, sx, inf)
    r0, jvp = jax.linearize(resid_fn, x0)
    jt = jax.linear_transpose(jvp, x0)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, x0)

    def normal(v):
        (out,) = jt(jvp(v))
        return out

    # exact 4x4 normal-equation block of every star (x, y, flux, sky): the stars do not
    # interact, so they are eliminated exactly (Schur complement) and CG runs on the PSF alone
    def star_block(pos, f, w, nwi):
        _, cols = star_columns(psf_now, pos, f, size, k, psf_size)
        h = cols.T @ (w.reshape(-1)[:, None] * cols)
        h = h.at[3, 3].add(reg.a_sky * nwi)
        return h + (mu + 1e-6) * jnp.diag(jnp.diag(h)) + 1e-20 * jnp.eye(4, dtype=dt) * (jnp.trace(h) + 1e-30), cols

    live = jnp.sum(st.w > 0, axis=(1, 2)) > 3
    if fix_stars:
        binv = jnp.zeros((st.xy.shape[0], 4, 4), dt)
    else:
        blocks, cols = jax.vmap(star_block)(st.xy, st.flux, st.w, nw)
        blocks = jnp.where(live[:, None, None], blocks, jnp.eye(4, dtype=dt))
        binv = jnp.where(live[:, None, None], jnp.linalg.inv(blocks), 0.0)  # a star without pixels moves nothing

    def split_star(v):
        return jnp.concatenate([v[1], v[2][:, None], v[3][:, None]], axis=1)  # (n, 4)

    def join_star(z):
        return (zeros[0], z[:, :2], z[:, 2], z[:, 3])

    def as_full(vp):
        return (vp, zeros[1], zeros[2], zeros[3])

    # in the variable u = sqrt(diag) * resid the PSF block is close to a stationary operator: the
    # data couple the fine pixels of one native pixel (a k-wide triangle per axis, whatever the
    # sub-pixel phases), the information-weighted curvature penalty acts as lam * Laplacian^2;
    # precondition with that operator's inverse in Fourier space
    dr = diag_p * (1.0 + 20.0 * reg.lam * dloc / jnp.maximum(dnow, 1e-3)) + 1e-6 * scale
    chat, lhat = fourier_operators(kk, k, dt)
    gf = 1.0 / ((1 + mu) * chat + reg.lam * lhat + 1e-6 + mu)
    sdr = 1.0 / jnp.sqrt(jnp.maximum(diag_p, 1e-3 * scale))

    def precondition(v):
        return sdr * jnp.real(jnp.fft.ifft2(gf.astype(jnp.complex128 if dt == jnp.float64 else jnp.complex64) * jnp.fft.fft2(sdr * v))).astype(dt)

    # the reduced operator by hand (it is applied at every CG iteration): the data part through the
    # separable model, M_s = A(y_s) N(v) A(x_s)^T with N the normalisation's Jacobian, the stars'
    # blocks through their Jacobian columns; the penalties (functions of the PSF's pixels alone)
    # through their own linearisation
    _, pen_jvp = jax.linearize(pen_fn, st.resid)
    pen_jt = jax.linear_transpose(pen_jvp, st.resid)
    ay, ax = designs(st.xy, size, k, psf_size)
    tot = jnp.sum(moffat_fine(st.theta, k, psf_size) + st.resid)
    tot = jnp.where(jnp.abs(tot) > 0, tot, 1.0)
    fw = st.flux[:, None, None] * st.w

    def schur(vp):
        nv = (vp - psf_now * jnp.sum(vp)) / tot
        g = fw * apply(ay, nv, ax)
        if not fix_stars:
            t = jnp.einsum("sqc,sq->sc", cols, g.reshape(g.shape[0], -1))
            z = jnp.einsum("scd,sd->sc", binv, t)
            g = g - st.w * jnp.einsum("sqc,sc->sq", cols, z).reshape(g.shape)
        u = adjoint(ay, st.flux[:, None, None] * g, ax)
        (pen,) = pen_jt(pen_jvp(vp))
        return (u - jnp.sum(psf_now * u)) / tot + pen + mu * dr * vp

    (grad,) = jt(r0)
    rhs = jax.tree_util.tree_map(lambda a: -a, grad)
    rhs_p = rhs[0] if fix_stars else rhs[0] - normal(join_star(jnp.einsum("sij,sj->si", binv, split_star(rhs))))[0]

    def back_substitute(dp):
        if fix_stars:
            return (dp, zeros[1], zeros[2], zeros[3])
        ds = jnp.einsum("sij,sj->si", binv, split_star(rhs) - split_star(normal(as_full(dp))))
        return (dp, ds[:, :2], ds[:, 2], ds[:, 3])

    return schur, rhs_p, precondition, back_substitute


def sky_slope(st, sx):
    """The PSF pedestal the stars' local skies took, per fine pixel: the slope of their skies on their fluxes / k^2.

    A stamp cuts the PSF's wings; on it a pedestal in the PSF and the
    star's own sky are the same thing, so the constant fit pins the PSF's
    level on the grid's outer native pixel (the ring term) at the reference
    Moffat's.  Where the true wings lie above the Moffat's (a Kolmogorov
    profile, a halo), every star's sky takes ``F k^2 delta`` of the missing
    pedestal ``delta``: the skies grow with the fluxes.  Stars of one frame
    share a background, so that slope is measured across them (least
    squares of sky on flux, each star weighted by its sky's precision); it
    is returned only where it differs from 0 by more than 3 jackknife
    standard errors (leave one star out: a slope one bright star makes is
    no evidence), else 0.
    """
    dt = st.flux.dtype
    live = jnp.sum(st.w > 0, axis=(1, 2)) > 3
    wt = jnp.where(live, jnp.sum(st.w, axis=(1, 2)), 0.0)
    f, b = jnp.where(live, st.flux, 0.0), jnp.where(live, st.sky, 0.0)
    n = jnp.sum(live).astype(dt)
    # the weighted sums, and the same with each star left out
    sums = jnp.stack([wt, wt * f, wt * f * f, wt * b, wt * f * b])  # (5, n)
    tot = jnp.sum(sums, axis=1)

    def slope(s0, s1, s2, t1, t2):
        den = s0 * s2 - s1**2
        return (s0 * t2 - s1 * t1) / jnp.where(den > 0, den, jnp.inf)

    beta = slope(*tot)
    loo = slope(*(tot[:, None] - sums))
    dev = jnp.where(live, loo - jnp.sum(jnp.where(live, loo, 0.0)) / jnp.maximum(n, 1), 0.0)
    se = jnp.sqrt((n - 1) / jnp.maximum(n, 1) * jnp.sum(dev**2))
    ok = (n >= 6) & (jnp.abs(beta) > 3.0 * se) & jnp.isfinite(beta) & jnp.isfinite(se)
    return jnp.where(ok, beta / sx.k**2, 0.0).astype(dt)


def fourier_operators(kk, k, dt):
    """The stationary parts of the PSF's normal equations in Fourier space, ``(K, K)`` each: ``chat``, the
    data's coupling of the ``k`` fine pixels of a native pixel (a k-wide triangle per axis, mean 1), and
    ``lhat``, the squared Laplacian of the curvature penalty."""
    fx = jnp.fft.fftfreq(kk).astype(dt)
    tri = jnp.where(jnp.abs(fx) > 0,
                    (jnp.sin(jnp.pi * fx * k) / (k * jnp.sin(jnp.pi * jnp.where(fx == 0, 1.0, fx)))) ** 2, 1.0)
    chat = tri[:, None] * tri[None, :]
    lhat = (2 * jnp.cos(2 * jnp.pi * fx)[:, None] + 2 * jnp.cos(2 * jnp.pi * fx)[None, :] - 4) ** 2
    return chat / jnp.mean(chat), lhat


def gn_step(st, d, reg, mu, sx, inf=None, fix_stars=False):
    """One damped Gauss-Newton step on every parameter (see :func:`normal_system`); the proposed state."""
    schur, rhs, precondition, back_substitute = normal_system(st, d, reg, mu, sx, inf, fix_stars)
    dp, _ = jax.scipy.sparse.linalg.cg(schur, rhs, x0=jnp.zeros_like(rhs), M=precondition, maxiter=sx.n_cg, tol=1e-6)
    delta = back_substitute(dp)
    delta = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), delta)
    live = jnp.sum(st.w > 0, axis=(1, 2)) > 3
    xy = jnp.where(live[:, None], st.xy + jnp.clip(delta[1], -0.3, 0.3), st.xy)
    flux = jnp.where(live, st.flux + delta[2], st.flux)
    sky = jnp.where(live, st.sky + delta[3], st.sky)
    return eqx.tree_at(lambda s: (s.resid, s.xy, s.flux, s.sky), st, (st.resid + delta[0], xy, flux, sky))


def rebase(st, sx):
    """The reference Moffat refitted to the current PSF; the PSF itself is unchanged."""
    p = psf(st, sx)
    theta = fit_theta(p, sx.k, sx.psf_size)
    return FitState(theta, p - moffat_fine(theta, sx.k, sx.psf_size), st.xy, st.flux, st.sky, st.w)


class LoopState(NamedTuple):
    st: FitState
    mu: jax.Array
    loss: jax.Array
    i: jax.Array
    dpsf: jax.Array
    done: jax.Array
    hist: jax.Array


def converge(st, d, reg, sx, *, max_iter, tol, hist_len=None):
    """Damped Gauss-Newton steps until the PSF stops changing (``tol`` of its peak, rms) or ``max_iter``.

    Returns ``(state, loss_history, n_iter, converged, last_change)``; the
    history is the objective per pixel in use after each step (NaN beyond
    ``n_iter``), on a fixed pixel set, so it never rises.  ``max_iter``
    and ``tol`` may be traced (one compiled loop serves every
    phase of the fit); ``hist_len`` (static) bounds the history.
    """
    hist_len = int(max_iter) if hist_len is None else hist_len
    dt = d.dtype
    npix = jnp.maximum(jnp.sum(st.w > 0), 1).astype(dt)
    inf = info(st, sx)
    loss0 = objective(st, d, reg, sx, inf)

    def cond(ls):
        return (ls.i < max_iter) & ~ls.done

    def body(ls):
        old = psf(ls.st, sx)
        prop = gn_step(ls.st, d, reg, ls.mu, sx, inf)
        new_loss = objective(prop, d, reg, sx, inf)
        accept = jnp.isfinite(new_loss) & (new_loss <= ls.loss)
        st = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), prop, ls.st)
        new = psf(st, sx)
        change = jnp.sqrt(jnp.mean((new - old) ** 2)) / jnp.max(new)
        dpsf = jnp.where(accept, change, ls.dpsf)
        loss = jnp.where(accept, new_loss, ls.loss)
        rel = (ls.loss - loss) / jnp.maximum(ls.loss, 1e-30)
        mu = jnp.where(accept, jnp.maximum(ls.mu / 4, 1e-6), ls.mu * 8)
        # converged: an accepted step that moved the PSF by less than tol, or no step can lower
        # the objective any more (float precision) after the PSF had settled
        done = (accept & (change < tol)) | (accept & (rel < 1e-7) & (change < 10 * tol)) \
            | ((mu > 1e4) & (ls.dpsf < 10 * tol))
        hist = ls.hist.at[jnp.minimum(ls.i, hist_len - 1)].set(loss / npix)
        return LoopState(st, mu, loss, ls.i + jnp.int32(1), dpsf, done, hist)

    init = LoopState(st, jnp.asarray(1e-3, dt), loss0, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dt),
                     jnp.asarray(False), jnp.full((hist_len,), jnp.nan, dt))
    out = jax.lax.while_loop(cond, body, init)
    return out.st, out.hist, out.i, out.done, out.dpsf

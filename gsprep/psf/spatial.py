"""The PSF across the frame: sub-pixel values that vary as a polynomial in the star's frame position.

After the constant fit (:mod:`.fit`), the PSF of star ``s`` becomes::

    PSF_s = P0 + sum_t c_t(u_s) D_t

with ``c_t`` the monomials ``1, x, y, x^2, x y, y^2, ...`` of total degree
<= ``d`` at the star's normalised frame position ``u_s`` (the stars'
bounding box mapped onto ``[-1, 1]^2``), ``P0`` the constant fit's PSF and
``D_t`` corrections that sum to 0, have no first moment and no mean on the
grid's outer native pixel, so the PSF sums to 1, stays centred and keeps
the constant fit's level at the stamp's edge at every position (a
position-dependent shift would trade against the stars' own centres, a
pedestal against their skies).  Each ``D_t`` is a change of the PSF's size
and shape (:func:`_shape_directions`: to second order in a dilation and
shears, to first order in a convolution, unpenalised) plus a penalised
pixel correction.

With the stars' centres, fluxes and skies held, the model is linear in
the planes ``D``: they are the least-squares solution (conjugate gradients
on the normal equations, with the constant fit's curvature penalty on
every plane, weighted by the data's information as there).  Stars and
planes then alternate: each star refitted with its own local PSF, the
planes refitted.  The degree is chosen, like the regularisation, by
held-out stars: for each candidate degree and fold the planes are fitted
without that fold's stars, which are then fitted with only their centre,
flux and sky free and scored by their reduced chi-square.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..results import convex_hull, monomials, n_terms, term_degrees
from .model import adjoint, centre, designs, laplacian, moffat_fine, ring
from .solver import fourier_operators, stars_gn

__all__ = ["max_degree", "normalise_positions", "spatial_fit"]

#: stars needed per polynomial term for a degree to be tried (degree 1: 18 stars, 2: 36, 3: 60)
STARS_PER_TERM = 6
#: highest degree tried by ``degree="auto"``
AUTO_MAX = 3


def max_degree(n_stars, cap=AUTO_MAX):
    """Highest degree ``n_stars`` good stars support (:data:`STARS_PER_TERM` per polynomial term)."""
    d = 0
    while d < cap and n_terms(d + 1) * STARS_PER_TERM <= n_stars:
        d += 1
    return d


def normalise_positions(frame_xy, good):
    """``(offset, scale)`` mapping the good stars' bounding box onto ``[-1, 1]^2``."""
    p = np.asarray(frame_xy, float)[np.asarray(good, bool)]
    if len(p) == 0:
        return np.zeros(2), np.ones(2)
    lo, hi = p.min(0), p.max(0)
    return (lo + hi) / 2, np.maximum((hi - lo) / 2, 1.0)


def _basis(kk, k, psf_size, dt):
    """Orthonormal ``(4, K, K)``: what a plane must not have: a sum, the two first moments, and a mean on the
    grid's outer native pixel (a pedestal there: the star's sky and flux would take it, as in the constant
    fit's ring term)."""
    g = jnp.arange(kk, dtype=dt) - centre(k, psf_size)
    one = jnp.ones((kk, kk), dt)
    gx = jnp.broadcast_to(g[None, :], (kk, kk))
    gy = jnp.broadcast_to(g[:, None], (kk, kk))
    rg = ring(kk, k, dt)
    rg = rg - jnp.mean(rg)  # orthogonal to the constant (and, the grid being symmetric, to the moments)
    b = jnp.stack([one, gx, gy, rg])
    return b / jnp.sqrt(jnp.sum(b**2, axis=(1, 2)))[:, None, None]


def _project(planes, basis):
    """Remove each plane's sum and first moments."""
    c = jnp.einsum("tij,bij->tb", planes, basis)
    return planes - jnp.einsum("tb,bij->tij", c, basis)


def _local(p0, planes, coef):
    """Each star's PSF ``P0 + sum_t c_ts D_t``, ``(n, K, K)``."""
    return p0[None] + jnp.einsum("nt,tij->nij", coef, planes)


def _render(psfs, ay, ax):
    """``A(y_s) PSF_s A(x_s)^T`` for every star, ``(n, S, S)``."""
    return jnp.einsum("nsl,nxl->nsx", jnp.einsum("nsk,nkl->nsl", ay, psfs), ax)


def _info(flux, w, ay, ax):
    """The data's information per fine pixel (mean, and map / mean floored at 1e-3), as in the constant fit."""
    diag_p = adjoint(ay**2, (flux**2)[:, None, None] * w, ax**2)
    scale = jnp.maximum(jnp.mean(diag_p), 1e-30)
    return scale, jnp.maximum(diag_p / scale, 1e-3)


def solve_planes(p0, jac, xy, flux, sky, w, d, coef, lam, sx, n_cg, planes_now=None, pen_mult=None):
    """The planes ``D (T, K, K)`` that best fit the stars with their centres, fluxes and skies held.

    Each plane is ``J a_t + R_t``: a change of the PSF's size and shape
    (``jac (K, K, m)``, :func:`_shape_directions`, made orthonormal in the
    data's information (:func:`_orthonormal`); free, not penalised, so
    a change of width or ellipticity across the frame costs nothing) plus
    a pixel correction ``R_t`` with the constant fit's curvature penalty.
    ``coef (n, T)``: each star's monomials (a column of zeros switches a
    term off: its plane comes out 0).  ``lam``: curvature penalty, in
    units of the data's mean information per fine pixel.

    Each star's flux and sky move with the planes (linearised about the
    star's model with ``planes_now``, and eliminated exactly: a 2 x 2 block
    per star), so a PSF that is sharper in one corner is not read as stars
    that are brighter there: held fluxes would absorb part of the variation.
    """
    dt = d.dtype
    k, psf_size, size = sx.k, sx.psf_size, sx.size
    kk = k * psf_size
    n_t = coef.shape[1]
    ay, ax = designs(xy, size, k, psf_size)
    basis = _basis(kk, k, psf_size, dt)
    jac = jnp.moveaxis(_project(jnp.moveaxis(jac, -1, 0), basis), 0, -1)  # (K, K, m), no sum, no shift
    scale, dloc = _info(flux, w, ay, ax)
    jac = _orthonormal(jac, dloc)
    fw = flux[:, None, None]
    r = d - fw * _render(jnp.broadcast_to(p0, (xy.shape[0], kk, kk)), ay, ax) - sky[:, None, None]
    lam_s = lam * scale
    ridge = 1e-6 * scale
    # the varying planes' pixel corrections (t >= 1) held pen_mult times harder than the constant one's
    pen_mult = PLANE_PENALTY if pen_mult is None else pen_mult
    pen_w = jnp.where(jnp.arange(n_t) == 0, 1.0, pen_mult).astype(dt)
    # each star's unit-flux model with the current planes, and its (flux, sky) normal-equation block
    now = jnp.zeros((n_t, kk, kk), dt) if planes_now is None else planes_now
    m_s = _render(_local(p0, now, coef), ay, ax)
    h11 = jnp.sum(w * m_s * m_s, axis=(1, 2))
    h12 = jnp.sum(w * m_s, axis=(1, 2))
    h22 = jnp.sum(w, axis=(1, 2))
    det = h11 * h22 - h12**2
    live = (h22 > 0) & (det > 1e-12 * jnp.maximum(h11 * h22, 1e-30))
    det = jnp.where(live, det, 1.0)

    def eliminate(g):
        """``g - W C (C^T W C)^-1 C^T g`` per star, ``C = [m_s, 1]`` (flux and sky free)."""
        if not ELIMINATE:
            return g
        t1 = jnp.sum(m_s * g, axis=(1, 2))
        t2 = jnp.sum(g, axis=(1, 2))
        z1 = jnp.where(live, (h22 * t1 - h12 * t2) / det, 0.0)
        z2 = jnp.where(live, (h11 * t2 - h12 * t1) / det, 0.0)
        return g - w * (z1[:, None, None] * m_s + z2[:, None, None])

    def planes_of(v):
        rp, a = v
        return _project(rp, basis) + jnp.einsum("ijc,tc->tij", jac, a)

    def adj(g):  # (n, S, S) -> (T, K, K)
        m = jnp.einsum("nsk,nsl->nkl", ay, jnp.einsum("nsx,nxl->nsl", g, ax))
        return jnp.einsum("nt,nkl->tkl", coef, m)

    def normal(v):
        rp = _project(v[0], basis)
        g = eliminate(w * fw * _render(jnp.einsum("nt,tij->nij", coef, planes_of(v)), ay, ax))
        back = adj(fw * g)
        pen = jax.vmap(lambda q: laplacian(dloc * laplacian(q)))(rp) * pen_w[:, None, None]
        return (_project(back + lam_s * pen + ridge * rp, basis),
                jnp.einsum("ijc,tij->tc", jac, back) + ridge * v[1])

    b0 = adj(fw * eliminate(w * r))
    rhs = (_project(b0, basis), jnp.einsum("ijc,tij->tc", jac, b0))
    # preconditioner: (coefficient Gram)^-1 across the planes, times the constant fit's stationary
    # Fourier operator within each (the data's per-native-pixel coupling plus the curvature penalty);
    # the Moffat coefficients by their own data curvature
    info_s = flux**2 * jnp.sum(w, axis=(1, 2))
    gram = jnp.einsum("nt,nu,n->tu", coef, coef, info_s) / jnp.maximum(jnp.sum(info_s), 1e-30)
    off = jnp.sum(jnp.abs(coef), axis=0) == 0
    gram = gram + jnp.diag(jnp.where(off, 1.0, 1e-6))
    ginv = jnp.linalg.inv(gram)
    chat, lhat = fourier_operators(kk, k, dt)
    gf = 1.0 / (chat + lam * lhat + 1e-6)
    sdr = 1.0 / jnp.sqrt(jnp.maximum(dloc * scale, 1e-3 * scale))
    cdt = jnp.complex128 if dt == jnp.float64 else jnp.complex64
    hj = jnp.einsum("ijc,ij->c", jac**2, dloc * scale)
    hj = jnp.where(hj > 0, hj, 1.0)

    def precondition(v):
        u = jax.vmap(lambda q: sdr * jnp.real(jnp.fft.ifft2(gf.astype(cdt) * jnp.fft.fft2(sdr * q))).astype(dt))(v[0])
        return (_project(jnp.einsum("tu,uij->tij", ginv, u), basis), jnp.einsum("tu,uc->tc", ginv, v[1]) / hj)

    x0 = (jnp.zeros((n_t, kk, kk), dt), jnp.zeros((n_t, jac.shape[-1]), dt))
    sol, _ = jax.scipy.sparse.linalg.cg(normal, rhs, x0=x0, M=precondition, maxiter=n_cg, tol=1e-6)
    sol = jax.tree_util.tree_map(lambda a: jnp.where(jnp.isfinite(a), a, 0.0), sol)
    return planes_of(sol)


def local_star_step(psfs, xy, flux, sky, w, d, sx, n_gn=3):
    """Gauss-Newton on each star's (x, y, flux, sky), each with its own PSF ``psfs (n, K, K)``."""
    return stars_gn(psfs, xy, flux, sky, d, w, sx, 0.0, n_gn)


def _models(psfs, xy, flux, sky, sx):
    ay, ax = designs(xy, sx.size, sx.k, sx.psf_size)
    return flux[:, None, None] * _render(psfs, ay, ax) + sky[:, None, None]


def _reduced_chi2(d, m, w):
    npix = jnp.sum(w > 0, axis=(1, 2))
    r2 = jnp.sum(jnp.where(w > 0, (d - m) ** 2 * w, 0.0), axis=(1, 2))
    return r2 / jnp.maximum(npix - 4, 1).astype(d.dtype), npix > 4


def degree_scores(p0, jac, xy, flux, sky, w, d, coef, tdeg, fold, lam, degrees, mults, sx, n_folds, n_cg):
    """Every star's held-out reduced chi-square for every candidate ``(degree, mult)``, ``(n_candidates, n)``,
    and whether it was scored.

    For each candidate and fold the planes are fitted on the other folds'
    stars (held at their fit on all stars; ``mult``: the varying planes'
    curvature penalty in units of the constant fit's); the fold's stars are
    then fitted with only their centre, flux and sky free, each with the PSF
    at its position.
    """

    def one(args):
        deg, mult, f = args
        c = coef * (tdeg <= deg)[None, :]
        train = (fold != f) & (fold >= 0)
        planes = solve_planes(p0, jac, xy, flux, sky, w * train[:, None, None], d, c, lam, sx, n_cg, pen_mult=mult)
        psfs = _local(p0, planes, c)
        txy, tf, tb = local_star_step(psfs, xy, flux, sky, w, d, sx, n_gn=3)
        red, ok = _reduced_chi2(d, _models(psfs, txy, tf, tb, sx), w)
        held = (fold == f) & ok
        return jnp.where(held, red, 0.0), held

    nd = degrees.shape[0]
    ff = jnp.tile(jnp.arange(n_folds, dtype=fold.dtype), nd)
    red, held = jax.lax.map(one, (jnp.repeat(degrees, n_folds), jnp.repeat(mults, n_folds), ff))
    red = red.reshape(nd, n_folds, -1).sum(1)
    held = held.reshape(nd, n_folds, -1).any(1)
    return red, held


#: conjugate-gradient iterations of a plane solve (half of them in the degree's cross-validation)
N_CG = 120
#: each star's flux and sky free in the plane solve (eliminated); False holds them (for comparisons)
ELIMINATE = True
#: curvature penalty of the varying planes' pixel corrections, in units of the constant fit's
PLANE_PENALTY = 1.0
#: candidate penalties of the varying planes tried by ``degree="auto"`` (with each degree >= 1)
PENALTY_GRID = (1.0, 10.0, 100.0)  # the first is the one the degree is chosen with
#: rounds of the final fit's alternation (planes with the stars held, then the stars with their local PSFs)
ROUNDS = 2


def final_fit(p0, jac, xy, flux, sky, w, d, coef, lam, sx, n_cg, rounds=None, pen_mult=None):
    """Planes and stars alternated ``rounds`` times; returns ``(planes, xy, flux, sky, models)``."""
    rounds = ROUNDS if rounds is None else rounds
    planes = solve_planes(p0, jac, xy, flux, sky, w, d, coef, lam, sx, n_cg, pen_mult=pen_mult)
    for _ in range(rounds - 1):
        xy, flux, sky = local_star_step(_local(p0, planes, coef), xy, flux, sky, w, d, sx, n_gn=3)
        planes = solve_planes(p0, jac, xy, flux, sky, w, d, coef, lam, sx, n_cg, planes_now=planes,
                              pen_mult=pen_mult)
    psfs = _local(p0, planes, coef)
    xy, flux, sky = local_star_step(psfs, xy, flux, sky, w, d, sx, n_gn=3)
    return planes, xy, flux, sky, _models(psfs, xy, flux, sky, sx)


def _generators(p, sx):
    """The PSF ``p``'s change under six flux-preserving transformations, ``(6, K, K)``: a dilation and two
    shears of its coordinates, ``-(tr(G) P + (G x) . grad P)``, and a convolution with a narrow round and two
    elliptical kernels, ``(d_xx + d_yy, d_xx - d_yy, d_xy) P`` (band-limited derivatives on the fine grid).

    The first three describe a change of focus or of the scale of any profile, the last three a change of a
    component the PSF is convolved with (seeing, jitter, charge diffusion), which is not a dilation of the
    whole PSF when another component (the optics) stays the same.
    """
    dt = p.dtype
    kk = p.shape[-1]
    f = 2 * jnp.pi * jnp.fft.fftfreq(kk).astype(dt)
    cdt = jnp.complex128 if dt == jnp.float64 else jnp.complex64
    ph = jnp.fft.fft2(p.astype(cdt))

    def deriv(op):
        return jnp.real(jnp.fft.ifft2(ph * op)).astype(dt)

    fx, fy = f[None, :], f[:, None]
    dx, dy = deriv(1j * fx), deriv(1j * fy)
    dxx, dyy, dxy = deriv(-(fx**2)), deriv(-(fy**2)), deriv(-fx * fy)
    g = jnp.arange(kk, dtype=dt) - centre(sx.k, sx.psf_size)
    x, y = g[None, :], g[:, None]
    return jnp.stack([-(2 * p + x * dx + y * dy), -(x * dx - y * dy), -(y * dx + x * dy),
                      dxx + dyy, dxx - dyy, dxy])


#: the transformations (of :func:`_generators`) whose second-order products are directions too: dilation,
#: and the two shears (the convolutions' products, fourth derivatives, are mostly noise)
N_SECOND = 3


def _shape_directions(theta, p0, sx):
    """The unpenalised directions a plane may take, ``(K, K, 16)``: changes of the PSF's size and shape.

    The reference Moffat's derivatives with respect to its four parameters
    (width, wing slope, ellipticity); the PSF ``p0``'s first-order change
    under the six transformations of :func:`_generators` (dilation, shears,
    convolutions); and its second-order change under pairs of the first
    :data:`N_SECOND` of them (``G_i G_j P0``).  A PSF whose width changes by
    +-10% across the frame is not ``P0`` plus a multiple of one first-order
    direction (the projection misses ~6% of the change): with the
    second-order terms a degree-``d`` plane follows the width's square too.
    """
    mof = jax.jacfwd(lambda th: moffat_fine(th, sx.k, sx.psf_size))(theta)
    g1 = _generators(p0, sx)
    g2 = jnp.stack([_generators(g1[i], sx)[j] for i in range(N_SECOND) for j in range(i, N_SECOND)])
    return jnp.concatenate([mof, jnp.moveaxis(jnp.concatenate([g1, g2]), 0, -1)], axis=-1)


def _orthonormal(jac, wt):
    """The span of ``jac (K, K, m)`` as ``m`` directions orthonormal in the weight ``wt (K, K)`` (the data's
    information per fine pixel); directions the others already span (singular values below 1e-6 of the
    largest) come out 0."""
    kk, m = jac.shape[0], jac.shape[-1]
    a = (jac * jnp.sqrt(wt)[..., None]).reshape(kk * kk, m)
    _, s, vt = jnp.linalg.svd(a, full_matrices=False)
    keep = s > 1e-6 * s[0]
    t = jnp.where(keep[None, :], vt.T / jnp.where(keep, s, 1.0)[None, :], 0.0)
    return jnp.einsum("ijc,cd->ijd", jac, t)


@partial(jax.jit, static_argnames=("sx", "n_folds", "n_cg", "max_deg"))
def _cv_core(p0, theta, xy, flux, sky, w, d, u, fold, lam, *, sx, n_folds, n_cg, max_deg):
    coef = monomials(u, max_deg, xp=jnp).astype(d.dtype)
    tdeg = jnp.asarray(term_degrees(max_deg))
    jac = _shape_directions(theta, p0, sx)
    cdeg, cmult = candidates(max_deg)
    return degree_scores(p0, jac, xy, flux, sky, w, d, coef, tdeg, fold, lam, jnp.asarray(cdeg),
                         jnp.asarray(cmult, d.dtype), sx, n_folds, n_cg)


def candidates(max_deg):
    """The ``(degree, penalty)`` candidates of ``degree="auto"``: degree 0, and each degree >= 1 with every penalty."""
    cdeg = [0] + [dg for dg in range(1, max_deg + 1) for _ in PENALTY_GRID]
    cmult = [1.0] + [m for _ in range(1, max_deg + 1) for m in PENALTY_GRID]
    return np.array(cdeg), np.array(cmult)


@partial(jax.jit, static_argnames=("sx", "n_cg", "max_deg"))
def _final_core(p0, theta, xy, flux, sky, w, d, u, lam, degree, pen_mult, *, sx, n_cg, max_deg):
    dt = d.dtype
    coef = monomials(u, max_deg, xp=jnp).astype(dt)
    coef = coef * (jnp.asarray(term_degrees(max_deg)) <= degree)[None, :]
    return final_fit(p0, _shape_directions(theta, p0, sx), xy, flux, sky, w, d, coef, lam, sx, n_cg,
                     pen_mult=pen_mult)


def _scores(red, held):
    """Each candidate's mean held-out reduced chi-square over the stars every candidate scored (capped at 5 x the
    median); NaN when fewer than 3 such stars."""
    ok = np.asarray(held, bool).all(0)
    if ok.sum() < 3:
        return np.full(red.shape[0], np.nan)
    r = np.asarray(red, float)[:, ok]
    return np.minimum(r, 5.0 * np.median(r, axis=1, keepdims=True)).mean(1)


def choose_degree(red, held):
    """The lowest degree whose held-out chi-square is within the noise of the best one's.

    ``red, held (n_degrees, n)``.  Each degree's score is the mean held-out
    reduced chi-square (each star capped at 5 x the median); a higher degree
    is taken only when it beats every lower one by more than twice the
    standard error of the stars' paired differences.
    """
    red = np.asarray(red, float)
    ok = np.asarray(held, bool).all(0)
    if ok.sum() < 3:
        return 0, np.full(red.shape[0], np.nan)
    r = red[:, ok]
    cap = 5.0 * np.median(r, axis=1, keepdims=True)
    r = np.minimum(r, cap)
    scores = r.mean(1)
    best = int(np.argmin(scores))
    for cand in range(best):
        diff = r[cand] - r[best]
        se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else np.inf
        if diff.mean() <= 2.0 * se:
            return cand, scores
    return best, scores


def _outliers(red, ok, live, nsigma):
    """Stars whose reduced chi-square under the varying PSF lies ``nsigma`` robust sigmas above the median
    (and above 1.5), as :func:`.robust.robust_weights` judges them under the constant one."""
    live = live & ok
    if live.sum() < 5:
        return np.zeros_like(live)
    med = np.median(red[live])
    mad = 1.4826 * np.median(np.abs(red[live] - med))
    return live & (red > med + nsigma * max(mad, 0.05 * med)) & (red > 1.5)


def spatial_fit(p0, theta, st_xy, st_flux, st_sky, w, d, frame_xy, fold, lam, degree, sx, *, n_folds, n_cg=None,
                chi2_nsigma=None):
    """The spatially varying PSF of one band (device arrays in, numpy out), or None when degree 0 is chosen.

    ``degree``: an int (already capped by the caller) or ``"auto"``;
    ``fold``: the stars' folds (-1: not usable).  Returns a dict:
    ``degree``, ``planes (T, K, K)`` (``PSF(u) = sum_t c_t(u) planes[t]``,
    ``planes[0]`` including ``P0``), ``offset``, ``scale``, ``hull``, the
    stars' refitted ``xy, flux, sky`` and ``model`` stamps, ``scores`` (each
    degree's held-out score, ``"auto"`` only) and ``heldout_chi2`` (median
    held-out reduced chi-square of the chosen degree), ``w`` and ``flagged``
    (the stars' weights and the stars left out by the outlier test below).

    ``chi2_nsigma``: after the fit, stars whose reduced chi-square lies that
    many robust sigmas above the median are left out and the planes refitted
    once.  Under the constant PSF every bright star misfits by the PSF's
    change across the frame, so a star blended with a neighbour does not
    stand out there; under the varying PSF it does, and left in, a pair of
    bright blended stars bends the polynomial over a whole region.
    """
    dt = d.dtype
    n_cg = N_CG if n_cg is None else n_cg
    wn = np.asarray(w)
    good = wn.reshape(wn.shape[0], -1).sum(1) > 0
    offset, scale = normalise_positions(frame_xy, good)
    u = jnp.asarray((np.asarray(frame_xy, float) - offset) / scale, dt)
    lam = jnp.asarray(lam, dt)
    scores, held_med, held_star = None, np.nan, None
    if degree == "auto":
        max_deg = max_degree(int(good.sum()))
        if max_deg == 0 or n_folds < 2:
            return None
        red, held = _cv_core(p0, theta, st_xy, st_flux, st_sky, w, d, u, jnp.asarray(fold), lam, sx=sx, n_folds=n_folds,
                             n_cg=max(n_cg // 2, 40), max_deg=max_deg)
        red, held = np.asarray(red, float), np.asarray(held)
        cdeg, cmult = candidates(max_deg)
        # the degree from the candidates at the constant fit's own penalty (choosing among more candidates
        # would pick a varying PSF on a constant field by chance more often), then, for that degree, the
        # penalty with the lowest mean held-out chi-square
        base = [0] + [int(np.flatnonzero((cdeg == dg) & (cmult == PENALTY_GRID[0]))[0]) for dg in range(1, max_deg + 1)]
        chosen, scores = choose_degree(red[base], held[base])
        if chosen == 0:
            return {"degree": 0, "scores": scores}
        cand_scores = _scores(red, held)
        mine = np.flatnonzero(cdeg == chosen)
        best = int(mine[np.nanargmin(cand_scores[mine])]) if np.isfinite(cand_scores[mine]).any() else base[chosen]
        mult = float(cmult[best])
        held_med = float(np.median(red[best][held[best]]))
        held_star = np.where(held[best], red[best], np.nan)
    else:
        chosen = max_deg = int(degree)
        mult = PLANE_PENALTY
    final = partial(_final_core, p0, theta, st_xy, st_flux, st_sky, sx=sx, n_cg=n_cg, max_deg=max_deg)
    planes, xy, flux, sky, model = final(w, d, u, lam, jnp.asarray(chosen), jnp.asarray(mult, dt))
    flagged = np.zeros(good.shape, bool)
    if chi2_nsigma is not None and np.isfinite(chi2_nsigma):
        red, ok = _reduced_chi2(d, model, w)
        flagged = _outliers(np.asarray(red, float), np.asarray(ok), good, float(chi2_nsigma))
        if flagged.any():
            w = jnp.where(jnp.asarray(flagged)[:, None, None], 0.0, w)
            planes, xy, flux, sky, model = final(w, d, u, lam, jnp.asarray(chosen), jnp.asarray(mult, dt))
    planes = np.asarray(planes, float)[: n_terms(chosen)]
    planes[0] = planes[0] + np.asarray(p0, float)
    return {"degree": chosen, "planes": planes, "offset": offset, "scale": scale,
            "hull": convex_hull(np.asarray(frame_xy, float)[good]), "xy": np.asarray(xy), "flux": np.asarray(flux),
            "sky": np.asarray(sky), "model": np.asarray(model), "scores": scores, "heldout_chi2": held_med,
            "penalty": mult,
            "heldout": held_star, "w": np.asarray(w), "flagged": flagged}

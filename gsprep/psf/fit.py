"""``fit_epsf``: the joint fit of one PSF and every star's centre, flux and sky, read top to bottom.

1. numpy start (:mod:`.start`): centroids, gross outliers out, a stacked PSF.
2. warm-up (:func:`_fit_compiled`): a Moffat fitted to the stack as the starting
   shape, then damped Gauss-Newton steps on the Moffat and the stars, then on
   the free pixel correction; robust clipping of pixels and stars in between.
3. cross-validation (:mod:`.validation`): the regularisation's kind and
   strength that best predicts held-out stars.
4. the final fit with that regularisation, iterated until the PSF stops
   changing (``tol``) or ``max_iter`` steps, on a fixed pixel set; then the
   PSF's level at the stamp's edge set from the stars' skies (their slope on
   the fluxes, :func:`.solver.sky_slope`) and the fit continued.
5. the report: per-star chi-square and flags, held-out chi-square and
   residual flux, FWHM and ellipticity.

Steps 2-4 are one jit-compiled function of the stamps (``jax.vmap`` over
bands); its shapes are padded to a few star counts so a batch compiles few.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_integer, check_nonnegative, check_positive
from ..results import FLAG_BITS, EPSFResult, PSFConvergenceWarning, psf_shape
from .model import models, moffat_fine
from .robust import robust_weights
from ..results import n_terms
from .solver import FitState, Reg, Static, converge, fit_theta, gn_step, psf, rebase, sky_slope, star_step
from .spatial import AUTO_MAX, STARS_PER_TERM, max_degree, spatial_fit
from .start import band_start, bucket, centroids, initial, pad_stars, prepare_arrays
from .validation import GRID, KINDS, assign_folds, choose, heldout_scores, robust_score

__all__ = ["EPSFResult", "fit_epsf", "fit_stars", "oracle_psf", "FLAG_BITS", "PSFConvergenceWarning"]

def compute_dtype():
    """float64 when JAX runs with ``jax_enable_x64``, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _jit_bands(fn, static, in_axes):
    """``fn`` jit-compiled, and its ``jax.vmap`` over a leading band axis, jit-compiled."""
    one = jax.jit(fn, static_argnames=static)

    def many(*args, **kw):
        return jax.vmap(partial(fn, **kw), in_axes=in_axes)(*args)

    return one, jax.jit(many, static_argnames=static)


def _start_fn(st, psf0, d, a_sky, *, sx):
    """The stacked start as the PSF (a Moffat fitted to it as the reference shape), and the stars fitted with it."""
    theta = fit_theta(psf0, sx.k, sx.psf_size)
    st = FitState(theta, psf0 - moffat_fine(theta, sx.k, sx.psf_size), st.xy, st.flux, st.sky, st.w)
    return star_step(st, d, sx, a_sky)


def _phase_fn(st, d, reg, max_iter, tol, *, sx, hist_len):
    """One phase of damped Gauss-Newton steps (one compiled loop serves every phase)."""
    return converge(st, d, reg, sx, max_iter=max_iter, tol=tol, hist_len=hist_len)


def _robust_fn(st, d, w0, flagged, clip, chi2_nsigma, *, sx):
    w, flagged, many = robust_weights(st, d, w0, flagged, sx, clip, chi2_nsigma)
    return FitState(st.theta, st.resid, st.xy, st.flux, st.sky, w), flagged, many


def _cv_fn(st, d, fold, grid, a_tv, a_sky, *, sx, n_folds):
    """Held-out scores of every candidate regularisation, and the best one."""
    red, rff, scored = heldout_scores(st, d, fold, jnp.arange(n_folds, dtype=fold.dtype), grid, a_tv, a_sky, sx)
    score = robust_score(red, scored)
    best = choose(score)
    scores = jnp.stack([grid[:, 0], grid[:, 1], score], axis=1)
    held = jnp.stack([jnp.nanmedian(jnp.where(scored[best], red[best], jnp.nan)),
                      jnp.nanmedian(jnp.where(scored[best], rff[best], jnp.nan))])
    return grid[best], scores, held


def _finish_fn(st, *, sx):
    p = psf(st, sx)
    return p, models(p, st.xy, st.flux, st.sky, sx.size, sx.k, sx.psf_size)


_start, _start_b = _jit_bands(_start_fn, ("sx",), (0, 0, 0, None))
_phase, _phase_b = _jit_bands(_phase_fn, ("sx", "hist_len"), (0, 0, Reg(0, 0, None, None, None, 0), None, None))
_robust, _robust_b = _jit_bands(_robust_fn, ("sx",), (0, 0, 0, 0, None, None))
_cv, _cv_b = _jit_bands(_cv_fn, ("sx", "n_folds"), (0, 0, 0, None, None, None))
_finish, _finish_b = _jit_bands(_finish_fn, ("sx",), (0,))
_rebase, _rebase_b = _jit_bands(rebase, ("sx",), (0,))
_slope, _slope_b = _jit_bands(sky_slope, ("sx",), (0,))

#: rounds of the ring level's correction from the stars' skies (:func:`.solver.sky_slope`) after the final fit
RING_ROUNDS = 2


def _fit_compiled(st, psf0, d, fold, fixed, a_tv, a_sky, clip, chi2_nsigma, tol, *, sx, robust, n_folds, max_iter,
                  bands):
    """Steps 2-4 on padded device arrays (one band, or every band at once when ``bands``)."""
    dt = d.dtype
    f_start, f_phase, f_robust, f_cv, f_finish, f_rebase, f_slope = (
        (_start_b, _phase_b, _robust_b, _cv_b, _finish_b, _rebase_b, _slope_b) if bands
        else (_start, _phase, _robust, _cv, _finish, _rebase, _slope))
    nb = d.shape[0] if bands else None

    def reg_of(gamma, lam, ring0=None):
        return Reg(lam, gamma, a_tv, a_sky, 1.0, const(0.0) if ring0 is None else ring0)

    def const(v):
        v = jnp.asarray(v, dt)
        return jnp.broadcast_to(v, (nb,)) if bands else v

    it = partial(jnp.asarray, dtype=jnp.int32)
    hist_len = max_iter
    # 2. warm-up: the stacked start refined with the stars at a light regularisation, then
    # clipping (pixels first; stars are judged only once the PSF has settled)
    w0 = st.w
    st = f_start(st, psf0, d, a_sky, sx=sx)
    reg0 = reg_of(const(1.0), const(0.01))
    loose = jnp.maximum(tol, 1e-3)  # the warm-up only needs a PSF good enough to judge pixels by
    st = f_phase(st, d, reg0, it(4), loose, sx=sx, hist_len=hist_len)[0]
    flagged = jnp.zeros(d.shape[:-2], bool)
    many = jnp.zeros(d.shape[:-2], bool)
    if robust:
        for nsig in (jnp.inf, chi2_nsigma):
            st, flagged, many = f_robust(st, d, w0, flagged, clip, jnp.asarray(nsig, dt), sx=sx)
            st = f_phase(st, d, reg0, it(3), loose, sx=sx, hist_len=hist_len)[0]
    # the "profile" regularisation's reference: the Moffat closest to the PSF the stars now give
    st = f_rebase(st, sx=sx)
    # 3. the regularisation that best predicts held-out stars
    if n_folds > 1:
        best, scores, held = f_cv(st, d, fold, jnp.asarray(GRID, dt), a_tv, a_sky, sx=sx, n_folds=n_folds)
        gamma, lam = best[..., 0], best[..., 1]
    else:
        gamma, lam = const(fixed[0]), const(fixed[1])
        scores = jnp.full(d.shape[:-3] + (len(GRID), 3), jnp.nan, dt)
        held = jnp.full(d.shape[:-3] + (2,), jnp.nan, dt)
    # 4. the final fit, to convergence, on a fixed pixel set
    st, hist, n_iter, done, dpsf = f_phase(st, d, reg_of(gamma, lam), it(max_iter), tol, sx=sx, hist_len=hist_len)
    # 4b. the PSF's level at the stamp's edge from the stars' skies: raised by the pedestal the skies took
    # (their slope on the fluxes), and the fit continued (a sky prior, a_sky > 0, sets that level instead)
    # (n_iter, the history and the convergence reported are the last phase's: one objective, it never rises;
    # max_iter bounds all the final fit's steps; a band whose skies show no slope keeps its fit)
    ring0 = const(0.0)
    used = n_iter
    for _ in range(RING_ROUNDS if float(jnp.max(a_sky)) == 0 else 0):
        left = max_iter - int(jnp.max(used))
        step = f_slope(st, sx=sx)
        if left <= 0 or not np.any(np.asarray(step) != 0):
            break
        ring0 = ring0 + step
        new = f_phase(st, d, reg_of(gamma, lam, ring0), it(left), tol, sx=sx, hist_len=hist_len)
        moved = step != 0

        def pick(a, b, moved=moved):
            return jnp.where(moved.reshape(moved.shape + (1,) * (a.ndim - moved.ndim)), a, b)

        st, hist, n_iter, done, dpsf = jax.tree_util.tree_map(pick, new, (st, hist, n_iter, done, dpsf))
        used = used + jnp.where(moved, new[2], 0)
    p, m = f_finish(st, sx=sx)
    return dict(st=st, psf=p, model=m, flagged=flagged, many=many, hist=hist, n_iter=n_iter, converged=done,
                ring0=ring0,
                dpsf=dpsf, gamma=gamma, lam=lam, cv=scores, held_chi2=held[..., 0], held_rff=held[..., 1])


def _parse_reg(regularization):
    if isinstance(regularization, str):
        if regularization != "auto":
            msg = f"regularization must be 'auto' or (kind, strength), got {regularization!r}"
            raise ValueError(msg)
        return None
    try:
        kind, strength = regularization
    except (TypeError, ValueError):
        msg = f"regularization must be 'auto' or (kind, strength) with kind 'profile' or 'smooth', got {regularization!r}"
        raise ValueError(msg) from None
    names = {v: g for g, v in KINDS.items()}
    if kind not in names:
        msg = f"regularization kind must be one of {sorted(names)}, got {kind!r}"
        raise ValueError(msg)
    return names[kind], check_nonnegative("regularization strength", strength)


def _check_stamps_size(psf0, k, size):
    """Warn when the stamps are too small for the PSF (its wings would go into the local sky)."""
    fwhm = psf_shape(psf0, k)["fwhm"]
    if np.isfinite(fwhm) and size < 5 * fwhm:
        need = int(np.ceil(5 * fwhm)) | 1
        warnings.warn(f"fit_epsf: stamps of {size} px are small for a PSF of FWHM ~{fwhm:.1f} px: its wings fall "
                      f"outside and bias the PSF and fluxes; use stamps of at least {need} px", stacklevel=3)


def fit_epsf(stamps, sigmas=None, masks=None, *, oversampling=1, a_tv=0.0, a_sky=0.0, psf_size=None,
             centers=None, regularization="auto", folds=3, robust=True, clip=5.0, chi2_nsigma=5.0, max_iter=60,
             n_cg=60, tol=1e-4, warn=True, method="gsprep", degree=0, origins=None):
    """Fit an empirical PSF jointly with every star's sub-pixel centre, flux and local sky.

    Parameters
    ----------
    stamps : array (n, size, size) or (bands, n, size, size), or Stamps
        Star stamps (odd size), data units, sky not subtracted.  A
        :class:`gsprep.Stamps` supplies sigmas, masks and centres too.
    sigmas : array, same shape
        Per-pixel noise (> 0 where unmasked), data units.
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
        Starting ``(x, y)`` of each star in its stamp (0-based native
        pixels); default a windowed centroid.
    regularization : "auto" or (kind, strength)
        How the PSF's pixels are held where the data constrain them weakly.
        ``"auto"`` (default) picks the kind and strength that best predict
        held-out stars (``folds``-fold cross-validation).  Or fix it:
        ``("smooth", s)`` penalises the PSF's curvature, ``("profile", s)``
        the curvature of its departure from the fitted elliptical Moffat;
        ``s`` in units of the data's information per fine pixel (0 = none).
    folds : int
        Folds of the cross-validation (>= 2); with fewer than ``2 * folds``
        usable stars the fit uses ``("profile", 0.1)`` and says so.
    robust : bool
        Drop gross outliers before fitting (pixels far from the median
        star; skipped when the median star's FWHM is below 1.5 px, where
        one pixel holds the core and a star's shape is its sub-pixel phase:
        the fit's own clipping then does it alone), then clip pixels beyond
        ``clip`` sigma (and their neighbours)
        and flag stars whose reduced chi-square lies more than
        ``chi2_nsigma`` robust sigmas above the median (default True).
        With a varying PSF (``degree`` > 0) the stars are judged again under
        it and the outliers left out (a star blended with a neighbour misfits
        there, not under one PSF that misfits every bright star).
    max_iter, n_cg : int
        Most Gauss-Newton steps of the final fit, and conjugate-gradient
        iterations per step.
    tol : float
        The fit has converged when a step changes the PSF by less than
        ``tol`` of its peak (rms).
    warn : bool
        Warn (:class:`PSFConvergenceWarning`) when the fit did not converge.
    method : {"gsprep", "photutils"}
        ``"photutils"`` runs photutils' ``EPSFBuilder`` on the same stamps
        and returns its PSF converted to gsprep's convention (as GalfitS's
        ``photutils_method``).
    degree : int or "auto"
        How the PSF varies across the frame: its sub-pixel values are a
        polynomial of this total degree in the star's frame position
        (:mod:`gsprep.psf.spatial`); 0 (default) is one PSF for the whole
        frame.  ``"auto"`` picks 0-3 by held-out stars and tries only the
        degrees the star count supports (6 stars per polynomial term: 18
        for degree 1, 36 for 2, 60 for 3); an explicit degree the stars
        cannot support is lowered, with a warning.  Evaluate the result
        with :meth:`EPSFResult.psf_at`.
    origins : array (n, 2) or (bands, n, 2), optional
        Frame pixel ``(x, y)`` of each stamp's pixel ``(0, 0)`` (a
        :class:`gsprep.Stamps` supplies it); needed when ``degree != 0``.

    Returns
    -------
    EPSFResult
        With the quality report: ``heldout_chi2``, ``residual_flux``,
        ``fwhm``, ``ellipticity``, ``converged``.

    Examples
    --------
    >>> import numpy as np, gsprep
    >>> from gsprep.simulate import moffat_psf
    >>> rng = np.random.default_rng(1)
    >>> xy = 10 + rng.uniform(-0.5, 0.5, (24, 2))
    >>> truth = np.stack([1e4 * moffat_psf((21, 21), x, y, fwhm=3.0, beta=3.0) for x, y in xy])
    >>> sigma = np.sqrt(25 + truth)
    >>> res = gsprep.fit_epsf(truth + rng.normal(size=truth.shape) * sigma, sigma, oversampling=2)
    >>> # FWHM as an image shows it: the Moffat's 3.0 px seen through the pixel is 3.13 px
    >>> round(float(res.psf.sum()), 6), bool(res.converged), abs(res.fwhm - 3.13) < 0.1
    (1.0, True, True)
    """
    if hasattr(stamps, "positions") and hasattr(stamps, "sigma"):
        st = stamps
        stamps, sigmas = st.data, st.sigma if sigmas is None else sigmas
        masks = st.mask if masks is None else masks
        centers = st.positions if centers is None else centers
        origins = st.origins if origins is None else origins
    if sigmas is None:
        msg = "sigmas is required (the per-pixel noise of the stamps)"
        raise ValueError(msg)
    k = check_integer("oversampling", oversampling, lower=1, upper=16)
    a_tv, a_sky = check_nonnegative("a_tv", a_tv), check_nonnegative("a_sky", a_sky)
    clip = check_positive("clip", clip)
    chi2_nsigma = check_positive("chi2_nsigma", chi2_nsigma)
    max_iter = check_integer("max_iter", max_iter, lower=1, upper=10000)
    n_cg = check_integer("n_cg", n_cg, lower=1, upper=100000)
    tol = check_positive("tol", tol)
    folds = check_integer("folds", folds, lower=2, upper=50)
    fixed = _parse_reg(regularization)
    degree = _check_degree(degree)
    if method not in ("gsprep", "photutils"):
        msg = f"method must be 'gsprep' or 'photutils', got {method!r}"
        raise ValueError(msg)
    d, w = prepare_arrays(stamps, sigmas, masks)
    size = d.shape[-1]
    psf_size = size if psf_size is None else check_integer("psf_size", psf_size, lower=3, upper=size, odd=True)
    bands = d[None] if d.ndim == 3 else d
    wb = w[None] if w.ndim == 3 else w
    nb, n = bands.shape[:2]
    cb = None
    if centers is not None:
        cb = np.asarray(centers, dtype=float)
        if np.iscomplexobj(centers) or cb.shape not in ((n, 2), (nb, n, 2)) or (d.ndim == 4 and cb.shape != (nb, n, 2)):
            want = f"({n}, 2)" if d.ndim == 3 else f"({nb}, {n}, 2)"
            msg = f"centers must have shape {want} (x, y per star), got {np.shape(centers)}"
            raise ValueError(msg)
        if not np.all(np.isfinite(cb)):
            msg = "centers must be finite"
            raise ValueError(msg)
        cb = cb.reshape(nb, n, 2)
    ob_xy = None
    if degree != 0:
        if origins is None:
            msg = ("degree != 0 needs each star's frame position: pass a gsprep.Stamps (extract_stamps) or "
                   "origins=(n, 2) frame pixel (x, y) of each stamp's pixel (0, 0)")
            raise ValueError(msg)
        ob_xy = np.asarray(origins, dtype=float)
        if ob_xy.shape not in ((n, 2), (nb, n, 2)) or not np.all(np.isfinite(ob_xy)):
            msg = f"origins must be finite with shape ({n}, 2) or ({nb}, {n}, 2), got {np.shape(origins)}"
            raise ValueError(msg)
        ob_xy = np.broadcast_to(ob_xy.reshape(-1, n, 2), (nb, n, 2))
    if method == "photutils":
        if d.ndim == 4:
            msg = "method='photutils' fits one band at a time: pass (n, size, size) stamps"
            raise ValueError(msg)
        from .photutils_bridge import photutils_epsf

        return photutils_epsf(d, w, k, psf_size, None if cb is None else cb[0])

    # 1. numpy start, per band
    starts = [band_start(bands[b], wb[b], None if cb is None else cb[b], k, psf_size, clip if robust else None)
              for b in range(nb)]
    nvalid = min(int(s[5].sum()) for s in starts)
    if nvalid == 1:
        warnings.warn("fit_epsf: a single star constrains the PSF poorly (its noise is the PSF's noise); "
                      "use several stars when you can", stacklevel=2)
    n_folds = folds if (fixed is None and nvalid >= 2 * folds) else 1
    if fixed is None and n_folds == 1 and nvalid > 1:
        warnings.warn(f"fit_epsf: {nvalid} usable stars are too few to cross-validate the regularisation "
                      f"({2 * folds} needed); using ('profile', 0.1)", stacklevel=2)
    fixed = (0.0, 0.1) if fixed is None else fixed
    _check_stamps_size(starts[0][1], k, size)

    # 2-4. one compiled fit (padded star count)
    dt = compute_dtype()
    n_fit = bucket(n)
    kk = k * psf_size
    packed = []
    for b, (xy0, psf0, flux0, sky0, wt, valid) in enumerate(starts):
        xy, fl, sk, ww, dd = pad_stars((xy0, flux0, sky0, wt, bands[b]), n_fit)
        fold = assign_folds(np.concatenate([valid, np.zeros(n_fit - n, bool)]), n_folds)
        packed.append((FitState(np.zeros(4), np.zeros((kk, kk)), xy, fl, sk, ww), psf0, dd, fold))
    cast = partial(jax.tree_util.tree_map, lambda v: jnp.asarray(v, dt) if np.asarray(v).dtype.kind == "f" else jnp.asarray(v))
    sx = Static(size, k, psf_size, n_cg)
    opts = dict(sx=sx, robust=bool(robust), n_folds=n_folds, max_iter=max_iter, bands=d.ndim == 4)
    scalars = [jnp.asarray(v, dt) for v in (a_tv, a_sky, clip, chi2_nsigma, tol)]
    if d.ndim == 3:
        stv, psf0, dd, fold = cast(packed[0])
    else:
        stv, psf0, dd, fold = cast(jax.tree_util.tree_map(lambda *x: np.stack(x), *packed))
    ob = jax.tree_util.tree_map(np.asarray, _fit_compiled(stv, psf0, dd, fold, fixed, *scalars, **opts))
    out = [ob] if d.ndim == 3 else [jax.tree_util.tree_map(lambda x, b=b: x[b], ob) for b in range(nb)]

    # 4b. the PSF across the frame (degree != 0), per band
    spatials = [None] * nb
    if degree != 0:
        for b, o in enumerate(out):
            spatials[b] = _spatial_band(o, packed[b][2], packed[b][3], ob_xy[b], n, degree, sx, n_folds, dt,
                                        band=b if d.ndim == 4 else None, chi2_nsigma=chi2_nsigma if robust else None)

    # 5. report, per band
    results = [_band_report(o, bands[b], wb[b], starts[b][5], k, clip if robust else None) for b, o in enumerate(out)]
    for r, sp in zip(results, spatials, strict=True):
        r["degree"] = 0 if sp is None else int(sp["degree"])
        r["spatial"] = None if sp is None or sp["degree"] == 0 else {
            **{key: sp[key] for key in ("degree", "planes", "offset", "scale", "hull", "scores")},
            "stars_xy": sp["frame_xy"][:n], "heldout": None if sp["heldout"] is None else sp["heldout"][:n],
            "penalty": sp.get("penalty")}
        if sp is not None and sp["degree"] > 0 and np.isfinite(sp.get("heldout_chi2", np.nan)):
            r["heldout_chi2"] = sp["heldout_chi2"]
    for b, r in enumerate(results):
        if warn and not r["converged"]:
            where = f" (band {b})" if d.ndim == 4 else ""
            warnings.warn(f"fit_epsf{where}: the PSF fit did not converge in {max_iter} steps (last PSF change "
                          f"{r['_dpsf']:.1e} of its peak, tol {tol:g}); the PSF may be inaccurate: check its "
                          "residuals or raise max_iter", PSFConvergenceWarning, stacklevel=2)
    for r in results:
        r.pop("_dpsf")
    if d.ndim == 3:
        return EPSFResult(oversampling=k, **results[0])
    spatial = _stack_spatial([r.pop("spatial") for r in results], [r["psf"] for r in results])
    # bands stop after different numbers of steps: their histories are padded with NaN
    longest = max(len(r["loss_history"]) for r in results)
    for r in results:
        r["loss_history"] = np.pad(r["loss_history"], (0, longest - len(r["loss_history"])), constant_values=np.nan)
    stack = {key: np.stack([r[key] for r in results]) for key in results[0]}
    return EPSFResult(oversampling=k, spatial=spatial, **stack)


def _check_degree(degree):
    if isinstance(degree, str):
        if degree != "auto":
            msg = f"degree must be an integer 0-{AUTO_MAX} or 'auto', got {degree!r}"
            raise ValueError(msg)
        return degree
    return check_integer("degree", degree, lower=0, upper=AUTO_MAX)


def _spatial_band(o, dd, fold, origins, n, degree, sx, n_folds, dt, band=None, chi2_nsigma=None):
    """Fit one band's spatial model from its constant fit ``o`` (updated in place); the spatial dict or None."""
    st = o["st"]
    w = np.asarray(st.w)
    n_good = int((w[:n].reshape(n, -1).sum(1) > 0).sum())
    where = "" if band is None else f" (band {band})"
    if degree != "auto":
        cap = max_degree(n_good, cap=degree)
        if cap < degree:
            need = n_terms(degree) * STARS_PER_TERM
            warnings.warn(f"fit_epsf{where}: {n_good} usable stars cannot support a degree-{degree} PSF variation "
                          f"({need} needed); using degree {cap}", stacklevel=3)
            degree = cap
        if degree == 0:
            return None
    n_fit = w.shape[0]
    frame = np.zeros((n_fit, 2))
    frame[:n] = origins + np.asarray(st.xy, float)[:n]
    cast = partial(jnp.asarray, dtype=dt)
    sp = spatial_fit(cast(o["psf"]), cast(st.theta), cast(st.xy), cast(st.flux), cast(st.sky), cast(w), cast(dd), frame, fold,
                     float(o["lam"]), degree, sx, n_folds=n_folds, chi2_nsigma=chi2_nsigma)
    if sp is None or sp["degree"] == 0:
        return sp
    o["st"] = FitState(st.theta, st.resid, sp["xy"], sp["flux"], sp["sky"], jnp.asarray(sp["w"], dt))
    o["flagged"] = np.asarray(o["flagged"]) | sp["flagged"]
    sp["frame_xy"] = origins + np.asarray(sp["xy"], float)[:n]
    p = sp["planes"][0]
    o["psf"] = p / p.sum()
    o["model"] = sp["model"]
    return sp


def _stack_spatial(sps, psfs):
    """One spatial dict for a band-stacked result (planes padded with zero planes to the highest degree)."""
    if all(sp is None for sp in sps):
        return None
    deg = max(0 if sp is None else sp["degree"] for sp in sps)
    t = n_terms(deg)
    kk = psfs[0].shape[-1]
    planes = np.zeros((len(sps), t, kk, kk))
    offset, scale, hull, degs = np.zeros((len(sps), 2)), np.ones((len(sps), 2)), [], []
    for b, sp in enumerate(sps):
        if sp is None:  # this band's PSF is constant
            planes[b, 0] = psfs[b]
            hull.append(None)
            degs.append(0)
            continue
        planes[b, : len(sp["planes"])] = sp["planes"]
        offset[b], scale[b] = sp["offset"], sp["scale"]
        hull.append(sp["hull"])
        degs.append(sp["degree"])
    return {"degree": np.array(degs), "planes": planes, "offset": offset, "scale": scale, "hull": hull,
            **{key: [None if sp is None else sp[key] for sp in sps] for key in ("scores", "stars_xy", "heldout")}}


def _band_report(o, d, w, valid, k, clip):
    """Numpy results of one band: cut to its own stars, every star's reduced chi-square and flags."""
    n = d.shape[0]
    st = o["st"]
    xy, flux, sky = (np.asarray(v, float)[:n] for v in (st.xy, st.flux, st.sky))
    w_fit = np.asarray(st.w, float)[:n]
    flagged, many = np.asarray(o["flagged"])[:n], np.asarray(o["many"])[:n]
    nonpos = flagged & valid & ~(flux > 0)
    flags = np.where(flagged & ~nonpos, 1, 0) | np.where(nonpos, 8, 0) | np.where(valid, 0, 2) | np.where(many, 4, 0)
    model = np.asarray(o["model"], float)[:n]
    # reduced chi-square of every star (flagged ones too) on its own unclipped pixels
    w_eval = np.where((flags & 9)[:, None, None] > 0, np.where(valid[:, None, None], w, 0.0), w_fit)
    if clip is not None:
        w_eval = np.where(np.abs(d - model) * np.sqrt(w_eval) > clip, 0.0, w_eval)
    res2 = np.where(w_eval > 0, (d - model) ** 2 * w_eval, 0.0).reshape(n, -1).sum(1)
    dof = (w_eval > 0).reshape(n, -1).sum(1) - 4
    chi2 = np.where(dof > 0, res2 / np.maximum(dof, 1), np.nan)
    p = np.asarray(o["psf"], float)
    shape = psf_shape(p, k)
    n_iter = int(o["n_iter"])
    hist = np.asarray(o["hist"], float)[:n_iter]
    gamma = float(o["gamma"])
    return dict(psf=p, centers=xy, fluxes=flux, sky=sky, chi2=chi2, loss_history=hist,
                flags=flags.astype(np.int32), converged=bool(o["converged"]), n_iter=n_iter,
                heldout_chi2=float(o["held_chi2"]), residual_flux=float(o["held_rff"]), fwhm=shape["fwhm"],
                ellipticity=shape["ellipticity"], e1=shape["e1"], e2=shape["e2"],
                reg_kind=KINDS.get(gamma, str(gamma)), reg_strength=float(o["lam"]),
                cv_scores=np.asarray(o["cv"], float), _dpsf=float(o["dpsf"]))


@partial(jax.jit, static_argnames=("sx", "n_gn"))
def _fit_stars_core(st, d, sx, n_gn):
    return star_step(st, d, sx, 0.0, n_gn)


def _fixed_psf_state(psf_arr, k, psf_size, xy, flux, sky, w, dt):
    from .model import moffat_fine

    theta = jnp.asarray([np.log(2.0 * k), np.log(2.0), 0.0, 0.0], dt)
    p = np.asarray(psf_arr, float)
    resid = jnp.asarray(p / p.sum(), dt) - moffat_fine(theta, k, psf_size)
    return FitState(theta, resid, jnp.asarray(xy, dt), jnp.asarray(flux, dt), jnp.asarray(sky, dt), jnp.asarray(w, dt))


def fit_stars(psf_arr, stamps, sigmas, masks=None, *, oversampling=1, centers=None, n_gn=8):
    """Fit every star's centre, flux and sky with a fixed PSF (gsprep convention).

    Returns ``(centers, fluxes, sky)`` (native px, data units); the
    reference ("true PSF") fit of the benchmarks, and photometry with a
    built PSF.
    """
    d, w = prepare_arrays(stamps, sigmas, masks)
    if d.ndim != 3:
        msg = f"fit_stars takes (n, size, size) stamps, got shape {d.shape}"
        raise ValueError(msg)
    n, size, _ = d.shape
    k = check_integer("oversampling", oversampling, lower=1, upper=16)
    psf_size = np.shape(psf_arr)[-1] // k
    xy0 = centroids(d, w, size) if centers is None else np.asarray(centers, float)
    _, flux0, sky0 = initial(d, w, xy0, k, psf_size, size)
    dt = compute_dtype()
    st = _fixed_psf_state(psf_arr, k, psf_size, xy0, flux0, sky0, w, dt)
    st = _fit_stars_core(st, jnp.asarray(d, dt), Static(size, k, psf_size, 1), int(n_gn))
    return np.asarray(st.xy, float), np.asarray(st.flux, float), np.asarray(st.sky, float)


@partial(jax.jit, static_argnames=("sx", "n_steps"))
def _oracle_core(st, d, reg, sx, n_steps):
    for _ in range(n_steps):
        st = gn_step(st, d, reg, jnp.asarray(0.0, d.dtype), sx, fix_stars=True)
        # one flux scale for all stars: the true fluxes include light beyond the PSF grid
        m = models(psf(st, sx), st.xy, st.flux, jnp.zeros_like(st.sky), sx.size, sx.k, sx.psf_size)
        y = d - st.sky[:, None, None]
        c = jnp.sum(st.w * y * m) / jnp.sum(st.w * m * m)
        st = FitState(st.theta, st.resid, st.xy, st.flux * c, st.sky, st.w)
    return psf(st, sx)


def oracle_psf(stamps, sigmas, masks, centers, fluxes, sky, *, oversampling, strength=1e-4, n_cg=400):
    """The noise limit of a PSF from these stars: the least-squares PSF with the TRUE centres, fluxes and skies.

    An optimally weighted stack (every pixel weighted by ``1/sigma^2``) on
    gsprep's fine grid, with only a vanishing curvature penalty
    (``strength``) to fix sub-pixel frequencies no star samples, and one
    flux scale shared by all stars (the light the PSF grid does not hold).
    For benchmarks: its error against the truth is what noise alone leaves.
    """
    d, w = prepare_arrays(stamps, sigmas, masks)
    n, size, _ = d.shape
    k = int(oversampling)
    dt = compute_dtype()
    kk = k * size
    st = FitState(jnp.asarray([np.log(2.0 * k), np.log(2.0), 0.0, 0.0], dt), jnp.zeros((kk, kk), dt),
                  jnp.asarray(centers, dt), jnp.asarray(fluxes, dt), jnp.asarray(sky, dt), jnp.asarray(w, dt))
    z = jnp.asarray(0.0, dt)
    reg = Reg(jnp.asarray(strength, dt), jnp.asarray(1.0, dt), z, z, jnp.asarray(0.0, dt))
    return np.asarray(_oracle_core(st, jnp.asarray(d, dt), reg, Static(size, k, size, n_cg), 4), float)

"""Choosing the regularisation from the data, and the quality report: held-out stars.

The stars are split into folds.  For every candidate regularisation (kind and
strength) and every fold, the PSF is refitted without that fold's stars (one
Gauss-Newton step from the fit on all stars: the PSF is linear in its
pixels, so one step solves it), and each held-out star is then fitted with
only its centre, flux and sky free.  The candidate whose PSFs predict the
held-out stars best (lowest total chi-square) is used; its held-out reduced
chi-square and residual flux fraction (medians over the held-out stars) are
the honest quality numbers of the PSF, since no star was scored by a PSF it
helped to make.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .model import models
from .solver import FitState, Reg, gn_step, psf, star_step

#: candidate regularisations: (gamma, lam). gamma 0: curvature of the departure from the fitted
#: Moffat ("profile"); gamma 1: curvature of the PSF itself ("smooth"); lam in units of the data's
#: mean information per fine pixel
KINDS = {0.0: "profile", 1.0: "smooth"}
GRID = ((1.0, 1e-3), (1.0, 1e-2), (1.0, 1e-1), (0.0, 1e-2), (0.0, 1e-1), (0.0, 1.0))


def assign_folds(valid, n_folds, seed=0):
    """Fold of every star (``-1`` for stars without pixels), balanced and reproducible."""
    fold = np.full(valid.shape, -1, np.int32)
    idx = np.flatnonzero(valid)
    perm = np.random.default_rng(seed).permutation(idx.size)
    fold[idx[perm]] = np.arange(idx.size) % n_folds
    return fold


def heldout_scores(st, d, fold, folds, grid, a_tv, a_sky, sx, n_steps=1, n_cg=15, fix_stars=True):
    """Every star's held-out reduced chi-square and residual flux, for every candidate.

    Each star is held out in one fold and scored there.  Returns arrays
    ``(n_candidates, n)``: ``red`` (the star's reduced chi-square with a PSF
    made without it), ``rff`` (``sqrt(max(sum(r^2 - sigma^2), 0)) / F``) and
    ``scored`` (False for stars without pixels).

    Each fold's training and held-out stars are gathered into their own
    (padded) arrays, so the PSF solve touches only the training stars and the
    held-out fit only the held-out ones.
    """
    dt = d.dtype
    gam, lam = grid[:, 0], grid[:, 1]
    sx_cv = sx._replace(n_cg=n_cg)
    n = fold.shape[0]
    n_folds = folds.shape[0]
    n_test = -(-n // n_folds)  # a fold holds at most ceil(n / folds) stars
    n_train = n - n // n_folds  # and leaves at most n - floor(n / folds) with pixels
    # one padding star without pixels at index n
    pad = FitState(st.theta, st.resid, jnp.concatenate([st.xy, st.xy[:1]]), jnp.concatenate([st.flux, st.flux[:1]]),
                   jnp.concatenate([st.sky, st.sky[:1]]), jnp.concatenate([st.w, jnp.zeros_like(st.w[:1])]))
    dpad = jnp.concatenate([d, jnp.zeros_like(d[:1])])

    def gather(idx):
        return FitState(pad.theta, pad.resid, pad.xy[idx], pad.flux[idx], pad.sky[idx], pad.w[idx]), dpad[idx]

    def one_fold(f):
        (train_idx,) = jnp.nonzero((fold != f) & (fold >= 0), size=n_train, fill_value=n)
        (test_idx,) = jnp.nonzero(fold == f, size=n_test, fill_value=n)
        train, d_train = gather(train_idx)
        test0, d_test = gather(test_idx)

        def one(g, lm):
            reg = Reg(lm, g, a_tv, a_sky)
            # the PSF refitted on the training stars (their centres, fluxes and skies held: the PSF is
            # linear in its pixels, so one step from the fit on all stars solves it)
            trained = jax.lax.fori_loop(0, n_steps, lambda i, s: gn_step(s, d_train, reg, jnp.asarray(1e-3, dt), sx_cv,
                                                                         fix_stars=fix_stars), train)
            # held-out stars start from their fit on all stars, then only their own parameters move
            test = eqx.tree_at(lambda s: (s.theta, s.resid), test0, (trained.theta, trained.resid))
            test = star_step(test, d_test, sx, a_sky, n_gn=4)
            m = models(psf(test, sx), test.xy, test.flux, test.sky, sx.size, sx.k, sx.psf_size)
            w = test.w
            r2 = jnp.where(w > 0, (d_test - m) ** 2 * w, 0.0)
            npix = jnp.sum(w > 0, axis=(1, 2))
            scored = (test_idx < n) & (npix > 4)
            red = jnp.sum(r2, axis=(1, 2)) / jnp.maximum(npix - 4, 1).astype(dt)
            excess = jnp.sum(jnp.where(w > 0, r2 - 1.0, 0.0) / jnp.where(w > 0, w, 1.0), axis=(1, 2))
            rff = jnp.sqrt(jnp.maximum(excess, 0.0)) / jnp.maximum(jnp.abs(test.flux), 1e-30)
            return jnp.where(scored, red, 0.0), jnp.where(scored, rff, 0.0), scored

        red, rff, scored = jax.vmap(one)(gam, lam)  # (n_candidates, n_test)

        def scatter(v):  # back to every star's slot (the padding star's slot n dropped)
            return jnp.zeros((gam.shape[0], n + 1), v.dtype).at[:, test_idx].set(v)[:, :n]

        return scatter(red), scatter(rff), scatter(scored)

    red, rff, scored = jax.vmap(one_fold)(folds)
    # every star is scored in its own fold only: sum the folds out
    return red.sum(0), rff.sum(0), scored.any(0)


def robust_score(red, scored):
    """Each candidate's mean held-out reduced chi-square, every star's capped at 5 x the median.

    The cap keeps one star the PSF cannot describe (an unflagged blend, a
    saturated core) from choosing the regularisation for all the others.
    """
    vals = jnp.where(scored, red, jnp.nan)
    cap = 5.0 * jnp.nanmedian(vals, axis=-1, keepdims=True)
    return jnp.nanmean(jnp.minimum(vals, cap), axis=-1)


def choose(score):
    """Index of the candidate with the lowest (robust) held-out score."""
    return jnp.argmin(jnp.where(jnp.isfinite(score), score, jnp.inf))

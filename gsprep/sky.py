"""Sky background: source masks, polynomial and median sky fits.

``fit_sky`` is a weighted linear least-squares fit of a 2-D Legendre
polynomial (total degree ``order``) on coordinates normalised to [-1, 1],
with a few rounds of sigma-clipping of the residuals so faint undetected
sources do not bias it.  It runs in JAX, jit-compiled, and takes a stack of
bands ``(B, ny, nx)`` in one call.  The basis is separable, so the normal
equations are built from two small matrix products over the image rows and
columns instead of a ``(npix, nterms)`` design matrix: a 4096 x 4096 frame
costs a few passes over the pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from astropy.stats import sigma_clipped_stats

from ._checks import as_mask, check_choice, check_integer, check_positive
from .detection import TwoPass, detect, detect_twopass, grow_segments, grow_sources

__all__ = ["SkyFit", "SkyResidualWarning", "SkyStepWarning", "SkySteps", "find_sky_steps", "fit_sky", "legendre_terms",
           "pixel_noise", "sky_mask", "sky_residual_check"]


@dataclass(frozen=True)
class SkyFit:
    """Result of :func:`fit_sky`.

    Attributes
    ----------
    background : ndarray
        Sky model, same shape as the data (``(ny, nx)`` or ``(B, ny, nx)``),
        in the data's units.
    coeffs : ndarray
        Legendre coefficients, one per term of :func:`legendre_terms(order)`
        (``(nterms,)`` or ``(B, nterms)``); for ``method="median"`` the
        constant.
    order : int
        Total polynomial degree (0 = constant).
    rms : float or ndarray
        Standard deviation of the data minus sky over the pixels kept after
        clipping (per band for a stack).
    method : str
        ``"poly"``, ``"median"`` or ``"mesh"`` (``coeffs`` empty); with
        ``regions``, ``"poly/regions"`` etc.
    regions : tuple or None
        The boxes ``(x0, x1, y0, y1)`` of a per-region sky (None: one sky).
    """

    background: np.ndarray
    coeffs: np.ndarray
    order: int
    rms: np.ndarray
    method: str = "poly"
    regions: tuple | None = None


def legendre_terms(order):
    """Exponent pairs ``(i, j)`` of the basis ``P_i(x) P_j(y)`` with ``i + j <= order``."""
    return [(i, j) for j in range(order + 1) for i in range(order + 1) if i + j <= order]


def sky_mask(data, *, fwhm, nsigma=3.0, npixels=5, max_grow=100, addgrow=0, magnification=3.0,
             mask=None, detection="twopass"):
    """Pixels to keep out of the sky fit: detected sources grown by their size.

    Sources are detected on the frame smoothed by a Gaussian of ``fwhm``
    pixels at ``nsigma`` times the noise with at least ``npixels`` connected
    pixels (:func:`gsprep.detect`), then each is covered by an ellipse
    ``magnification`` times its own size, grown by at most ``max_grow`` pixels
    beyond it, plus ``addgrow`` pixels (:func:`gsprep.detection.grow_sources`):
    generous, as the sky fit needs the far halos of bright sources hidden.
    With ``detection="twopass"`` (the default) the faint and compact sources
    of the masks' two-pass detection (:func:`gsprep.detection.detect_twopass`,
    faint pass at 3 times the smoothed frame's noise, peaks of 4) are added,
    each footprint grown by a quarter of its radius plus one ``fwhm``
    (:func:`gsprep.detection.grow_segments`); ``"single"`` is the first part
    alone.

    Returns
    -------
    ndarray of bool
        True = keep out of the sky fit (source, or non-finite / masked pixel).
    """
    if detection not in ("twopass", "single"):
        msg = f"detection must be 'twopass' or 'single', got {detection!r}"
        raise ValueError(msg)
    seg = detect(data, fwhm=fwhm, nsigma=nsigma, npixels=npixels, mask=mask)
    grown, _ = grow_sources(seg.labels, seg.table, magnification=magnification,
                            max_grow=max_grow, addgrow=addgrow)
    if detection == "twopass":
        two = detect_twopass(data, fwhm=fwhm, passes=TwoPass(hot_nsigma=3.0, hot_peak=4.0), mask=mask)
        faint, _ = grow_segments(two.labels, two.table, magnification=1.25, max_grow=max_grow, addgrow=addgrow,
                                 min_grow=fwhm)
        grown = grown | faint
    arr = np.asarray(data, dtype=float)
    return grown | ~np.isfinite(arr) | as_mask("mask", mask, arr.shape)


def _legendre_1d(n, order):
    """(n, order+1) Legendre polynomials on n points spread over [-1, 1]."""
    t = jnp.linspace(-1.0, 1.0, n) if n > 1 else jnp.zeros(1)
    cols = [jnp.ones_like(t), t]
    for k in range(1, order):
        cols.append(((2 * k + 1) * t * cols[k] - k * cols[k - 1]) / (k + 1))
    return jnp.stack(cols[: order + 1], axis=1)


@partial(jax.jit, static_argnames=("order", "nclip"))
def _fit_one(data, weight, order, nclip, clip):
    ny, nx = data.shape
    lx = _legendre_1d(nx, order)  # (nx, d+1)
    ly = _legendre_1d(ny, order)  # (ny, d+1)
    terms = legendre_terms(order)
    ii = jnp.array([t[0] for t in terms])
    jj = jnp.array([t[1] for t in terms])
    d1 = order + 1
    qx = (lx[:, :, None] * lx[:, None, :]).reshape(nx, d1 * d1)
    w0 = weight
    ref = jnp.sum(w0 * data) / jnp.maximum(jnp.sum(w0), 1.0)
    z = jnp.where(w0 > 0, data - ref, 0.0)

    def solve(w):
        t = (w @ qx).reshape(ny, d1, d1)  # sum_x w Lx_i Lx_k, per row
        g = jnp.einsum("yik,yj,yl->ijkl", t, ly, ly)
        a = g[ii, jj][:, ii, jj]
        rhs = jnp.einsum("yi,yj->ij", (w * z) @ lx, ly)[ii, jj]
        scale = jnp.sqrt(jnp.clip(jnp.diag(a), 1e-30))
        an = a / scale[:, None] / scale[None, :]
        c = jnp.linalg.solve(an + 1e-10 * jnp.eye(len(terms)), rhs / scale) / scale
        cmat = jnp.zeros((d1, d1)).at[ii, jj].set(c)
        model = ly @ cmat.T @ lx.T
        return c, model

    def rms_of(w, model):
        r = (z - model) * (w > 0)
        n = jnp.maximum(jnp.sum(w > 0), 2)
        mean = jnp.sum(r) / n
        return jnp.sqrt(jnp.sum(jnp.where(w > 0, (r - mean) ** 2, 0.0)) / (n - 1))

    w = w0
    c, model = solve(w)
    for _ in range(nclip):
        s = rms_of(w, model)
        w = jnp.where(jnp.abs(z - model) <= clip * s, w0, 0.0)
        c, model = solve(w)
    s = rms_of(w, model)
    c = c.at[0].add(ref)
    return c, model + ref, s


@partial(jax.jit, static_argnames=("order", "nclip"))
def _fit_stack(data, good, order, nclip, clip):
    """Every band in one compiled call; excluded pixels are zeroed on the device (fewer host copies).

    ``lax.map`` rather than ``vmap``: on the CPU the batched matrix products of a ``vmap`` ran
    about 3x slower per band than one band at a time."""
    weight = good.astype(data.dtype)
    data = jnp.where(good, data, 0.0)
    return jax.lax.map(lambda dw: _fit_one(dw[0], dw[1], order, nclip, clip), (data, weight))


class SkyResidualWarning(UserWarning):
    """The sky model leaves structure far above the pixel-to-pixel noise."""


def pixel_noise(resid, mask=None):
    """Pixel-to-pixel noise of an image (data units), from neighbouring pixels' second differences.

    The robust rms of ``r[i+1] - 2 r[i] + r[i-1]`` (along both axes) over
    sqrt(6): a gradient cancels and curvature on scales of many pixels
    hardly counts, so a sky the model did not follow does not enter it.  Noise correlated between
    neighbours (drizzled frames) reads lower than the per-pixel noise.
    """
    r = np.asarray(resid, float)
    good = np.isfinite(r) if mask is None else np.isfinite(r) & ~np.asarray(mask, bool)
    # second differences along each axis: a gradient cancels, white noise gives variance 6 sigma^2
    d0 = r[2:] - 2 * r[1:-1] + r[:-2]
    d1 = r[:, 2:] - 2 * r[:, 1:-1] + r[:, :-2]
    d = np.concatenate([d0[good[2:] & good[1:-1] & good[:-2]], d1[good[:, 2:] & good[:, 1:-1] & good[:, :-2]]])
    if d.size < 10:
        return float("nan")
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(6.0))


def sky_residual_check(data, sky, mask=None, *, limit=2.5, label="frame"):
    """Compare the sky fit's residual rms with the pixel-to-pixel noise; warn when it is ``limit`` x larger.

    Returns ``(residual_rms, pixel_noise)`` (data units).  A ratio well
    above 1 means the sky model does not follow the frame (readout halves,
    scattered light, a polynomial too stiff): the residual is structure, and
    a sigma image built from ``sky.rms`` is too large by that ratio.
    """
    r = np.asarray(data, float) - np.asarray(sky.background, float)
    good = np.isfinite(r) if mask is None else np.isfinite(r) & ~np.asarray(mask, bool)
    _, _, rms = sigma_clipped_stats(r[good], sigma=3.0, maxiters=3)
    pp = pixel_noise(r, None if mask is None else mask)
    if np.isfinite(pp) and pp > 0 and rms > limit * pp:
        how = ("a sky per readout region (sky_regions) if the frame has a step, a mesh sky (sky_method = "
               "\"mesh\", --sky-method mesh) or a higher sky_order")
        warnings.warn(f"{label}: the sky residual rms {rms:.3g} is {rms / pp:.1f}x the pixel-to-pixel noise "
                      f"{pp:.3g}: the {sky.method} sky does not follow this frame (the sigma image is that much "
                      f"too large); try {how}", SkyResidualWarning, stacklevel=2)
    return float(rms), pp


def _fit_regions(data, mask, order, regions, **kw):
    """One sky per region (boxes ``(x0, x1, y0, y1)``, 0-based, end excluded) of a 2-D frame."""
    arr = np.asarray(data)
    if arr.ndim != 2:
        msg = "regions: a per-region sky takes one 2-D frame, not a stack"
        raise ValueError(msg)
    ny, nx = arr.shape
    m = np.zeros(arr.shape, bool) if mask is None else np.asarray(mask, bool)
    bg = np.full(arr.shape, np.nan)
    covered = np.zeros(arr.shape, bool)
    fits = []
    for i, box in enumerate(regions):
        try:
            x0, x1, y0, y1 = (int(v) for v in box)
        except (TypeError, ValueError):
            msg = f"regions[{i}] must be 4 integers (x0, x1, y0, y1), got {box!r}"
            raise ValueError(msg) from None
        if not (0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny):
            msg = f"regions[{i}] = {box!r} is not a box inside the {nx} x {ny} frame (x0 < x1 <= nx, y0 < y1 <= ny)"
            raise ValueError(msg)
        f = fit_sky(arr[y0:y1, x0:x1], m[y0:y1, x0:x1], order, **kw)
        bg[y0:y1, x0:x1] = f.background
        covered[y0:y1, x0:x1] = True
        fits.append(f)
    if not covered.all():
        msg = f"regions leave {int((~covered).sum())} pixels of the frame without a sky; cover the whole frame"
        raise ValueError(msg)
    r = arr - bg
    good = np.isfinite(r) & ~m
    _, _, rms = sigma_clipped_stats(r[good], sigma=kw.get("clip_sigma", 3.0), maxiters=3)
    coeffs = np.concatenate([np.atleast_1d(f.coeffs) for f in fits])
    boxes = tuple(tuple(int(v) for v in box) for box in regions)
    return SkyFit(bg, coeffs, fits[0].order, float(rms), fits[0].method + "/regions", boxes)


class SkyStepWarning(UserWarning):
    """Where ``regions="auto"`` split the frame into sky regions, or that it found no step (one line)."""


@dataclass(frozen=True)
class SkySteps:
    """Result of :func:`find_sky_steps`.

    ``x``, ``y``: the first column / row of the second region (None: no
    step along that axis); ``jump_x``, ``jump_y``: the step's size (data
    units) and ``signif_x``, ``signif_y`` its significance (jump over its
    noise) at the best candidate; ``boxes``: the regions ``(x0, x1, y0,
    y1)`` (0-based, end excluded) covering the frame, one box when no step.
    """

    x: int | None
    y: int | None
    jump_x: float
    jump_y: float
    signif_x: float
    signif_y: float
    boxes: tuple

    def describe(self):
        """One line: where the frame was split, or that no step was found."""
        parts = []
        for axis, at, jump, sig, what in (("x", self.x, self.jump_x, self.signif_x, "column"),
                                          ("y", self.y, self.jump_y, self.signif_y, "row")):
            if at is None:
                parts.append(f"no step along {axis} (largest {sig:.1f} sigma)")
            else:
                parts.append(f"split at {axis} = {at} (a step of {jump:+.3g} between {what}s {at - 1} and {at}, "
                             f"{sig:.0f} sigma)")
        n = len(self.boxes)
        head = "no step found, one sky for the frame" if n == 1 else f"split into {n} regions"
        return f"{head}: " + "; ".join(parts)


def _axis_step(parts, edge, floor, nsigma):
    """Best split along the last axis of the 2-D ``parts`` (frame parts; NaN = excluded from the fit).

    For each pair of neighbouring columns, the median over the rows of their difference (the same rows
    on both sides, so any structure along the rows cancels); a gradient makes it a smooth baseline (a
    running median), a step a spike above it.  Rows a source mask leaves are used; a column pair that
    keeps fewer than a quarter of them (a mask grown over the step) uses every finite, nonzero row
    whose two pixels are masked alike (the median shrugs off the sources; the edge of a no-data region is
    left out).  Returns ``(split, jump, significance)``; ``split`` None below ``nsigma``.
    """
    from scipy.ndimage import median_filter

    spikes = []
    for arr, full in parts:
        nrows = arr.shape[0]
        d = arr[:, 1:] - arr[:, :-1]
        n_ok = np.sum(np.isfinite(d), axis=0)
        # fallback: every row where both pixels are masked alike (a source footprint over both, not the edge of
        # a no-data region, whose 0 would read as a step) and nonzero
        kept = np.isfinite(arr)
        alike = (kept[:, 1:] == kept[:, :-1]) & (full[:, 1:] != 0) & (full[:, :-1] != 0)
        dfull = np.where(alike, full[:, 1:] - full[:, :-1], np.nan)
        use = np.where((n_ok >= max(10, nrows // 4))[None, :], d, dfull)
        del d, dfull, alike
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column pair
            prof = np.nanmedian(use, axis=0)  # prof[k]: the step before column k + 1
            n_used = np.sum(np.isfinite(use), axis=0)
        ok = np.isfinite(prof) & (n_used >= 5)
        if ok.sum() < 4 * edge:
            continue
        filled = np.where(ok, prof, np.nanmedian(prof[ok]))
        foot = np.ones(2 * edge + 1, bool)
        foot[edge] = False
        base = median_filter(filled, footprint=foot, mode="nearest")
        resid = np.where(ok, filled - base, 0.0)
        r = resid[ok]
        scatter = 1.4826 * np.median(np.abs(r - np.median(r)))
        noise = np.maximum(scatter, 1.2533 * np.sqrt(2.0) * floor / np.sqrt(np.maximum(n_used, 1)))
        spikes.append((resid, noise))
    if not spikes:
        return None, 0.0, 0.0
    n = spikes[0][0].size + 1
    sig = np.max([np.abs(rs) / np.where(nz > 0, nz, np.inf) for rs, nz in spikes], axis=0)
    k = np.arange(n - 1) + 1  # the split (first column of the second region) of each pair
    sig = np.where((k >= edge) & (k <= n - edge), sig, 0.0)
    i = int(np.argmax(sig))
    jump = max((float(rs[i]) for rs, _ in spikes), key=abs)
    best = float(sig[i])
    return (int(k[i]) if best > nsigma else None), jump, best


def find_sky_steps(data, mask=None, *, nsigma=10.0, edge=None):
    """Find a step in the sky along x and along y (readout halves, amplifiers): at most one split per axis.

    Along x: for each pair of neighbouring columns, the median over the rows
    of their difference (pixels ``mask`` keeps out left out, unless that
    leaves under a quarter of the rows: then every finite, nonzero row
    whose two pixels are masked alike); a sky gradient makes these a
    smooth baseline (a running median over ``edge`` columns each side), a
    step a spike above it.  The largest spike is a split when it is over
    ``nsigma`` times its noise (the spikes' robust scatter, at least the
    pixel noise x sqrt(2) / sqrt(rows)); splits closer than ``edge``
    (default an eighth of the frame, 8 to 64 px) to the frame's edge are not
    considered.  Then the same along y, in each part the x split made.  Two
    splits give four quadrants.

    Returns
    -------
    SkySteps
    """
    arr = np.asarray(data, float)
    if arr.ndim != 2:
        msg = "regions=\"auto\": a per-region sky takes one 2-D frame, not a stack"
        raise ValueError(msg)
    ny, nx = arr.shape
    finite = np.where(np.isfinite(arr), arr, np.nan).astype(np.float32)  # float32: a large frame's memory
    m = ~np.isfinite(arr) if mask is None else ~np.isfinite(arr) | as_mask("mask", mask, arr.shape)
    work = np.where(m, np.nan, finite)
    floor = pixel_noise(arr, m)
    floor = 0.0 if not np.isfinite(floor) else floor

    def edge_of(n):
        return int(edge) if edge is not None else int(min(64, max(8, n // 8)))

    x = y = None
    jx = jy = sx = sy = 0.0
    if nx >= 4 * edge_of(nx):
        x, jx, sx = _axis_step([(work, finite)], edge_of(nx), floor, nsigma)
    if ny >= 4 * edge_of(ny):
        cuts = [slice(None)] if x is None else [slice(0, x), slice(x, nx)]
        y, jy, sy = _axis_step([(work[:, c].T, finite[:, c].T) for c in cuts], edge_of(ny), floor, nsigma)
    xs = [0, nx] if x is None else [0, x, nx]
    ys = [0, ny] if y is None else [0, y, ny]
    boxes = tuple((xs[i], xs[i + 1], ys[j], ys[j + 1]) for j in range(len(ys) - 1) for i in range(len(xs) - 1))
    return SkySteps(x, y, jx, jy, sx, sy, boxes)

def fit_sky(data, mask=None, order=3, *, method="poly", nclip=3, clip_sigma=3.0, box=64, regions=None,
            label="frame"):
    """Fit the sky of one frame or of a stack of bands.

    Parameters
    ----------
    data : array (ny, nx) or (B, ny, nx)
        Frame(s), any units; non-finite pixels get zero weight.
    mask : bool array, optional
        True = exclude (sources from :func:`sky_mask`, bad pixels); same shape
        as ``data``, or ``(ny, nx)`` shared by every band.
    order : int
        Total degree of the Legendre polynomial (0 = constant, 3 = cubic).
    method : {"poly", "median", "mesh"}
        ``"median"``: a constant, the sigma-clipped median of unmasked pixels.
        ``"mesh"``: photutils' ``Background2D``, sigma-clipped medians in
        ``box x box`` pixel boxes (3 x 3 median-filtered) interpolated over
        the frame: follows skies a polynomial cannot (readout halves,
        scattered light), at the price of eating into sources much larger
        than ``box``.
    nclip : int
        Rounds of ``clip_sigma``-sigma clipping of the residuals.
    clip_sigma : float
        Clipping threshold in units of the residual rms.
    box : int
        Mesh box size in pixels (``method="mesh"``).
    regions : list of (x0, x1, y0, y1), optional
        A separate sky (of ``method`` and ``order``) in each box (0-based
        pixels, end excluded; together they must cover the frame), e.g. the
        readout halves or amplifiers of a detector whose skies differ by a
        step.  ``coeffs`` then holds every region's coefficients in turn.
        ``"auto"``: the boxes are found from a step in the sky
        (:func:`find_sky_steps`: at most one split along x and one along y,
        two halves or four quadrants), said in one :class:`SkyStepWarning`
        line (``label``: the frame's name in it); no step: one sky.
    label : str
        The frame's name in the ``regions="auto"`` line.

    Returns
    -------
    SkyFit
        Fitting a stack gives the same result as fitting each band alone.
        A stack is one compiled call; on the CPU it runs about 2x slower than
        one call per band (``benchmarks/bench_bands.py``), so prefer a loop
        there and a stack on a GPU.

    Examples
    --------
    >>> from gsprep.simulate import demo_frame
    >>> frame, _ = demo_frame(fwhm=3.0, shape=(201, 201), n_stars=20)
    >>> m = sky_mask(frame, fwhm=3.0)
    >>> sky = fit_sky(frame, m, order=2)
    >>> clean = frame - sky.background
    >>> y, x = np.mgrid[:201, :201] / 201
    >>> truth = 20 + 3 * x - 2 * y + 2 * x**2         # the frame's sky (noise 0.3 per pixel)
    >>> bool(np.abs(sky.background - truth).max() < 0.1)
    True
    """
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        msg = f"data must be a 2-D image or a (B, ny, nx) stack, got shape {arr.shape}"
        raise ValueError(msg)
    if arr.dtype.kind not in "biuf":
        msg = f"data must be a real numeric array, got dtype {arr.dtype}"
        raise TypeError(msg)
    check_choice("method", method, ("poly", "median", "mesh"))
    box = check_integer("box", box, lower=4)
    if isinstance(regions, str):
        if regions != "auto":
            msg = f"regions must be a list of (x0, x1, y0, y1) boxes or \"auto\", got {regions!r}"
            raise ValueError(msg)
        steps = find_sky_steps(arr, mask)
        warnings.warn(f"{label}: sky_regions \"auto\": {steps.describe()}", SkyStepWarning, stacklevel=2)
        regions = steps.boxes if len(steps.boxes) > 1 else None
    if regions is not None:
        return _fit_regions(arr, mask, order, list(regions), method=method, nclip=nclip, clip_sigma=clip_sigma,
                            box=box)
    order = check_integer("order", order, lower=0, upper=12)
    nclip = check_integer("nclip", nclip, lower=0)
    clip = check_positive("clip_sigma", clip_sigma)
    stack = arr[None] if arr.ndim == 2 else arr
    if mask is None:
        m = np.zeros(stack.shape, dtype=bool)
    else:
        m = np.asarray(mask).astype(bool)
        if m.shape == stack.shape[-2:]:
            m = np.broadcast_to(m, stack.shape)
        elif m.shape != arr.shape:
            msg = f"mask must have shape {arr.shape} or {arr.shape[-2:]}, got {m.shape}"
            raise ValueError(msg)
        m = m.reshape(stack.shape)
    good = np.isfinite(stack) & ~m
    for b in range(stack.shape[0]):
        if good[b].sum() < max(len(legendre_terms(order)), 2):
            where = "data" if arr.ndim == 2 else f"band {b} of data"
            msg = f"{where}: too few unmasked finite pixels ({good[b].sum()}) to fit the sky"
            raise ValueError(msg)
    if method == "mesh":
        from photutils.background import Background2D, MedianBackground

        from astropy.stats import SigmaClip

        bgs, rms = [], []
        for b in range(stack.shape[0]):
            ny, nx = stack[b].shape
            bx = (min(box, ny), min(box, nx))
            b2 = Background2D(np.where(good[b], stack[b], np.nan), bx, filter_size=(3, 3), mask=~good[b],
                              sigma_clip=SigmaClip(sigma=clip, maxiters=max(nclip, 1)),
                              bkg_estimator=MedianBackground())
            bg_b = np.asarray(b2.background, float)
            _, _, std = sigma_clipped_stats((stack[b] - bg_b)[good[b]], sigma=clip, maxiters=max(nclip, 1))
            bgs.append(bg_b)
            rms.append(std)
        bg, rms = np.stack(bgs), np.array(rms)
        coeffs = np.zeros((stack.shape[0], 0))
        order_out = 0
    elif method == "median":
        vals, rms = [], []
        for b in range(stack.shape[0]):
            _, med, std = sigma_clipped_stats(stack[b][good[b]], sigma=clip, maxiters=max(nclip, 1))
            vals.append(med)
            rms.append(std)
        vals, rms = np.array(vals), np.array(rms)
        bg = np.broadcast_to(vals[:, None, None], stack.shape).copy()
        coeffs = vals[:, None]
        order_out = 0
    else:
        c, bg, rms = _fit_stack(np.asarray(stack, np.float32), good, order, nclip, clip)
        coeffs, bg, rms = (np.asarray(v, dtype=np.float64) for v in (c, bg, rms))
        order_out = order
    if arr.ndim == 2:
        return SkyFit(bg[0], coeffs[0], order_out, float(rms[0]), method)
    return SkyFit(bg, coeffs, order_out, rms, method)

"""Figures a person can open: each function returns a matplotlib Figure and can save a PNG.

Nothing here needs a display (the Agg canvas is used directly).  Every image
panel has a colorbar whose label ends with its unit in brackets (``[counts/s]``,
``[sigma]``, ``[fraction of flux per pixel]``); cutouts carry a scale bar in
arcsec and North/East arrows read from their WCS.
"""

from __future__ import annotations

import os
import warnings

import matplotlib
import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales
from matplotlib import colors
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "fig_cutout",
    "fig_funnel",
    "fig_psf",
    "fig_psf_field",
    "fig_psfs",
    "fig_sky",
    "fig_stars",
    "normimg",
    "north_east_angles",
    "quality_lines",
]

#: colorbar unit labels of the image units gsprep reads (``Image.unit``)
UNIT_LABELS = {"cR": "counts/s", "counts": "counts", None: "image units"}


def normimg(data, *, lo=1.0, hi=99.7, soft=3.0):
    """Display stretch (like GalfitS's ``normimg``): asinh between two percentiles, scaled to [0, 1]."""
    d = np.asarray(data, dtype=float)
    good = d[np.isfinite(d)]
    if good.size == 0:
        return np.zeros(d.shape)
    a, b = np.percentile(good, [lo, hi])
    if b <= a:
        b = a + 1.0
    z = np.clip((d - a) / (b - a), 0, 1)
    out = np.arcsinh(soft * z) / np.arcsinh(soft)
    return np.where(np.isfinite(d), out, 0.0)


def north_east_angles(wcs, x=None, y=None):
    """Directions of North and East on the pixel grid, as a figure with ``origin="lower"`` shows them.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        A WCS with celestial axes (rotated, flipped and skewed ones included).
    x, y : float, optional
        0-based pixel where the directions are measured (default: the
        middle of the image, or CRPIX when the WCS has no image shape).

    Returns
    -------
    north, east : float
        Angles in degrees, counter-clockwise from the +x axis (0 = right,
        90 = up), of the directions of increasing Dec (North) and
        increasing RA (East).  On a usual sky image North is 90 and East is
        180 (East to the left).

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> w = WCS(naxis=2)
    >>> w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.crval = [150.0, 2.0]
    >>> w.wcs.cdelt = [-1e-4, 1e-4]
    >>> [round(a) for a in north_east_angles(w)]
    [90, 180]
    """
    if wcs is None or not getattr(wcs, "has_celestial", False):
        msg = "wcs: a celestial WCS is needed for North/East directions"
        raise ValueError(msg)
    w = wcs.celestial
    if x is None or y is None:
        if w.pixel_shape is not None:
            x0, y0 = (np.asarray(w.pixel_shape, float) - 1) / 2
        else:
            x0, y0 = np.asarray(w.wcs.crpix, float) - 1
        x = x0 if x is None else x
        y = y0 if y is None else y
    lng, lat = w.wcs.lng, w.wcs.lat

    def sky(px, py):
        v = w.pixel_to_world_values(px, py)
        return float(v[lng]), float(v[lat])

    def pix(lon, la):
        v = [0.0, 0.0]
        v[lng], v[lat] = lon, la
        px, py = w.world_to_pixel_values(*v)
        return float(px), float(py)

    lon0, lat0 = sky(x, y)
    x0, y0 = pix(lon0, lat0)  # back through the WCS, so the small steps below are differences of like with like
    step = float(np.mean(np.abs(proj_plane_pixel_scales(w))))  # one pixel, degrees
    step = float(np.clip(step, 1e-7, 0.1)) if np.isfinite(step) and step > 0 else 1e-4
    sign = -1.0 if lat0 + step > 90.0 else 1.0  # at the pole, step south and turn the vector round
    xn, yn = pix(lon0, lat0 + sign * step)
    xe, ye = pix(lon0 + step / max(np.cos(np.radians(lat0)), 1e-6), lat0)
    north = np.degrees(np.arctan2(sign * (yn - y0), sign * (xn - x0)))
    east = np.degrees(np.arctan2(ye - y0, xe - x0))
    return float(north), float(east)


def _unit(unit):
    return UNIT_LABELS.get(unit, unit)


#: larger images are shown one pixel in k (display only; every pixel counts in the numbers)
DISPLAY_MAX = 1000


def _finite_sample(values, n=1_000_000):
    """The finite values, one in k when there are more than ``n`` (for percentiles and the MAD)."""
    v = np.asarray(values, float).ravel()
    v = v[:: max(1, v.size // n)]
    return v[np.isfinite(v)]


def _shown(a):
    """``a`` as displayed (one pixel in k above ``DISPLAY_MAX`` a side) and the extent that keeps pixel coordinates."""
    ny, nx = a.shape
    k = max(1, int(np.ceil(max(ny, nx) / DISPLAY_MAX)))
    small = a[::k, ::k]
    return small, (-0.5, small.shape[1] * k - 0.5, -0.5, small.shape[0] * k - 0.5), k


def _noise(values):
    """Robust standard deviation (1.4826 x MAD) of the finite values; NaN when there are none."""
    v = _finite_sample(values)
    if v.size == 0:
        return np.nan
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _asinh_norm(data, *, lo=1.0, hi=99.7):
    """A colour scale linear within the noise of the median level and logarithmic-like above it (asinh)."""
    good = _finite_sample(data)
    if good.size == 0:
        return colors.Normalize(0.0, 1.0)
    a, b = np.percentile(good, [lo, hi])
    if b <= a:
        b = a + 1.0
    mid = float(np.median(good))
    width = _noise(good)
    if not np.isfinite(width) or width <= 0:
        width = (b - a) / 100.0
    return _AsinhNorm(mid, width, vmin=a, vmax=b)


class _AsinhNorm(colors.FuncNorm):
    """asinh((v - mid) / width) between vmin and vmax; keeps its two functions for the colorbar's ticks."""

    def __init__(self, mid, width, *, vmin, vmax):
        self.stretch = lambda v: np.arcsinh((np.asarray(v, float) - mid) / width)
        self.unstretch = lambda s: mid + width * np.sinh(s)
        super().__init__((self.stretch, self.unstretch), vmin=vmin, vmax=vmax)


def _round(v, digits=2):
    """``v`` rounded to ``digits`` significant figures (0 stays 0)."""
    if v == 0 or not np.isfinite(v):
        return v
    return round(v, digits - 1 - int(np.floor(np.log10(abs(v)))))


def _colorbar(fig, mappable, ax, label, *, pad=0.03):
    cb = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=pad)
    cb.set_label(label)
    norm = mappable.norm
    if isinstance(norm, _AsinhNorm):  # ticks evenly spaced in the stretch, at round values
        fwd, inv = norm.stretch, norm.unstretch
        ticks = sorted({_round(float(inv(s))) for s in np.linspace(fwd(norm.vmin), fwd(norm.vmax), 7)})
        cb.set_ticks([t for t in ticks if norm.vmin <= t <= norm.vmax], labels=[f"{t:g}" for t in ticks
                                                                               if norm.vmin <= t <= norm.vmax])
    return cb


def _sigma_axis(cb, rms, label):
    """A second scale on a colorbar: the same values in units of ``rms``."""
    if np.isfinite(rms) and rms > 0:
        sec = cb.ax.secondary_yaxis("left", functions=(lambda v: v / rms, lambda s: s * rms))
        sec.set_ylabel(label)


def _no_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _done(fig, save):
    if save is not None:
        from .io import atomic_write

        fmt = os.path.splitext(os.fspath(save))[1].lstrip(".").lower() or "png"
        with atomic_write(save, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=100, format=fmt)
    return fig


def _block_median(data, block):
    """Median of ``block`` x ``block`` pixel blocks: NaN ignored, NaN where under half the block is finite.

    The edges that do not fill a block are dropped.
    """
    ny, nx = (s // block for s in data.shape)
    cut = data[: ny * block, : nx * block].reshape(ny, block, nx, block).transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
        med = np.nanmedian(cut, axis=-1)
    return np.where(np.isfinite(cut).mean(axis=-1) >= 0.5, med, np.nan)  # blocks mostly masked: left out


def fig_sky(frame, sky, mask=None, *, rms=None, unit=None, title="", save=None):
    """Frame, sky model, the residual frame - sky, and that residual median-binned.

    Parameters
    ----------
    frame, sky : ndarray (ny, nx)
        The frame and the fitted sky (``SkyFit.background``), data units.
    mask : ndarray of bool, optional
        The pixels kept out of the sky fit (outlined on the sky model and
        left out of the binned residual); without it the binned residual
        leaves out sources found at 5 rms in the 3x3-smoothed residual, grown.
    rms : float, optional
        Background noise per pixel (``SkyFit.rms``); default: 1.4826 x MAD
        of the residual.  The residual panels are stretched symmetrically
        about 0 in units of it (+-5 rms per pixel; for the binned panel +-5
        times the noise of a block median, or the 98th percentile of the
        blocks if larger), so a sky left over shows as a smooth blue/red
        pattern instead of noise.
    unit : str, optional
        ``"cR"``, ``"counts"`` or any unit text for the colorbars.

    The residual panel (third) shows exactly ``frame - sky`` (frames over
    ``DISPLAY_MAX`` pixels a side are shown one pixel in k, so that a figure
    takes a second or two; the noise and the stretches use every pixel).
    """
    frame = np.asarray(frame, float)
    sky = np.broadcast_to(np.asarray(sky, float), frame.shape)
    resid = frame - sky
    m = None if mask is None else np.asarray(mask, bool)
    if rms is None or not np.isfinite(rms) or rms <= 0:
        rms = _noise(resid if m is None else resid[~m])
    rms = float(rms) if np.isfinite(rms) and rms > 0 else 1.0
    u = _unit(unit)
    fig = Figure(figsize=(22, 5.0), layout="constrained")
    axes = fig.subplots(1, 4)
    big = max(frame.shape) > DISPLAY_MAX
    shown, extent, k = _shown(frame)
    im = axes[0].imshow(shown, origin="lower", cmap="gray", norm=_asinh_norm(frame), extent=extent,
                        interpolation="nearest")
    _colorbar(fig, im, axes[0], f"frame [{u}]")
    axes[0].set_title("frame (asinh stretch)" + (f", 1 px in {k} shown" if big else ""))
    im = axes[1].imshow(_shown(sky)[0], origin="lower", cmap="viridis", extent=extent, interpolation="nearest")
    _colorbar(fig, im, axes[1], f"sky [{u}]")
    if m is not None and m.any() and not m.all():
        ny, nx = frame.shape
        axes[1].contour(np.arange(0, nx, k), np.arange(0, ny, k), _shown(m.astype(float))[0], levels=[0.5],
                        colors="w", linewidths=0.4)
    axes[1].set_title("sky model" + (" (white: masked sources)" if m is not None else ""))
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    im = axes[2].imshow(_shown(resid)[0], origin="lower", cmap=cmap, vmin=-5 * rms, vmax=5 * rms, extent=extent,
                        interpolation="nearest")
    cb = _colorbar(fig, im, axes[2], f"frame - sky [{u}]")
    _sigma_axis(cb, rms, "[σ per pixel]")
    axes[2].set_title(f"frame - sky (±5σ, σ = {rms:.3g} {u})")
    block = int(max(4, min(frame.shape) // 32))
    out = m
    if out is None:  # no source mask given: sources found at 5 sigma in the 3x3-smoothed residual, grown
        from scipy import ndimage

        found = ndimage.uniform_filter(np.nan_to_num(resid), 3) > 5 * rms / 3
        out = ndimage.maximum_filter(found.view(np.uint8), size=2 * int(np.clip(block // 3, 2, 15)) + 1).astype(bool)
    binned = _block_median(np.where(out, np.nan, resid), block) if min(frame.shape) >= block else np.full((1, 1),
                                                                                                         np.nan)
    bnoise = 1.2533 * rms / block  # noise of the median of block**2 pixels
    top = 5 * bnoise  # +-5 sigma, or wide enough for a strong left-over sky to show its shape
    if np.isfinite(binned).any():
        top = max(top, float(np.nanpercentile(np.abs(binned), 98)))
    ny, nx = binned.shape
    im = axes[3].imshow(binned, origin="lower", cmap=cmap, vmin=-top, vmax=top,
                        extent=(-0.5, nx * block - 0.5, -0.5, ny * block - 0.5), interpolation="nearest")
    cb = _colorbar(fig, im, axes[3], f"block median of frame - sky [{u}]")
    _sigma_axis(cb, bnoise, "[σ of a block median]")
    axes[3].set_title(f"frame - sky, median of {block}x{block} px, "
                      + ("masked sources out" if m is not None else "sources (> 5σ, grown) out"))
    for ax in axes:
        ax.set_xlim(-0.5, frame.shape[1] - 0.5)
        ax.set_ylim(-0.5, frame.shape[0] - 0.5)
        _no_ticks(ax)
    fig.suptitle(title)
    return _done(fig, save)


def _nice(value):
    """The largest of 1, 2, 5 x 10^k not above ``value``."""
    k = np.floor(np.log10(value))
    for f in (5.0, 2.0, 1.0):
        if f * 10**k <= value:
            return f * 10**k
    return 10**k


def _scale_bar(ax, nx, ny, pixel_scale):
    arcsec = _nice(0.25 * nx * pixel_scale)
    length = arcsec / pixel_scale
    x0, y0 = 0.06 * nx, 0.06 * ny
    ax.plot([x0, x0 + length], [y0, y0], color="yellow", lw=2.5, solid_capstyle="butt", gid="scale-bar")
    text = f'{arcsec:g}"' if arcsec < 60 else f"{arcsec / 60:g}'"
    ax.text(x0 + length / 2, y0 + 0.02 * ny, text, color="yellow", ha="center", va="bottom", fontsize=10,
            fontweight="bold")
    return arcsec


def _compass(ax, wcs, nx, ny, x, y):
    north, east = north_east_angles(wcs, x, y)
    length = 0.13 * min(nx, ny)
    cx, cy = nx - 1 - 0.2 * nx, ny - 1 - 0.2 * ny
    for name, angle in (("N", north), ("E", east)):
        dx, dy = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        ax.annotate("", xy=(cx + length * dx, cy + length * dy), xytext=(cx, cy), gid=f"compass-{name}",
                    arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.8})
        ax.text(cx + 1.3 * length * dx, cy + 1.3 * length * dy, name, color="yellow", ha="center", va="center",
                fontsize=11, fontweight="bold")
    return north, east


def fig_cutout(cut, mask, *, unit=None, title="", save=None):
    """The cutout (with scale bar and N/E arrows) and the same with the mask overlaid in red.

    Parameters
    ----------
    cut : Cutout
        ``data`` (2-D, or a cube shown as its mean), ``center``, ``wcs`` and
        ``pixel_scale`` (arcsec / pixel) are used.  Without a celestial WCS
        the arrows are left out and the figure says so.
    mask : Mask or ndarray of bool
        1 = masked.
    unit : str, optional
        ``"cR"``, ``"counts"`` or any unit text for the colorbars.
    """
    data = np.asarray(cut.data, float)
    data = data if data.ndim == 2 else np.nanmean(data, axis=0)
    ny, nx = data.shape
    u = _unit(unit)
    m = np.asarray(getattr(mask, "mask", mask)).astype(bool)
    fig = Figure(figsize=(12, 5.4))
    axes = fig.subplots(1, 2)
    norm = _asinh_norm(data)
    for ax in axes:
        im = ax.imshow(data, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
        _colorbar(fig, im, ax, f"flux [{u}]")
        ax.plot(*cut.center, marker="+", color="cyan", ms=14, mew=1.5)
        _no_ticks(ax)
    axes[0].set_title("cutout (asinh stretch)")
    if m.any():
        axes[1].contourf(m.astype(float), levels=[0.5, 1.5], colors=["red"], alpha=0.4)
    axes[1].legend(handles=[Patch(color="red", alpha=0.4, label="masked (1)")], loc="upper left", fontsize=8)
    axes[1].set_title(f"mask ({m.mean():.0%} masked)")
    wcs = getattr(cut, "wcs", None)
    scale = getattr(cut, "pixel_scale", None)
    if (scale is None or not np.isfinite(scale)) and wcs is not None and wcs.has_celestial:
        scale = float(np.mean(np.abs(proj_plane_pixel_scales(wcs.celestial)))) * 3600.0
    has_scale = scale is not None and np.isfinite(scale) and scale > 0
    if has_scale:
        for ax in axes:
            _scale_bar(ax, nx, ny, float(scale))
    if wcs is not None and getattr(wcs, "has_celestial", False):
        _compass(axes[0], wcs, nx, ny, *cut.center)
    else:
        note = "no WCS: no N/E arrows" + ("" if has_scale else " or scale bar")
        axes[0].text(0.98, 0.98, note, transform=axes[0].transAxes, color="yellow", ha="right", va="top", fontsize=9)
    fig.suptitle(title)
    return _done(fig, save)


def fig_funnel(table, *, title="", save=None):
    """Stars left after each selection stage (``table.meta["funnel"]``)."""
    funnel = table.meta["funnel"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    names, counts = list(funnel), list(funnel.values())
    ax.bar(range(len(names)), counts, color="C0")
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("stars left")
    ax.set_title(title or "PSF star selection")
    fig.tight_layout()
    return _done(fig, save)


def _flag_text(flag):
    from .results import FLAG_BITS

    return ", ".join(name for bit, name in FLAG_BITS.items() if flag & bit) or f"flag {flag}"


def fig_stars(stamps, result, *, max_stars=12, per_row=4, title="", save=None):
    """Each star as data | model | residual, with its chi2 and flag, worst first.

    Data and model are shown sky-subtracted and divided by the star's fitted
    flux (fraction of the star's flux per pixel, one asinh colour scale for
    every star); the residual is (data - model) / sigma (+-5, masked pixels
    grey).  With more stars than ``max_stars`` the stars shown are spread
    over the chi2 ranking (the worst and the best always among them).  A
    green label is a star used in the fit; red is a flagged one.
    """
    from .psf import psf_model_stamps

    data = np.asarray(stamps.data, float)
    sigma = np.asarray(stamps.sigma, float)
    smask = np.asarray(stamps.mask, bool)
    model = psf_model_stamps(result, size=data.shape[-1])
    chi2 = np.asarray(result.chi2, float)
    flags = np.asarray(result.flags, int)
    flux = np.asarray(result.fluxes, float)
    bg = np.asarray(result.sky, float)
    n_all = len(data)
    order = np.argsort(np.where(np.isfinite(chi2), -chi2, np.inf), kind="stable")  # worst first, NaN last
    if n_all > max_stars:
        order = order[np.unique(np.round(np.linspace(0, n_all - 1, max_stars)).astype(int))]
    n = len(order)
    per_row = max(1, min(per_row, n))
    rows = int(np.ceil(n / per_row)) if n else 1
    height = 1.35 * rows + 0.9  # inches: a row of stamps with its label, plus the title
    top, bottom = 1 - 0.6 / height, 0.25 / height
    fig = Figure(figsize=(3.3 * per_row + 1.6, height))
    gs = fig.add_gridspec(rows, 3 * per_row, left=0.02, right=0.86, bottom=bottom, top=top,
                          wspace=0.05, hspace=0.4)
    peak = [np.nanmax(model[i] - bg[i]) / flux[i] for i in order if flux[i] > 0]
    vmax = float(np.nanmax(peak)) if peak and np.isfinite(np.nanmax(peak)) else 1.0
    norm = colors.AsinhNorm(linear_width=vmax / 300, vmin=-vmax / 50, vmax=vmax)
    rcmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    rnorm = colors.Normalize(-5.0, 5.0)
    shown = res_shown = None
    for j, i in enumerate(order):
        r, c = divmod(j, per_row)
        f = flux[i] if flux[i] > 0 else np.nan
        axd, axm, axr = (fig.add_subplot(gs[r, 3 * c + k]) for k in range(3))
        shown = axd.imshow((data[i] - bg[i]) / f, origin="lower", cmap="magma", norm=norm, interpolation="nearest")
        axm.imshow((model[i] - bg[i]) / f, origin="lower", cmap="magma", norm=norm, interpolation="nearest")
        with np.errstate(divide="ignore", invalid="ignore"):
            res = np.where(smask[i], np.nan, (data[i] - model[i]) / sigma[i])
        res_shown = axr.imshow(res, origin="lower", cmap=rcmap, norm=rnorm, interpolation="nearest")
        for ax, name in ((axd, "data"), (axm, "model"), (axr, "resid")):
            _no_ticks(ax)
            if r == 0:
                ax.set_xlabel(name, fontsize=7, labelpad=1)
                ax.xaxis.set_label_position("top")
        ok = flags[i] == 0
        label = f"id {stamps.ids[i]}   chi2 {chi2[i]:.2f}" + ("" if ok else f"   {_flag_text(flags[i])}")
        axd.text(0.0, -0.08, label, transform=axd.transAxes, ha="left", va="top", fontsize=8,
                 color="darkgreen" if ok else "red", fontweight="bold")
    if shown is not None:
        half = (top - bottom) / 2
        cax = fig.add_axes((0.885, bottom + half + 0.02, 0.012, half - 0.03))
        decades = 10.0 ** np.arange(np.ceil(np.log10(vmax / 100)), np.floor(np.log10(vmax)) + 1)
        fig.colorbar(shown, cax=cax, ticks=[0.0, *decades]).set_label("(data - sky) / flux\n[fraction of star flux per pixel]", fontsize=8)
        cax = fig.add_axes((0.885, bottom + 0.01, 0.012, half - 0.03))
        fig.colorbar(res_shown, cax=cax).set_label("(data - model) / sigma [sigma]", fontsize=8)
    good = flags == 0
    med = np.nanmedian(chi2[good]) if good.any() else np.nan
    shown_txt = f"{n} shown, worst chi2 first" if n == n_all else f"{n} of {n_all} shown across the chi2 ranking"
    fig.suptitle(f"{title + ': ' if title else ''}{int(good.sum())} stars fitted, {int((~good).sum())} flagged; "
                 f"median chi2 {med:.2f} ({shown_txt})", fontsize=10)
    return _done(fig, save)


def _radial(psf, k):
    n = psf.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(xx - c, yy - c) / k
    edges = np.arange(0, r.max() + 0.25, 0.25)
    idx = np.digitize(r.ravel(), edges)
    prof = np.array([psf.ravel()[idx == i].mean() if np.any(idx == i) else np.nan for i in range(1, len(edges))])
    return edges[:-1] + 0.125, prof


def quality_lines(result):
    """The PSF's quality report as short lines of text (figures, command line)."""
    def num(v, fmt):
        v = float(np.asarray(v, dtype=float))
        return format(v, fmt) if np.isfinite(v) else "n/a"

    conv = "converged" if bool(np.all(result.converged)) else "NOT converged"
    return [f"FWHM {num(result.fwhm, '.2f')} px, ellipticity {num(result.ellipticity, '.3f')}",
            f"held-out chi2/dof {num(result.heldout_chi2, '.3f')}, residual flux {num(result.residual_flux, '.4f')}",
            f"regularisation {result.reg_kind or 'n/a'} {num(result.reg_strength, '.3g')}",
            f"{conv} in {int(np.max(result.n_iter))} steps; {int(np.sum(np.asarray(result.flags) == 0))} stars"]


def _psf_image(fig, ax, psf, k):
    """The PSF on a log colour scale in its own unit: the fraction of the star's flux in each (sub-)pixel."""
    psf = np.asarray(psf, float)
    top = float(np.nanmax(psf)) if np.isfinite(np.nanmax(psf)) and np.nanmax(psf) > 0 else 1.0
    norm = colors.LogNorm(vmin=top * 1e-5, vmax=top, clip=True)
    im = ax.imshow(np.clip(psf, top * 1e-5, None), origin="lower", cmap="magma", norm=norm, interpolation="nearest")
    per = "sub-pixel" if k > 1 else "pixel"
    _colorbar(fig, im, ax, f"PSF [fraction of flux per {per}]")
    _no_ticks(ax)
    return im


def fig_psf(result, *, truth=None, title="", save=None):
    """The PSF image (log stretch), its radial profile (native pixels) and its quality report.

    The first panel's colorbar is the PSF's own unit: the fraction of the
    star's flux in each sub-pixel (the PSF sums to 1).  The third panel
    shows the held-out stars' reduced chi-square of every candidate
    regularisation (the cross-validation that chose it) and the report:
    FWHM, ellipticity, held-out chi-square, residual flux, convergence.
    """
    psf = np.asarray(result.psf)
    k = result.oversampling
    fig = Figure(figsize=(15, 4.4))
    axes = fig.subplots(1, 3)
    _psf_image(fig, axes[0], psf, k)
    axes[0].set_title(f"PSF (log, oversampling {k})")
    r, p = _radial(psf / psf.max(), k)
    axes[1].semilogy(r, np.clip(p, 1e-6, None), "o-", ms=3, label="gsprep")
    if truth is not None:
        rt, pt = _radial(np.asarray(truth) / np.max(truth), k)
        axes[1].semilogy(rt, np.clip(pt, 1e-6, None), "k--", label="truth")
        axes[1].legend()
    axes[1].set_xlabel("radius (native pixels)")
    axes[1].set_ylabel("PSF / peak")
    axes[1].set_ylim(1e-5, 1.5)
    cv = getattr(result, "cv_scores", None)
    ax = axes[2]
    if cv is not None and np.isfinite(np.asarray(cv, float)[:, 2]).any():
        cv = np.asarray(cv, float)
        for gamma, name, mark in ((1.0, "smooth", "o-"), (0.0, "profile", "s-")):
            sel = cv[:, 0] == gamma
            if sel.any():
                ax.semilogx(cv[sel, 1], cv[sel, 2], mark, label=name)
        ax.set_xlabel("regularisation strength")
        ax.set_ylabel("held-out reduced chi2")
        ax.legend(loc="upper left")
    else:
        ax.set_axis_off()
    ax.text(0.98, 0.02, "\n".join(quality_lines(result)), transform=ax.transAxes, ha="right", va="bottom",
            fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    ax.set_title("quality (cross-validated)")
    fig.suptitle(title)
    fig.tight_layout()
    return _done(fig, save)


def fig_psfs(results, *, save=None):
    """Per band, the PSFs side by side (log stretch, each with its colorbar in flux fraction)."""
    bands = list(results)
    fig = Figure(figsize=(4.2 * max(len(bands), 1), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(bands), 1)))
    for ax, b in zip(axes, bands, strict=False):
        _psf_image(fig, ax, results[b].psf, results[b].oversampling)
        ax.set_title(f"{b}: oversampling {results[b].oversampling}")
    for ax in axes[len(bands):]:
        ax.set_axis_off()
    return _done(fig, save)


def fig_psf_field(result, *, n_map=12, title="", save=None):
    """How the PSF varies across the frame (a result with ``degree > 0``), like PSFEx's check plots.

    Left: the PSF at a 3 x 3 grid of frame positions spanning the stars (log
    stretch, one colour scale: the fraction of the flux per sub-pixel).
    Middle: maps of the FWHM (native px) and the ellipticity across the
    stars' bounding box, the stars marked (ticks on the ellipticity map
    show the major axis).  Right: every star at its frame position,
    coloured by its held-out reduced chi-square (fitted with a PSF made
    without it; the final fit's chi-square when the degree was not chosen
    by held-out stars): a region the model misses shows as a patch of
    high values.
    """
    from .results import psf_shape

    sp = result.spatial
    if sp is None or np.ndim(result.psf) != 2:
        msg = "fig_psf_field needs one band's spatially varying result (fit_epsf(..., degree >= 1))"
        raise ValueError(msg)
    k = int(result.oversampling)
    offset, scale = np.asarray(sp["offset"], float), np.asarray(sp["scale"], float)
    lo, hi = offset - scale, offset + scale
    fig = Figure(figsize=(17, 5.4))
    grid = fig.add_gridspec(3, 6, width_ratios=[1, 1, 1, 2.2, 2.2, 2.2], wspace=0.35, hspace=0.25)
    fr = (0.05, 0.5, 0.95)
    psfs = [[result.psf_at(lo[0] + fx * (hi[0] - lo[0]), lo[1] + fy * (hi[1] - lo[1]), warn=False) for fx in fr]
            for fy in fr]
    top = max(float(np.max(p)) for row in psfs for p in row)
    norm = colors.LogNorm(vmin=top * 1e-5, vmax=top, clip=True)
    axes_psf = []
    for r, fy in enumerate(fr):
        for c, fx in enumerate(fr):
            ax = fig.add_subplot(grid[2 - r, c])
            im = ax.imshow(np.clip(psfs[r][c], top * 1e-5, None), origin="lower", cmap="magma", norm=norm,
                           interpolation="nearest")
            _no_ticks(ax)
            x, y = lo[0] + fx * (hi[0] - lo[0]), lo[1] + fy * (hi[1] - lo[1])
            ax.set_title(f"({x:.0f}, {y:.0f})", fontsize=7)
            axes_psf.append(ax)
    cb = fig.colorbar(im, ax=axes_psf, fraction=0.04, pad=0.02)
    cb.set_label(f"PSF [fraction of flux per {'sub-pixel' if k > 1 else 'pixel'}]")
    xs = np.linspace(lo[0], hi[0], n_map)
    ys = np.linspace(lo[1], hi[1], n_map)
    fw = np.zeros((n_map, n_map))
    ell = np.zeros((n_map, n_map))
    ang = np.zeros((n_map, n_map))
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            s = psf_shape(result.psf_at(x, y, warn=False), k)
            fw[j, i], ell[j, i] = s["fwhm"], s["ellipticity"]
            ang[j, i] = 0.5 * np.arctan2(s["e2"], s["e1"])
    stars = np.asarray(sp.get("stars_xy") if sp.get("stars_xy") is not None else np.zeros((0, 2)), float)
    ext = (lo[0], hi[0], lo[1], hi[1])
    for col, (data, label, cmap) in enumerate(((fw, "FWHM [native px]", "viridis"),
                                               (ell, "ellipticity [(a^2-b^2)/(a^2+b^2)]", "cividis"))):
        ax = fig.add_subplot(grid[:, 3 + col])
        im = ax.imshow(data, origin="lower", extent=ext, cmap=cmap, aspect="auto")
        _colorbar(fig, im, ax, label)
        if len(stars):
            ax.plot(stars[:, 0], stars[:, 1], "w.", ms=3, alpha=0.7)
        if col == 1:
            step = max(n_map // 8, 1)
            xx, yy = np.meshgrid(xs[::step], ys[::step])
            e, a = ell[::step, ::step], ang[::step, ::step]
            ax.quiver(xx, yy, e * np.cos(a), e * np.sin(a), headwidth=0, headlength=0, headaxislength=0,
                      pivot="middle", color="w")
        ax.set_xlabel("frame x [px]")
        ax.set_ylabel("frame y [px]")
        ax.set_title(label.split(" [")[0] + " across the frame")
    ax = fig.add_subplot(grid[:, 5])
    held = sp.get("heldout")
    chi2 = np.asarray(held if held is not None else result.chi2, float)
    which = "held-out" if held is not None else "fit"
    good = np.isfinite(chi2) & (np.asarray(result.flags) == 0) if len(chi2) == len(stars) else np.zeros(0, bool)
    if good.any():
        vmax = float(np.nanpercentile(chi2[good], 95))
        sc = ax.scatter(stars[good, 0], stars[good, 1], c=chi2[good], cmap="coolwarm", vmin=min(0.5, vmax), vmax=max(vmax, 1.5),
                        s=18, edgecolors="k", linewidths=0.3)
        _colorbar(fig, sc, ax, f"{which} reduced chi2 [per degree of freedom]")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("frame x [px]")
    ax.set_ylabel("frame y [px]")
    ax.set_title(f"stars: {which} chi2 (degree {int(np.max(sp['degree']))})")
    fig.suptitle(title or f"PSF across the frame: degree {int(np.max(sp['degree']))}")
    return _done(fig, save)

"""Figures a person can open: each function returns a matplotlib Figure and can save a PNG.

Nothing here needs a display (the Agg canvas is used directly).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["normimg", "fig_sky", "fig_cutout", "fig_funnel", "fig_stars", "fig_psf", "fig_psfs"]


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


def _done(fig, save):
    if save is not None:
        fig.savefig(save, dpi=100)
    return fig


def fig_sky(frame, sky, mask=None, *, title="", save=None):
    """Frame, sky model (with the source mask), and frame minus sky."""
    fig = Figure(figsize=(13, 4.4))
    axes = fig.subplots(1, 3)
    axes[0].imshow(normimg(frame), origin="lower", cmap="gray")
    axes[0].set_title("frame")
    axes[1].imshow(sky, origin="lower", cmap="viridis")
    if mask is not None:
        axes[1].contour(np.asarray(mask, dtype=float), levels=[0.5], colors="w", linewidths=0.4)
    axes[1].set_title("sky model" + (" (white: masked sources)" if mask is not None else ""))
    axes[2].imshow(normimg(frame - sky), origin="lower", cmap="gray")
    axes[2].set_title("frame - sky")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return _done(fig, save)


def fig_cutout(cut, mask, *, title="", save=None):
    """The cutout with the mask overlaid in red and the target marked."""
    fig = Figure(figsize=(10, 5))
    axes = fig.subplots(1, 2)
    data = cut.data if cut.data.ndim == 2 else np.nanmean(cut.data, axis=0)
    img = normimg(data)
    axes[0].imshow(img, origin="lower", cmap="gray")
    axes[0].set_title("cutout")
    rgb = np.dstack([img, img, img])
    m = np.asarray(getattr(mask, "mask", mask)).astype(bool)
    rgb[m] = 0.6 * rgb[m] + 0.4 * np.array([1.0, 0.1, 0.1])
    axes[1].imshow(rgb, origin="lower")
    axes[1].set_title(f"mask ({m.mean():.0%} masked)")
    for ax in axes:
        ax.plot(*cut.center, marker="+", color="cyan", ms=14, mew=1.5)
        ax.set_xticks([])
        ax.set_yticks([])
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


def fig_stars(stamps, result, *, max_stars=12, title="", save=None):
    """Selected stars, their PSF model and the residual (data - model) / sigma, with each star's chi2."""
    from .psf import psf_model_stamps

    data = np.asarray(stamps.data)
    n = min(len(data), max_stars)
    model = psf_model_stamps(result, size=data.shape[-1])
    fig = Figure(figsize=(2.2 * n, 6.6))
    axes = np.atleast_2d(fig.subplots(3, n, squeeze=False))
    for i in range(n):
        vmax = np.nanmax(model[i])
        axes[0, i].imshow(data[i], origin="lower", cmap="gray", vmin=-0.05 * vmax, vmax=vmax)
        axes[0, i].set_title(f"id {stamps.ids[i]}\nchi2 {result.chi2[i]:.2f}"
                             + (f" flag {result.flags[i]}" if result.flags[i] else ""), fontsize=8)
        axes[1, i].imshow(model[i], origin="lower", cmap="gray", vmin=-0.05 * vmax, vmax=vmax)
        res = np.where(stamps.mask[i], np.nan, (data[i] - model[i]) / stamps.sigma[i])
        axes[2, i].imshow(res, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("data")
    axes[1, 0].set_ylabel("model")
    axes[2, 0].set_ylabel("(d-m)/sigma")
    fig.suptitle(title)
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


def fig_psf(result, *, truth=None, title="", save=None):
    """The PSF image (log stretch), its radial profile (native pixels) and its quality report.

    The third panel shows the held-out stars' reduced chi-square of every
    candidate regularisation (the cross-validation that chose it) and the
    report: FWHM, ellipticity, held-out chi-square, residual flux, convergence.
    """
    psf = np.asarray(result.psf)
    k = result.oversampling
    fig = Figure(figsize=(14, 4.4))
    axes = fig.subplots(1, 3)
    axes[0].imshow(np.log10(np.clip(psf / psf.max(), 1e-5, None)), origin="lower", cmap="magma")
    axes[0].set_title(f"PSF (log10, oversampling {k})")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
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
            fontsize=8, bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.7"))
    ax.set_title("quality (cross-validated)")
    fig.suptitle(title)
    fig.tight_layout()
    return _done(fig, save)


def fig_psfs(results, *, save=None):
    """Per band, the PSFs side by side (same log stretch)."""
    bands = list(results)
    fig = Figure(figsize=(3.2 * max(len(bands), 1), 3.4))
    axes = np.atleast_1d(fig.subplots(1, max(len(bands), 1)))
    for ax, b in zip(axes, bands, strict=False):
        psf = np.asarray(results[b].psf)
        ax.imshow(np.log10(np.clip(psf / psf.max(), 1e-5, None)), origin="lower", cmap="magma", vmin=-5, vmax=0)
        ax.set_title(f"{b}: oversampling {results[b].oversampling}")
        ax.set_xticks([])
        ax.set_yticks([])
    return _done(fig, save)

"""Starting point of the fit (numpy): input checks, centroids, a stacked PSF, fluxes and skies.

Also the padding of the star count to a few compiled sizes, so that a batch
of targets shares a handful of compiled fits.
"""

from __future__ import annotations

import numpy as np

from .robust import gross_outliers


def prepare_arrays(stamps, sigmas, masks):
    for name, v in (("stamps", stamps), ("sigmas", sigmas)):
        if np.iscomplexobj(v):
            msg = f"{name} must be real numbers, got complex values"
            raise TypeError(msg)
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


def centroids(d, w, size):
    """Windowed centroid of each stamp around its centre (native px).

    Measured on the 3 x 3 median-filtered stamp, so that a cosmic ray (one or
    two hot pixels) next to a faint star does not pull its starting centre.
    """
    from scipy import ndimage

    n = d.shape[0]
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size].astype(float)
    out = np.full((n, 2), c)
    for s in range(n):
        img = ndimage.median_filter(np.where(w[s] > 0, d[s], 0.0), size=3, mode="nearest")
        cx, cy = c, c
        for sw in (3.0, 1.5):
            win = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sw**2)) * np.clip(img, 0, None)
            tot = win.sum()
            if tot > 0:
                cx, cy = (win * xx).sum() / tot, (win * yy).sum() / tot
        out[s] = (np.clip(cx, c - 2, c + 2), np.clip(cy, c - 2, c + 2))
    return out


def initial(d, w, xy, k, psf_size, size, flux=None):
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


def band_start(d, w, xy_init, k, psf_size, clip=None):
    """Numpy starting point for one band: ``(xy, psf0, flux, sky, weights, valid)``."""
    n, size, _ = d.shape
    valid = (w > 0).reshape(n, -1).sum(1) > 3
    if not valid.any():
        msg = "every stamp is fully masked: no usable pixels to fit a PSF"
        raise ValueError(msg)
    xy0 = centroids(d, w, size) if xy_init is None else np.asarray(xy_init, float)
    psf0, flux0, sky0 = initial(d, w, xy0, k, psf_size, size)
    if clip is not None:  # robust: cosmic rays and bright neighbours out before anything is fitted
        for _ in range(2):
            w, flux0 = gross_outliers(d, w, flux0, sky0, 2.0 * clip, xy0)
        if xy_init is None:
            xy0 = centroids(d, w, size)
        psf0, _, sky0 = initial(d, w, xy0, k, psf_size, size, flux=flux0)
    wt = np.where(valid[:, None, None], w, 0.0)
    return xy0, psf0, flux0, sky0, wt, valid


def bucket(n):
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


def pad_stars(arrays, n_to):
    """Append fully masked stars (zero weight) to ``(xy, flux, sky, w, d)`` up to ``n_to`` (numpy)."""
    xy, flux, sky, w, d = arrays
    n, size, _ = d.shape
    p = n_to - n
    if p <= 0:
        return arrays
    c = (size - 1) / 2.0
    return (np.concatenate([xy, np.full((p, 2), c)]), np.concatenate([flux, np.ones(p)]),
            np.concatenate([sky, np.zeros(p)]), np.concatenate([w, np.zeros((p, size, size))]),
            np.concatenate([d, np.zeros((p, size, size))]))

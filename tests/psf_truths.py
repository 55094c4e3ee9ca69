"""PSFs that are not Moffats, drawn exactly from their optical transfer function (numpy only).

A star's pixel values are the PSF integrated over each pixel, i.e. the inverse
Fourier transform of ``OTF(f) * sinc(f_x) * sinc(f_y)`` times the phase of the
star's position, summed over the aliases of an undersampled PSF: exact for a
PSF periodic over ``L`` pixels (its wings are negligible at ``L / 2``).  The
truth in gsprep's convention (flux per ``1/k`` sub-pixel) is drawn the same
way with a ``1/k`` box.
"""

from __future__ import annotations

import numpy as np

L = 64  # period of the drawn PSF, native pixels


def pupil_otf(d_s=36, obscuration=0.3, nstruts=4, strut=1.5, coma=0.0, astig=0.0, trefoil=0.0):
    """OTF of an obscured pupil with struts and aberrations (radians at the edge).

    Returns ``otf(fx, fy)`` for frequencies in cycles per native pixel; the
    cutoff is ``d_s / L`` (``d_s`` pupil samples across the diameter), i.e.
    ``lambda / D = L / d_s`` pixels (FWHM ~ 1.8 px for the default).
    """
    n = 2 * d_s + 8
    c = n // 2
    yy, xx = (np.mgrid[:n, :n] - c + 0.5) / (d_s / 2.0)
    r, th = np.hypot(xx, yy), np.arctan2(yy, xx)
    pupil = (r <= 1.0) & (r >= obscuration)
    for i in range(nstruts):
        a = np.pi * i / nstruts * (2 if nstruts % 2 else 1) + 0.3
        dist = np.abs(-np.sin(a) * xx + np.cos(a) * yy) * d_s / 2.0
        along = np.cos(a) * xx + np.sin(a) * yy
        pupil &= ~((dist < strut / 2) & (along > 0 if nstruts % 2 else True))
    phase = coma * (3 * r**3 - 2 * r) * np.cos(th) + astig * r**2 * np.cos(2 * th) + trefoil * r**3 * np.cos(3 * th)
    field = pupil * np.exp(1j * phase)
    ac = np.fft.ifft2(np.abs(np.fft.fft2(field)) ** 2)  # autocorrelation: shifts in pupil samples
    ac = ac / ac[0, 0]

    def otf(fx, fy):
        sx = np.rint(fx * L).astype(int)
        sy = np.rint(fy * L).astype(int)
        ok = (np.abs(sx) < n // 2) & (np.abs(sy) < n // 2)
        return np.where(ok, ac[sy % n, sx % n], 0.0)

    return otf


def kolmogorov_otf(fwhm=3.0, e=(0.06, -0.03), optics_sigma=0.6):
    """Long-exposure Kolmogorov seeing (FWHM ~ ``fwhm`` px) times a slightly elliptical optical blur."""
    f0 = 0.98 / fwhm

    def otf(fx, fy):
        f = np.hypot(fx, fy)
        sxx, syy = optics_sigma**2 * (1 + e[0]), optics_sigma**2 * (1 - e[0])
        sxy = optics_sigma**2 * e[1]
        opt = np.exp(-2 * np.pi**2 * (sxx * fx**2 + syy * fy**2 + 2 * sxy * fx * fy))
        return np.exp(-3.44 * (f / f0) ** (5.0 / 3.0)) * opt

    return otf


def draw_star(otf, size, x0, y0, flux=1.0, aliases=2):
    """``size x size`` stamp of a star at ``(x0, y0)`` (0-based native px), pixel-integrated."""
    n = np.fft.fftfreq(L) * L
    g = np.zeros((L, L), complex)
    for ay in range(-aliases, aliases + 1):
        for ax in range(-aliases, aliases + 1):
            fx = (n[None, :] / L + ax)
            fy = (n[:, None] / L + ay)
            g += otf(fx, fy) * np.sinc(fx) * np.sinc(fy) * np.exp(-2j * np.pi * (fx * x0 + fy * y0))
    img = np.real(np.fft.ifft2(g))
    return flux * img[:size, :size]


def truth(otf, size, k):
    """The PSF in gsprep's convention: flux per 1/k sub-pixel on a ``k*size`` grid, centred on the central pixel."""
    kk = k * size
    m = k * L
    n = np.fft.fftfreq(m) * m / L  # cycles per native pixel
    fx, fy = n[None, :], n[:, None]
    c = (size // 2) * k + (k - 1) / 2.0  # fine index of the centre
    u0 = c / k  # in native px from fine sample 0
    g = otf(fx, fy) * np.sinc(fx / k) * np.sinc(fy / k) * np.exp(-2j * np.pi * (fx * u0 + fy * u0))
    img = np.real(np.fft.ifft2(g))[:kk, :kk]
    return img / img.sum()


def stars(otf, n, size, rng, flux=(3e3, 2e5), sky_noise=10.0):
    """``n`` noisy stars (sky noise plus Poisson at gain 1) with random sub-pixel offsets."""
    c = size // 2
    xy = c + rng.uniform(-0.5, 0.5, (n, 2))
    f = np.exp(rng.uniform(np.log(flux[0]), np.log(flux[1]), n))
    true = np.stack([draw_star(otf, size, x, y, fl) for (x, y), fl in zip(xy, f, strict=True)])
    sigma = np.sqrt(sky_noise**2 + np.clip(true, 0, None))
    return true + rng.normal(size=true.shape) * sigma, sigma, xy, f

"""Sigma (noise) images."""

from __future__ import annotations

import numpy as np

from ._checks import as_image, check_choice, check_nonnegative, check_positive

__all__ = ["sigma_image", "sigma_from_weight", "sigma_from_map", "exposure_bad", "NOISE_KINDS"]

#: what a noise map holds -> how sigma follows from it
NOISE_KINDS = {
    "rms": "sigma = value (an ERR map: 1-sigma error per pixel, data units)",
    "variance": "sigma = sqrt(value) (a VAR map, data units squared)",
    "ivar": "sigma = 1 / sqrt(value) (inverse variance, 1 / data units squared)",
    "weight": "sigma = 1 / sqrt(value) (a drizzle inverse-variance weight map, final_wht_type IVM)",
}


def sigma_image(data, *, exptime, gain=1.0, sky=0.0, sky_rms, fac1=1.0, fac2=1.0, unit="cR"):
    """Per-pixel noise of a sky-subtracted image (GalfitS's ``cal_sigma_image``).

    ``sigma = sqrt(fac1 * |data + sky| / (gain * t) + fac2 * sky_rms**2)``
    with ``t = exptime`` for count-rate data (``unit="cR"``, counts / s) and
    ``t = 1`` for ``unit="counts"``.  ``exptime`` may be an exposure map
    (per-pixel exposure time, the shape of ``data``): then ``t = t(x, y)``.

    Parameters
    ----------
    data : array
        Sky-subtracted image, in counts/s (``"cR"``) or counts.
    exptime : float or array
        Exposure time, seconds (> 0), or an exposure map (> 0 and finite at
        every pixel: mask the others, see :func:`exposure_bad`).  Ignored
        for ``unit="counts"`` but still checked when given.
    gain : float
        Electrons per data unit (> 0).
    sky : float or array
        The sky that was subtracted (same units as ``data``); its Poisson
        noise counts.
    sky_rms : float or array
        Background noise (same units as ``data``), e.g. ``SkyFit.rms``.
    fac1, fac2 : float
        Scale factors on the source and background terms (>= 0).
    unit : {"cR", "counts"}

    Returns
    -------
    ndarray
        Same units as ``data``; NaN where ``data`` is not finite, > 0
        everywhere else.

    Raises
    ------
    ValueError
        ``sky`` or ``sky_rms`` not finite, ``sky_rms`` negative, or a sigma
        of 0 (``data + sky = 0`` where ``fac2 * sky_rms**2 = 0``).

    Examples
    --------
    >>> sigma_image(np.array([[100.0]]), exptime=100.0, gain=2.0, sky_rms=0.1)   # sqrt(100 / 200 + 0.01)
    array([[0.71414284]])
    """
    check_choice("unit", unit, ("cR", "counts"))
    arr = as_image("data", data, ndim=(2, 3), require_finite=False)
    if exptime is not None and np.ndim(exptime) > 0:
        t = _real_array("exptime", exptime)
        if not (np.isfinite(t) & (t > 0)).all():
            msg = (f"an exposure map (exptime) must be finite and > 0{_where(t, ~(np.isfinite(t) & (t > 0)))} "
                   "(mask those pixels and give them any positive value)")
            raise ValueError(msg)
    elif unit == "cR" or exptime is not None:
        t = check_positive("exptime", exptime)
    if unit == "counts":
        t = 1.0
    g = check_positive("gain", gain)
    f1, f2 = check_nonnegative("fac1", fac1), check_nonnegative("fac2", fac2)
    rms = _real_array("sky_rms", sky_rms)
    if np.any(~np.isfinite(rms)) or np.any(rms < 0):
        msg = f"sky_rms must be finite and >= 0{_where(rms, ~np.isfinite(rms) | (rms < 0))}"
        raise ValueError(msg)
    skyv = _real_array("sky", sky)
    if not np.isfinite(skyv).all():
        msg = (f"sky must be finite (the sky that was subtracted, same units as data)"
               f"{_where(skyv, ~np.isfinite(skyv))}")
        raise ValueError(msg)
    try:
        var = f1 * np.abs(arr + skyv) / (g * t) + f2 * rms**2
    except ValueError:
        msg = (f"sky (shape {skyv.shape}), sky_rms (shape {rms.shape}) or exptime (shape {np.shape(t)}) does not "
               f"match data {arr.shape}")
        raise ValueError(msg) from None
    zero = var == 0
    if zero.any():
        msg = (f"sigma would be 0 at {int(zero.sum())} pixel(s) (data + sky = 0 there and fac2 * sky_rms**2 = 0); "
               "GalfitS divides by sigma: give the background noise as sky_rms > 0")
        raise ValueError(msg)
    return np.sqrt(var)


def _real_array(name, value):
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        msg = f"{name} must be a real number or array, got {value!r}"
        raise TypeError(msg)
    return arr.astype(float)


def _where(arr, bad):
    """`` at k of n pixels`` for an array argument, `` got <value>`` for a scalar."""
    if arr.ndim == 0:
        return f", got {float(arr)!r}"
    return f" at every pixel; it is not at {int(np.count_nonzero(bad))} of {arr.size}"


def exposure_bad(exposure):
    """Pixels of an exposure map (per-pixel exposure time, s) with no valid exposure: <= 0 or not finite.

    Examples
    --------
    >>> exposure_bad(np.array([[100.0, 0.0, np.nan]]))
    array([[False,  True,  True]])
    """
    t = as_image("exposure map", exposure, ndim=(2, 3), require_finite=False)
    return ~(np.isfinite(t) & (t > 0))


def sigma_from_weight(weight):
    """Sigma image from an inverse-variance weight map (``sigma = 1 / sqrt(w)``).

    Returns
    -------
    sigma : ndarray
        ``inf`` where the weight is zero, negative or not finite.
    bad : ndarray of bool
        True at those pixels, so a mask can cover them.
    """
    w = as_image("weight", weight, ndim=(2, 3), require_finite=False)
    bad = ~np.isfinite(w) | (w <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(bad, np.inf, 1.0 / np.sqrt(np.where(bad, 1.0, w)))
    return sigma, bad


def sigma_from_map(values, kind):
    """Sigma image from a noise map (``kind`` in :data:`NOISE_KINDS`).

    ``"rms"``: ``sigma = value``; ``"variance"``: ``sigma = sqrt(value)``;
    ``"ivar"`` and ``"weight"`` (a drizzle inverse-variance weight map, in
    1 / data units squared): ``sigma = 1 / sqrt(value)``.

    Returns
    -------
    sigma : ndarray
        NaN where the map gives no valid noise.
    bad : ndarray of bool
        True where the map gives no valid noise: a value that is not finite,
        zero or negative (or a sigma that is not finite and > 0).

    Raises
    ------
    ValueError
        A ``"variance"`` map with negative values (not a variance), or a
        map with no valid pixel.

    Examples
    --------
    >>> sigma, bad = sigma_from_map(np.array([[4.0, 0.0]]), "variance")
    >>> sigma, bad
    (array([[ 2., nan]]), array([[False,  True]]))
    """
    check_choice("noise_kind", kind, tuple(NOISE_KINDS))
    v = as_image("noise map", values, ndim=(2, 3), require_finite=False)
    if kind == "variance":
        neg = np.isfinite(v) & (v < 0)
        if neg.any():
            msg = (f"the variance map is negative at {int(neg.sum())} of {v.size} pixels: not a variance "
                   "(an ERR map is noise_kind = 'rms', a weight map 'weight')")
            raise ValueError(msg)
    bad = ~np.isfinite(v) | (v <= 0)
    safe = np.where(bad, 1.0, v)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "rms":
            sigma = safe
        elif kind == "variance":
            sigma = np.sqrt(safe)
        else:
            sigma = 1.0 / np.sqrt(safe)
    bad |= ~(np.isfinite(sigma) & (sigma > 0))
    if bad.all():
        msg = f"the noise map ({kind}) has no valid pixel (every value is zero, negative or not finite)"
        raise ValueError(msg)
    return np.where(bad, np.nan, sigma), bad

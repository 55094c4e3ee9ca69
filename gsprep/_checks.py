"""Small parameter checks shared by every stage (photutils-style helpers).

Each raises a plain ``ValueError`` (or ``TypeError``) whose message names the
argument and says what was wrong, so users never see a traceback from deep
inside numpy or JAX.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "as_image",
    "check_positive",
    "check_nonnegative",
    "check_choice",
    "as_mask",
]


def check_positive(name, value, *, allow_none=False):
    """Return ``float(value)`` after checking it is finite and > 0."""
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a positive number, got {value!r}"
        raise TypeError(msg) from None
    if not math.isfinite(v) or v <= 0:
        msg = f"{name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
    return v


def check_nonnegative(name, value):
    """Return ``float(value)`` after checking it is finite and >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a number >= 0, got {value!r}"
        raise TypeError(msg) from None
    if not math.isfinite(v) or v < 0:
        msg = f"{name} must be a finite number >= 0, got {value!r}"
        raise ValueError(msg)
    return v


def check_choice(name, value, choices):
    """Check ``value`` is one of ``choices``."""
    if value not in choices:
        msg = f"{name} must be one of {sorted(map(str, choices))}, got {value!r}"
        raise ValueError(msg)
    return value


def as_image(name, data, *, ndim=(2,), require_finite=True):
    """Return ``data`` as a float64 array of one of the allowed ``ndim``.

    Infinite pixels become NaN (one flavour of "bad" downstream).  With
    ``require_finite`` an array without a single finite pixel is an error.
    """
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        msg = f"{name} must be a real numeric array, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        msg = f"{name} must be a {want} array, got shape {arr.shape}"
        raise ValueError(msg)
    if arr.size == 0:
        msg = f"{name} is empty (shape {arr.shape})"
        raise ValueError(msg)
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr[~np.isfinite(arr)] = np.nan
    if require_finite and not np.isfinite(arr).any():
        msg = f"{name} has no finite pixels (all NaN or inf)"
        raise ValueError(msg)
    return arr


def as_mask(name, mask, shape):
    """Return ``mask`` as a bool array of ``shape`` (True = masked), or all False."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        msg = f"{name} must have the image's shape {tuple(shape)}, got {m.shape}"
        raise ValueError(msg)
    return m.astype(bool)

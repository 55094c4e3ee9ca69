"""Small parameter checks shared by every stage (photutils-style helpers).

Each raises a plain ``ValueError`` (or ``TypeError``) whose message names the
argument and says what was wrong, so users never see a traceback from deep
inside numpy or JAX.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "read_table",
    "as_image",
    "check_positive",
    "check_nonnegative",
    "check_number",
    "check_integer",
    "check_choice",
    "check_ra_dec",
    "check_pixel",
    "check_columns",
    "as_mask",
]


def _real(name, value, what):
    """``float(value)`` for a real number; strings, booleans and complex values are refused."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.iscomplexobj(value):
        msg = f"{name} must be {what}, got {value!r}"
        raise TypeError(msg)
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be {what}, got {value!r}"
        raise TypeError(msg) from None


def check_number(name, value, *, lower=None, upper=None, allow_none=False):
    """Return ``float(value)`` after checking it is a finite real number within ``[lower, upper]``."""
    if value is None and allow_none:
        return None
    v = _real(name, value, "a number")
    if not math.isfinite(v) or (lower is not None and v < lower) or (upper is not None and v > upper):
        rng = f" within [{lower:g}, {upper:g}]" if lower is not None and upper is not None else (
            f" >= {lower:g}" if lower is not None else (f" <= {upper:g}" if upper is not None else ""))
        msg = f"{name} must be a finite number{rng}, got {value!r}"
        raise ValueError(msg)
    return v


def check_integer(name, value, *, lower=None, upper=None, odd=False):
    """Return ``int(value)`` after checking it is a whole number within ``[lower, upper]`` (odd if asked).

    ``2.0`` is accepted as 2; ``2.7``, ``"2"``, ``True`` and ``None`` are not.
    """
    what = "an odd integer" if odd else "an integer"
    bounds = ""
    if lower is not None and upper is not None:
        bounds = f" between {lower} and {upper}"
    elif lower is not None:
        bounds = f" >= {lower}"
    elif upper is not None:
        bounds = f" <= {upper}"
    v = _real(name, value, what + bounds)
    if not math.isfinite(v) or v != int(v) or (lower is not None and v < lower) \
            or (upper is not None and v > upper) or (odd and int(v) % 2 == 0):
        msg = f"{name} must be {what}{bounds}, got {value!r}"
        raise ValueError(msg)
    return int(v)


def check_positive(name, value, *, allow_none=False):
    """Return ``float(value)`` after checking it is finite and > 0 (strings and booleans refused)."""
    if value is None and allow_none:
        return None
    v = _real(name, value, "a positive number")
    if not math.isfinite(v) or v <= 0:
        msg = f"{name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
    return v


def check_nonnegative(name, value):
    """Return ``float(value)`` after checking it is finite and >= 0 (strings and booleans refused)."""
    v = _real(name, value, "a number >= 0")
    if not math.isfinite(v) or v < 0:
        msg = f"{name} must be a finite number >= 0, got {value!r}"
        raise ValueError(msg)
    return v


def check_choice(name, value, choices):
    """Check ``value`` is one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable or incomparable
        ok = False
    if not ok:
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


def check_ra_dec(ra, dec, *, names=("ra", "dec")):
    """Return ``(float(ra), float(dec))`` after checking ``0 <= ra < 360`` and ``-90 <= dec <= 90`` degrees."""
    r = _real(names[0], ra, "a number of degrees")
    d = _real(names[1], dec, "a number of degrees")
    if not (math.isfinite(r) and 0.0 <= r < 360.0):
        msg = f"{names[0]} must be within [0, 360) degrees (ICRS), got {ra!r}"
        raise ValueError(msg)
    if not (math.isfinite(d) and -90.0 <= d <= 90.0):
        msg = f"{names[1]} must be within [-90, 90] degrees (ICRS), got {dec!r}"
        raise ValueError(msg)
    return r, d


def check_pixel(name, value, shape=None):
    """Return ``value`` as a pair of floats ``(x, y)`` (0-based pixels), inside ``shape`` when given.

    ``shape`` is ``(ny, nx)``; a position within half a pixel of the edge counts as inside.
    """
    arr = np.asarray(value) if not isinstance(value, (str, bytes)) else np.asarray([value])
    if arr.shape != (2,) or arr.dtype.kind not in "iuf":
        msg = f"{name} must be a pair of numbers (x, y) in pixels, got {value!r}"
        raise ValueError(msg)
    x, y = float(arr[0]), float(arr[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        msg = f"{name} must be finite pixel coordinates (x, y), got {value!r}"
        raise ValueError(msg)
    if shape is not None:
        ny, nx = shape
        if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
            msg = (f"{name}=(x={x:g}, y={y:g}) is outside the image of {nx} x {ny} pixels "
                   "(0-based pixel coordinates)")
            raise ValueError(msg)
    return x, y


def check_columns(name, table, columns, *, what=""):
    """Check ``table`` has every one of ``columns``; the message lists those missing and those it has."""
    names = list(getattr(table, "colnames", ()))
    missing = [c for c in columns if c not in names]
    if missing:
        why = f" ({what})" if what else ""
        msg = f"{name} is missing column(s) {missing}{why}; it has {names}"
        raise ValueError(msg)


def header_positive(header, key):
    """``header[key]`` as a finite number > 0, or None when it is missing, not a number or not > 0."""
    if header is None or key not in header:
        return None
    try:
        v = float(header[key])
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def read_table(name, path):
    """A table file (ECSV, FITS, CSV, ...; astropy's reader by extension), or a one-line error naming ``name``."""
    import os

    from astropy.table import Table

    path = os.fspath(path)
    if not os.path.exists(path):
        msg = f"{name}: no such file {path!r}"
        raise FileNotFoundError(msg)
    fmt = "ascii.csv" if path.lower().endswith(".csv") else None
    try:
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for a file that is not a table
        msg = f"{name}: cannot read {path!r} as a table ({exc})"
        raise ValueError(msg) from None

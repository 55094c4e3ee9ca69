"""User masks: a FITS map (nonzero = masked) or a DS9 region file (pixels inside a region masked).

A band's ``user_mask`` (TOML ``[bands.X] user_mask``, ``gsprep psf
--user-mask``) is read by :func:`read_user_mask`; its pixels get mask bit
``USER``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

__all__ = ["is_region_file", "read_user_mask", "region_mask"]

# how compressed or plain FITS files begin (anything else that is text is taken for a region file)
_FITS_MAGIC = (b"SIMPLE  =", b"\x1f\x8b", b"BZh", b"PK\x03\x04")


def is_region_file(path):
    """Whether ``path`` is a DS9 region file: its name ends in ``.reg``, or it is text and not FITS."""
    path = os.fspath(path)
    if path.lower().endswith(".reg"):
        return True
    if path.lower().endswith((".fits", ".fit", ".fts", ".fits.gz", ".fz", ".fits.fz")) or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_FITS_MAGIC):
        return False
    return b"\x00" not in head  # text


def _fail(path, why):
    msg = f"cannot read {path!r} as a DS9 region file ({why})"
    return ValueError(msg)


def region_mask(path, shape, *, wcs=None):
    """A DS9 region file as a boolean mask of ``shape`` (True = inside a region).

    Image-coordinate regions (DS9's 1-based pixels) are placed as DS9 shows
    them; sky regions (``fk5``, ``icrs``, ``galactic``...) are converted
    with ``wcs``.  A pixel is inside when its centre is.  Exclusion regions
    (a leading ``-``) are taken out of the union of the others; text and
    point regions (no area) are ignored.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        ``cannot read PATH as a DS9 region file (...)``: the file does not
        parse, a line was skipped by the parser, it holds no region, or it
        has sky regions and no ``wcs`` was given.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        msg = f"no such file {path!r}"
        raise FileNotFoundError(msg)
    try:
        from regions import Regions, SkyRegion
    except ImportError:  # pragma: no cover - a dependency of gsprep
        raise _fail(path, "the regions package is not installed: pip install regions") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            regs = Regions.read(path, format="ds9")
        except Exception as exc:  # noqa: BLE001 - the parser raises many kinds; each is "does not parse"
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _fail(path, why) from None
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message) or "unable to parse" in str(w.message)]
    if skipped:
        raise _fail(path, skipped[0] + (f"; and {len(skipped) - 1} more line(s)" if len(skipped) > 1 else ""))
    shape = tuple(shape)[-2:]
    include = np.zeros(shape, bool)
    exclude = np.zeros(shape, bool)
    n = 0
    for reg in regs:
        kind = type(reg).__name__
        if kind.startswith(("Text", "Point")):
            continue
        if isinstance(reg, SkyRegion):
            if wcs is None:
                raise _fail(path, f"a sky-coordinate region ({kind}) and the frame has no WCS; give the "
                                  "regions in image coordinates")
            try:
                reg = reg.to_pixel(wcs.celestial if hasattr(wcs, "celestial") else wcs)
            except Exception as exc:  # noqa: BLE001
                raise _fail(path, f"{kind} cannot be placed with the frame's WCS: {exc}") from None
        try:
            img = reg.to_mask(mode="center").to_image(shape)
        except Exception as exc:  # noqa: BLE001
            raise _fail(path, f"{kind} cannot be made a mask: {exc}") from None
        n += 1
        if img is None:  # outside the frame
            continue
        inside = img > 0
        if reg.meta.get("include", True) in (False, 0):
            exclude |= inside
        else:
            include |= inside
    if n == 0:
        raise _fail(path, "no region with an area in it")
    return include & ~exclude


def read_user_mask(path, shape, *, wcs=None, hdu=0):
    """A user mask as a boolean frame-sized array (True = masked, mask bit ``USER``).

    ``path``: a DS9 region file (name ending in ``.reg``, or text that is
    not FITS; see :func:`region_mask`) or a FITS map (``hdu`` of it, nonzero
    or NaN = masked) of exactly ``shape``.

    Raises ``FileNotFoundError`` or ``ValueError`` (one line) when it cannot
    be read or does not cover the frame pixel for pixel.
    """
    from .io import read_map

    if is_region_file(path):
        return region_mask(path, shape, wcs=wcs)
    data = read_map(path, hdu)
    if data.shape != tuple(shape):
        msg = (f"the map {os.fspath(path)}[{hdu}] has shape {data.shape} but the frame is {tuple(shape)}; "
               "it must cover the frame pixel for pixel")
        raise ValueError(msg)
    return ~(data == 0)

"""One target, every band: the stages composed, and the products written for GalfitS.

``prepare_target`` is pure (images in, products out); ``write_products``
writes per band the cutout file, the PSF file, figures and a GalfitS image
block; ``load_config`` reads the TOML file ``gsprep prepare`` takes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import warnings
from dataclasses import dataclass, field, fields

import numpy as np
from astropy.table import Table

from ._checks import check_choice, check_integer, check_nonnegative, check_number, check_positive, check_ra_dec
from .cutouts import Cutout, cutout
from .galfits import galfits_filter, header_zeropoint, image_block, lyric_text
from .psf import EPSFResult, fit_epsf
from ._bits import BAD, USER
from .io import Image, atomic_write, read_image, read_map, write_cutout, write_psf
from .masks import Mask, TargetNotFoundError, cutout_mask
from .noise import NOISE_KINDS, sigma_from_map, sigma_image
from .sky import SkyFit, fit_sky, sky_mask, sky_residual_check
from .wcs import STANDIN_CRVAL, StandInWCSWarning
from .stars import StarCriteria, Stamps, extract_stamps, find_stars, select_stars

__all__ = ["BandSpec", "PrepareConfig", "BandProducts", "TargetRun", "load_config", "read_bands", "prepare_band",
           "prepare_target", "read_band_maps", "BandMaps", "write_products", "run_target", "galfits_block",
           "product_paths", "check_out_dir",
           "frame_sky", "frame_sigma", "frame_psf_stars"]


@dataclass(frozen=True)
class BandSpec:
    """One band of a target: where its frame is and what the PSF is like.

    ``fwhm`` is the PSF FWHM in pixels (detection smoothing); ``zeropoint``
    the AB magnitude zero point (default: from the header, see
    :func:`gsprep.galfits.header_zeropoint`); ``filter`` GalfitS's name of
    the band (``Ia2``; default: from the band key or the header, see
    :func:`gsprep.galfits.galfits_filter`); ``pixel_scale`` (arcsec/pixel)
    is required for a frame without a WCS and overrides the WCS's scale in
    the half-size rule otherwise.

    Noise and bad pixels (see the guide, "Noise maps, DQ and user masks"):
    ``noise = "FILE[EXT]"`` (another file; ``[EXT]`` an HDU index or EXTNAME,
    default 0) or ``noise_hdu = EXT`` (another HDU of ``file``) with
    ``noise_kind`` one of ``"rms"``, ``"variance"``, ``"ivar"``,
    ``"weight"`` replaces the computed sigma image; ``dq = "FILE[EXT]"`` or
    ``dq_hdu = EXT`` with ``dq_bad = [bit values]`` (default: any nonzero DQ
    is bad) and ``user_mask = "FILE[EXT]"`` (nonzero = masked) mask pixels.
    """

    file: str
    fwhm: float
    hdu: int | str = 0
    unit: str = "cR"
    zeropoint: float | None = None
    exptime: float | None = None
    gain: float | None = None
    filter: str | None = None
    pixel_scale: float | None = None
    noise: str | None = None
    noise_hdu: int | str | None = None
    noise_kind: str | None = None
    dq: str | None = None
    dq_hdu: int | str | None = None
    dq_bad: tuple | None = None
    user_mask: str | None = None


@dataclass(frozen=True)
class BandMaps:
    """A band's noise map and bad-pixel maps, frame-sized (from :func:`read_band_maps`).

    ``sigma``: the sigma image from the noise map (NaN where ``bad``), or
    None (then the sigma image is computed); ``bad``: no valid noise or
    DQ-bad (mask bit ``BAD``); ``user``: the user mask (mask bit ``USER``).
    """

    sigma: np.ndarray | None
    bad: np.ndarray
    user: np.ndarray


@dataclass(frozen=True)
class PrepareConfig:
    """Everything ``prepare_target`` needs besides the images (see docs/guide.md for the TOML).

    The target is ``ra, dec`` (ICRS degrees) or, with ``ra = dec = None``,
    ``x, y`` (0-based frame pixels, for frames without a WCS).
    """

    name: str
    ra: float | None
    dec: float | None
    r: float
    bands: dict
    sky_order: int = 3
    sky_method: str = "poly"
    sky_box: int = 64
    sky_regions: tuple | None = None
    sky_nsigma: float = 3.0
    mask_nsigma: float = 3.0
    mask_npixels: int = 5
    deblend: bool = True
    max_grow: float = 100.0
    addgrow: float = 0.0
    star_nsigma: float = 5.0
    star_npixels: int = 10
    stamp_size: int = 25
    oversampling: int = 2
    psf: bool = True
    require_target: bool = True
    lyric_psf: str = "native"
    redshift: float | None = None
    criteria: StarCriteria = field(default_factory=lambda: StarCriteria(size=25))
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True)
class BandProducts:
    """What ``prepare_band`` returns for one band (``error`` set when the band was skipped)."""

    band: str
    sky: SkyFit | None = None
    cutout: Cutout | None = None
    sigma: np.ndarray | None = None
    mask: Mask | None = None
    stars: Table | None = None
    stamps: Stamps | None = None
    psf: EPSFResult | None = None
    error: str | None = None


_TARGET_KEYS = {"name", "ra", "dec", "x", "y", "r", "redshift"}
_OPTION_KEYS = {f.name for f in fields(PrepareConfig)} - {"name", "ra", "dec", "x", "y", "r", "bands", "criteria",
                                                         "redshift"}
_BAND_KEYS = {f.name for f in fields(BandSpec)}
_CRITERIA_KEYS = {f.name for f in fields(StarCriteria)}


def _unknown(section, got, allowed):
    extra = sorted(set(got) - set(allowed))
    if extra:
        msg = f"config: unknown key(s) {extra} in [{section}]; allowed: {sorted(allowed)}"
        raise ValueError(msg)


def load_config(path, *, batch=False):
    """Read a ``gsprep prepare`` TOML file; unknown sections or keys are errors.

    Relative frame paths are taken relative to the config file's folder.
    With ``batch=True`` (the ``gsprep batch`` config) the targets come from a
    table, so ``[target]`` may hold only ``r`` (the default half-size, arcsec)
    and band files may be templates such as ``"frames/{name}_g.fits"``
    filled from each target's row; the returned config has ``name=""`` and
    NaN coordinates (and NaN ``r`` when none is given).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        msg = f"config: no such file {path!r}"
        raise FileNotFoundError(msg)
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            msg = f"config: {path!r} is not valid TOML ({exc})"
            raise ValueError(msg) from None
    _unknown("top level", raw, {"target", "options", "criteria", "bands"})
    target = raw.get("target")
    if batch:
        target = dict(target or {})
        if {"name", "ra", "dec", "x", "y"} & set(target):
            msg = ("config: a batch config takes name, ra and dec from the targets table (or name, x and y, in "
                   "pixels); [target] may hold only r (default half-size, arcsec)")
            raise ValueError(msg)
        _unknown("target", target, {"r"})
        target = {"name": "", "ra": np.nan, "dec": np.nan, "r": target.get("r", np.nan)}
    else:
        if not isinstance(target, dict) or not target:
            msg = ("config: [target] needs ra, dec (ICRS degrees) or x, y (0-based pixels, for frames without "
                   "a WCS) and r (half-size, arcsec)")
            raise ValueError(msg)
        _unknown("target", target, _TARGET_KEYS)
        _target_keys(target)
    options = raw.get("options", {})
    _unknown("options", options, _OPTION_KEYS)
    crit = raw.get("criteria", {})
    _unknown("criteria", crit, _CRITERIA_KEYS)
    crit.setdefault("size", options.get("stamp_size", 25))
    bands_raw = raw.get("bands")
    if not bands_raw:
        msg = "config: no [bands.NAME] section; list at least one band with file and fwhm"
        raise ValueError(msg)
    here = os.path.dirname(os.path.abspath(path))
    bands = {}
    for name, spec in bands_raw.items():
        if not isinstance(spec, dict):
            msg = f"config: [bands.{name}] must be a table with file and fwhm"
            raise ValueError(msg)
        _unknown(f"bands.{name}", spec, _BAND_KEYS)
        if "file" not in spec or "fwhm" not in spec:
            msg = f"config: [bands.{name}] needs file and fwhm (pixels)"
            raise ValueError(msg)
        spec = dict(spec)
        if not isinstance(spec["file"], str):
            msg = f"config: [bands.{name}] file must be a path (a string), got {spec['file']!r}"
            raise ValueError(msg)
        if not os.path.isabs(spec["file"]):
            spec["file"] = os.path.join(here, spec["file"])
        for key in ("noise", "dq", "user_mask"):
            if key in spec:
                spec[key] = _in_section(f"bands.{name}", lambda key=key, spec=spec: _map_ref(key, spec[key], here))
        bands[name] = _in_section(f"bands.{name}", lambda spec=spec: _checked_band(BandSpec(**spec)))
    options = _in_section("options", lambda: _checked_options(options))
    criteria = _in_section("criteria", lambda: StarCriteria(**crit))
    if batch:
        r = target["r"]
        r = float(r) if isinstance(r, float) and np.isnan(r) else _in_section("target", lambda: check_positive("r", r))
        ra = dec = float("nan")
    else:
        r = _in_section("target", lambda: check_positive("r", target["r"]))
    x = y = None
    if not batch and "x" in target:
        ra = dec = None
        x = _in_section("target", lambda: check_number("x", target["x"]))
        y = _in_section("target", lambda: check_number("y", target["y"]))
    elif not batch:
        ra, dec = _in_section("target", lambda: check_ra_dec(target["ra"], target["dec"]))
    z = target.get("redshift")
    z = None if z is None else _in_section("target", lambda: check_nonnegative("redshift", z))
    return PrepareConfig(name=str(target.get("name", "target")), ra=ra, dec=dec, r=r, bands=bands,
                         criteria=criteria, redshift=z, x=x, y=y, **options)


def _target_keys(target):
    """``[target]`` holds r and exactly one of the pairs ``ra, dec`` and ``x, y``."""
    keys = set(target)
    sky, pix = keys & {"ra", "dec"}, keys & {"x", "y"}
    if sky and pix:
        msg = ("config: [target] takes ra, dec (ICRS degrees) or x, y (0-based pixels, for frames without a "
               f"WCS), not both; it has {sorted(sky | pix)}")
        raise ValueError(msg)
    if sky != {"ra", "dec"} and pix != {"x", "y"}:
        have = sorted(sky | pix)
        msg = ("config: [target] needs ra and dec (ICRS degrees) or x and y (0-based pixels, for frames without "
               "a WCS)" + (f"; it has only {have}" if have else ""))
        raise ValueError(msg)
    if "r" not in keys:
        msg = "config: [target] needs r (half-size, arcsec)"
        raise ValueError(msg)


def _in_section(section, make):
    """``make()``, its argument errors restated as ``config: [section] ...`` (they name the TOML key)."""
    try:
        return make()
    except (TypeError, ValueError) as exc:
        msg = f"config: [{section}] {exc}"
        raise ValueError(msg) from None


_OPTION_CHECKS = {
    "sky_order": lambda v: check_integer("sky_order", v, lower=0, upper=12),
    "sky_nsigma": lambda v: check_positive("sky_nsigma", v),
    "mask_nsigma": lambda v: check_positive("mask_nsigma", v),
    "mask_npixels": lambda v: check_integer("mask_npixels", v, lower=1),
    "max_grow": lambda v: check_nonnegative("max_grow", v),
    "addgrow": lambda v: check_nonnegative("addgrow", v),
    "star_nsigma": lambda v: check_positive("star_nsigma", v),
    "star_npixels": lambda v: check_integer("star_npixels", v, lower=1),
    "stamp_size": lambda v: check_integer("stamp_size", v, lower=3, odd=True),
    "oversampling": lambda v: check_integer("oversampling", v, lower=1, upper=16),
    "lyric_psf": lambda v: check_choice("lyric_psf", v, ("native", "oversampled")),
    "sky_method": lambda v: check_choice("sky_method", v, ("poly", "mesh")),
    "sky_box": lambda v: check_integer("sky_box", v, lower=4),
    "sky_regions": lambda v: _checked_regions(v),
}


def _checked_regions(v):
    """``sky_regions``: a list of ``[x0, x1, y0, y1]`` boxes (0-based pixels, end excluded)."""
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(q, int) and not isinstance(q, bool) for q in b)
        for b in v)
    if not ok:
        msg = f"sky_regions must be a list of [x0, x1, y0, y1] integer boxes, got {v!r}"
        raise TypeError(msg)
    return tuple(tuple(b) for b in v)


def _checked_options(options):
    out = {}
    for key, value in options.items():
        if key in _OPTION_CHECKS:
            out[key] = _OPTION_CHECKS[key](value)
        elif isinstance(value, bool):  # deblend, psf, require_target
            out[key] = value
        else:
            msg = f"{key} must be true or false, got {value!r}"
            raise TypeError(msg)
    return out


def _checked_band(spec):
    """A band's values checked (the TOML keys are the field names)."""
    check_positive("fwhm", spec.fwhm)
    check_choice("unit", spec.unit, ("cR", "counts"))
    if spec.filter is not None and not (isinstance(spec.filter, str) and spec.filter.strip()):
        msg = f"filter must be a GalfitS filter name (a string such as 'sloan_g'), got {spec.filter!r}"
        raise TypeError(msg)
    if not isinstance(spec.hdu, (int, str)) or isinstance(spec.hdu, bool):
        msg = f"hdu must be an HDU index or EXTNAME, got {spec.hdu!r}"
        raise TypeError(msg)
    spec = _checked_maps(spec)
    return dataclasses.replace(spec, fwhm=float(spec.fwhm),
                               exptime=check_positive("exptime", spec.exptime, allow_none=True),
                               gain=check_positive("gain", spec.gain, allow_none=True),
                               pixel_scale=check_positive("pixel_scale", spec.pixel_scale, allow_none=True),
                               zeropoint=check_number("zeropoint", spec.zeropoint, allow_none=True))


_REF = re.compile(r"^(?P<path>.*?)\[(?P<ext>[^\[\]]*)\]$")


def _split_ref(ref):
    """``"FILE[EXT]"`` -> ``(FILE, EXT)`` (EXT an int when it is digits); ``"FILE"`` -> ``(FILE, 0)``."""
    m = _REF.match(ref)
    if not m:
        return ref, 0
    ext = m["ext"].strip()
    return m["path"], int(ext) if ext.isdigit() else ext


def _map_ref(key, value, here):
    """A ``noise``, ``dq`` or ``user_mask`` value checked, its path made absolute (relative to the config)."""
    if not isinstance(value, str) or not value.strip():
        msg = f'{key} must be "FILE" or "FILE[EXT]" (EXT an HDU index or EXTNAME), got {value!r}'
        raise TypeError(msg)
    path, ext = _split_ref(value)
    if not path or ext == "":
        msg = f'{key} must be "FILE" or "FILE[EXT]" (EXT an HDU index or EXTNAME), got {value!r}'
        raise ValueError(msg)
    if not os.path.isabs(path):
        path = os.path.join(here, path)
    return f"{path}[{ext}]" if _REF.match(value) else path


def _checked_hdu(key, value):
    if value is not None and (not isinstance(value, (int, str)) or isinstance(value, bool)):
        msg = f"{key} must be an HDU index or EXTNAME, got {value!r}"
        raise TypeError(msg)


def _checked_maps(spec):
    """The noise, DQ and user-mask keys of a band checked (not read: see ``read_band_maps``)."""
    for key in ("noise", "dq", "user_mask"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            msg = f'{key} must be "FILE" or "FILE[EXT]" (EXT an HDU index or EXTNAME), got {value!r}'
            raise TypeError(msg)
    for key in ("noise_hdu", "dq_hdu"):
        _checked_hdu(key, getattr(spec, key))
    if spec.noise is not None and spec.noise_hdu is not None:
        msg = "give noise (another file, \"FILE[EXT]\") or noise_hdu (an HDU of file), not both"
        raise ValueError(msg)
    if spec.dq is not None and spec.dq_hdu is not None:
        msg = "give dq (another file, \"FILE[EXT]\") or dq_hdu (an HDU of file), not both"
        raise ValueError(msg)
    has_noise = spec.noise is not None or spec.noise_hdu is not None
    if has_noise and spec.noise_kind is None:
        msg = f"a noise map needs noise_kind, one of {list(NOISE_KINDS)} (what its pixels hold)"
        raise ValueError(msg)
    if spec.noise_kind is not None:
        if not has_noise:
            msg = "noise_kind is set but no noise map: give noise = \"FILE[EXT]\" or noise_hdu = EXT"
            raise ValueError(msg)
        check_choice("noise_kind", spec.noise_kind, tuple(NOISE_KINDS))
    dq_bad = spec.dq_bad
    if dq_bad is not None:
        if spec.dq is None and spec.dq_hdu is None:
            msg = "dq_bad is set but no DQ map: give dq = \"FILE[EXT]\" or dq_hdu = EXT"
            raise ValueError(msg)
        ok = (isinstance(dq_bad, (list, tuple)) and len(dq_bad) > 0
              and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in dq_bad))
        if not ok:
            msg = f"dq_bad must be a list of DQ bit values (positive integers, e.g. [1, 4, 16]), got {dq_bad!r}"
            raise TypeError(msg)
        dq_bad = tuple(dq_bad)
    return dataclasses.replace(spec, dq_bad=dq_bad)


def _band_map(spec, key, image):
    """``(data, label)`` of the map ``key`` ("noise", "dq" or "user_mask") of a band, or None; shape checked."""
    ref = getattr(spec, key)
    hdu = getattr(spec, f"{key}_hdu", None)
    if ref is None and hdu is None:
        return None
    path, ext = _split_ref(ref) if ref is not None else (spec.file, hdu)
    which = key if ref is not None else f"{key}_hdu"
    label = f"{path}[{ext}]"
    try:
        data = read_map(path, ext)
    except (OSError, ValueError) as exc:
        msg = f"{which}: {exc}"
        raise ValueError(msg) from None
    if data.shape != image.data.shape:
        msg = (f"{which}: the map {label} has shape {data.shape} but the frame {spec.file}[{spec.hdu}] is "
               f"{image.data.shape}; it must cover the frame pixel for pixel")
        raise ValueError(msg)
    return data, label, which


def _band_maps(spec, image):
    """The band's :class:`BandMaps`, or None when it has no noise, DQ or user-mask key (errors unprefixed)."""
    noise = _band_map(spec, "noise", image)
    dq = _band_map(spec, "dq", image)
    user = _band_map(spec, "user_mask", image)
    if noise is None and dq is None and user is None:
        return None
    shape = image.data.shape
    sigma, bad = None, np.zeros(shape, bool)
    if noise is not None:
        try:
            sigma, bad = sigma_from_map(noise[0], spec.noise_kind)
        except ValueError as exc:
            msg = f"{noise[2]} ({noise[1]}, noise_kind = {spec.noise_kind!r}): {exc}"
            raise ValueError(msg) from None
    if dq is not None:
        values = dq[0]
        finite = np.isfinite(values)
        ints = np.where(finite, values, 0).astype(np.int64)
        flags = 0
        for b in spec.dq_bad or ():
            flags |= b
        dq_bad = ~finite | ((ints & flags) != 0 if spec.dq_bad else ints != 0)
        if dq_bad.all():
            which = f"dq_bad = {list(spec.dq_bad)}" if spec.dq_bad else "any nonzero DQ (the default)"
            msg = (f"{dq[2]}: every pixel of the DQ map {dq[1]} is bad by {which}; give dq_bad = [bit values] "
                   "that mark really bad pixels, or check the map")
            raise ValueError(msg)
        bad = bad | dq_bad
    user_mask = np.zeros(shape, bool) if user is None else ~(user[0] == 0)  # NaN counts as masked
    if (bad | user_mask | ~np.isfinite(image.data)).all():
        msg = "noise, dq and user_mask leave no good pixel in the frame"
        raise ValueError(msg)
    if sigma is not None:
        sigma = np.where(bad, np.nan, sigma)
    return BandMaps(sigma=sigma, bad=bad, user=user_mask)


def read_band_maps(config, images):
    """Read and check every band's noise, DQ and user-mask maps; band -> :class:`BandMaps` or None.

    Bands missing from ``images`` (unreadable frames) are skipped.  Any
    problem (missing file or HDU, a shape that is not the frame's, a
    negative variance, a DQ map with every pixel bad) is one
    ``ValueError`` ``config: [bands.NAME] KEY: ...``, raised before any work.
    """
    out = {}
    for band, image in images.items():
        if band not in config.bands or not isinstance(image, Image):
            continue
        out[band] = _in_section(f"bands.{band}", lambda band=band, image=image: _band_maps(config.bands[band], image))
    return out


def _sub(arr, cut):
    """The part of a frame-sized array under a cutout (NaN off the frame)."""
    n = cut.data.shape[-1]
    out = np.full((n, n), np.nan)
    x0, y0 = cut.origin
    ny, nx = arr.shape
    sy = slice(max(y0, 0), min(y0 + n, ny))
    sx = slice(max(x0, 0), min(x0 + n, nx))
    out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = arr[sy, sx]
    return out


def _band_inputs(image, spec, band):
    """Checked exposure time and gain of one band."""
    if not isinstance(image, Image):
        msg = f"image must be a gsprep Image (from read_image), got {type(image).__name__}"
        raise TypeError(msg)
    exptime = spec.exptime or image.exptime
    gain = spec.gain or image.gain or 1.0
    if spec.unit == "cR" and exptime is None:
        msg = (f"band {band}: no EXPTIME in the header of its frame and count-rate data need one; give "
               f'exptime = SECONDS in [bands.{band}] of the config (or unit = "counts" for data in counts)')
        raise ValueError(msg)
    return exptime, gain


def _pixel_target(ra, dec, config):
    """``(x, y)`` when the target is in pixels (``ra = dec = None``: taken from ``config``), else None."""
    if ra is not None or dec is not None:
        return None
    if config.x is None or config.y is None:
        msg = "no target: give ra, dec (ICRS degrees) or set x, y (0-based pixels) in the config's [target]"
        raise ValueError(msg)
    return config.x, config.y


def _cut_target(image, spec, band, ra, dec, pixel, use_wcs=True, config=None):
    """The target and scale ``cutout`` takes for one band (checked before any work on it)."""
    if (image.wcs is None and config is not None and config.psf
            and getattr(config.criteria, "starcord_list", None) is not None):
        msg = (f"band {band}: its frame has no WCS, so the PSF stars cannot be matched to [criteria] "
               "starcord_list (sky positions); remove starcord_list or give a frame with a WCS")
        raise ValueError(msg)
    if pixel is None:
        if image.wcs is None:
            msg = (f"band {band}: its frame has no WCS, so the target cannot be placed by ra, dec; give x, y "
                   f"(0-based pixels) in [target] and pixel_scale (arcsec/pixel) in [bands.{band}] of the config")
            raise ValueError(msg)
        return {"wcs": image.wcs, "ra": ra, "dec": dec, "pixel_scale": spec.pixel_scale}
    wcs = image.wcs if use_wcs else None
    scale = spec.pixel_scale
    if scale is None and wcs is None:
        scale = image.pixel_scale
    if wcs is None and scale is None:
        msg = (f"band {band}: its frame has no WCS, so the half-size r (arcsec) needs a pixel scale; give "
               f"pixel_scale = ARCSEC_PER_PIXEL in [bands.{band}] of the config")
        raise ValueError(msg)
    return {"wcs": wcs, "x": pixel[0], "y": pixel[1], "pixel_scale": scale}


def _band_sky_mask(image, config, spec):
    return sky_mask(image.data, fwhm=spec.fwhm, nsigma=config.sky_nsigma, max_grow=config.max_grow)


# The frame-level stages, shared by ``prepare`` (band by band or stacked), ``gsprep psf`` and the batch:
# one path from a frame to its sky, sigma image and PSF stars.

def frame_sky(image, *, fwhm, order, nsigma=3.0, max_grow=100.0, method="poly", box=64, regions=None,
              label="frame", bad=None):
    """The sky of a whole frame: sources kept out (:func:`gsprep.sky_mask`), then :func:`gsprep.fit_sky`.

    ``bad`` (frame-sized bool, optional): pixels kept out of the fit too
    (DQ-bad, no valid noise, user-masked).

    Warns (:class:`gsprep.sky.SkyResidualWarning`) when the residual is far
    above the pixel-to-pixel noise.  Returns ``(SkyFit, keep_out)``.
    """
    keep_out = sky_mask(image.data, fwhm=fwhm, nsigma=nsigma, max_grow=max_grow)
    if bad is not None:
        keep_out = keep_out | bad
    sky = fit_sky(image.data, keep_out, order=order, method=method, box=box, regions=regions)
    sky_residual_check(image.data, sky, keep_out, label=label)
    return sky, keep_out


def frame_sigma(clean, sky, *, exptime, gain, unit):
    """Sigma image of a sky-subtracted frame (data units).

    ``sky.rms`` is the measured background noise (the sky's own Poisson
    noise included), so the sky is not added to the source term again.
    """
    return sigma_image(clean, exptime=exptime, gain=gain, sky=0.0, sky_rms=sky.rms, unit=unit)


def frame_psf_stars(image, clean, sigma, sky, *, fwhm, nsigma, npixels, stamp_size, criteria, reference=None):
    """PSF stars of a frame: found, selected (with reasons) and cut into stamps; ``(stars, stamps)``.

    The frame's header and the sky that was removed go to
    :func:`gsprep.find_stars`, whose saturation level is in the frame's
    units before sky subtraction.
    """
    cat, seg = find_stars(clean, fwhm=fwhm, nsigma=nsigma, npixels=npixels, wcs=image.wcs, size=stamp_size,
                          return_segmentation=True, header=image.header, background=sky.background)
    stars = select_stars(cat, criteria, reference=reference)
    return stars, extract_stamps(clean, sigma, stars, stamp_size, segmentation=seg)


def _fill_sigma(sig, where, good):
    """``sig`` with ``where`` set to 1e4 x the largest sigma at ``good`` pixels (finite, never 0: GalfitS divides)."""
    ok = good & np.isfinite(sig) & (sig > 0)
    fill = 1e4 * float(np.max(sig[ok])) if ok.any() else 1e30
    return np.where(where, fill, sig)


def _excluded(maps):
    """Frame pixels kept out of the sky fit: no valid noise, DQ-bad, user-masked (None without maps)."""
    return None if maps is None else maps.bad | maps.user


def _band_after_sky(image, target, config, spec, sky, exptime, gain, band, maps=None):
    """Cutout, sigma, mask and PSF stamps of one band, its sky known (no PSF yet); ``target`` from ``_cut_target``.

    ``maps`` (:class:`BandMaps`): the noise map replaces the computed sigma
    image; its invalid pixels and DQ-bad ones get mask bit ``BAD``, the user
    mask bit ``USER``; masked ``BAD`` pixels are written with a large finite
    sigma.
    """
    clean = image.data - sky.background
    cut = cutout(clean, r=config.r, **target)
    if maps is not None and maps.sigma is not None:
        sig_full = maps.sigma
    else:
        sig_full = frame_sigma(clean, sky, exptime=exptime, gain=gain, unit=spec.unit)
    bad_cut = user_cut = np.zeros(cut.data.shape[-2:], bool)
    if maps is not None:
        sig_full = np.where(maps.bad, np.nan, sig_full)
        bad_cut = _sub(maps.bad.astype(float), cut) > 0  # NaN (off the frame) is False
        user_cut = _sub(maps.user.astype(float), cut) > 0
    sig = _sub(sig_full, cut)
    try:
        mask = cutout_mask(cut, fwhm=spec.fwhm, nsigma=config.mask_nsigma, npixels=config.mask_npixels,
                           deblend=config.deblend, max_grow=config.max_grow, addgrow=config.addgrow,
                           bad=~(sig > 0) | user_cut, require_target=config.require_target)
    except TargetNotFoundError:
        msg = (f"the target was not detected at the centre of the cutout (mask_nsigma={config.mask_nsigma:g}, "
               f"mask_npixels={config.mask_npixels}); lower mask_nsigma or mask_npixels in [options] of the "
               "config, or set require_target = false there to mask every detected source and go on")
        raise TargetNotFoundError(msg) from None
    if maps is not None:
        bits = mask.bits
        bits[bad_cut] |= BAD
        bits[bad_cut & ~user_cut] &= ~USER  # masked for want of noise / by DQ, not by the user
        bits[user_cut] |= USER
        sig = _fill_sigma(sig, bad_cut, mask.mask == 0)
        sig_full = _fill_sigma(sig_full, maps.bad, ~maps.bad)
    stars = stamps = None
    if config.psf:
        stars, stamps = frame_psf_stars(image, clean, sig_full, sky, fwhm=spec.fwhm, nsigma=config.star_nsigma,
                                        npixels=config.star_npixels, stamp_size=config.stamp_size,
                                        criteria=config.criteria)
    return BandProducts(band=band, sky=sky, cutout=cut, sigma=sig, mask=mask, stars=stars, stamps=stamps)


def prepare_band(image, ra, dec, config, spec, *, band="band", maps=None):
    """Run every stage on one band and return its products (pure: nothing is written).

    Sky (source mask + polynomial), cutout of the sky-subtracted frame, sigma
    image, mask, PSF stars (find, select, stamps) and the PSF.  With
    ``ra = dec = None`` the target is ``config.x, config.y`` (0-based
    pixels; a frame without a WCS needs ``spec.pixel_scale``).  ``maps``:
    the band's :class:`BandMaps` (default: read from ``spec``'s noise, dq
    and user_mask keys).
    """
    exptime, gain = _band_inputs(image, spec, band)
    if maps is None:
        maps = _in_section(f"bands.{band}", lambda: _band_maps(spec, image))
    target = _cut_target(image, spec, band, ra, dec, _pixel_target(ra, dec, config), config=config)
    sky, _ = frame_sky(image, fwhm=spec.fwhm, order=config.sky_order, nsigma=config.sky_nsigma,
                       max_grow=config.max_grow, method=config.sky_method, box=config.sky_box,
                       regions=config.sky_regions, label=f"band {band}", bad=_excluded(maps))
    p = _band_after_sky(image, target, config, spec, sky, exptime, gain, band, maps)
    if p.stamps is None:
        return p
    return dataclasses.replace(p, psf=fit_epsf(p.stamps, oversampling=config.oversampling))


def _skies(frames, masks, order, stack=True, **kw):
    """Sky fits of several bands: one ``fit_sky`` call per frame shape (band -> SkyFit or error).

    A mesh or per-region sky (``kw``) is fitted band by band.  Each band's
    residual is checked against its pixel-to-pixel noise.
    """
    stack = stack and kw.get("method", "poly") == "poly" and kw.get("regions") is None
    out = _skies_fit(frames, masks, order, stack, **kw)
    for b, f in out.items():
        if not isinstance(f, Exception):
            sky_residual_check(frames[b], f, masks[b], label=f"band {b}")
    return out


def _skies_fit(frames, masks, order, stack, **kw):
    groups = {}
    for band, data in frames.items():
        groups.setdefault(data.shape if stack else band, []).append(band)
    out = {}
    for bands in groups.values():
        if len(bands) > 1:
            try:
                fit = fit_sky(np.stack([frames[b] for b in bands]), np.stack([masks[b] for b in bands]), order=order)
            except ValueError:  # one band cannot be fitted: find it below, band by band
                pass
            else:
                for i, b in enumerate(bands):
                    out[b] = SkyFit(fit.background[i], fit.coeffs[i], fit.order, float(fit.rms[i]), fit.method)
                continue
        for b in bands:
            try:
                out[b] = fit_sky(frames[b], masks[b], order=order, **kw)
            except ValueError as exc:
                out[b] = exc
    return out


def _psfs(stamps, oversampling):
    """PSF fits of several bands in one ``fit_epsf`` call (band -> EPSFResult or error).

    Bands with fewer stars are padded with fully masked stamps, which the
    fit ignores; each band's result is cut back to its own stars.
    """
    out = {}
    if len(stamps) > 1 and len({st.data.shape[1:] for st in stamps.values()}) == 1:
        n = max(len(st.data) for st in stamps.values())

        def pad(a, fill):
            return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], fill, a.dtype)])

        stack = {key: np.stack([pad(getattr(st, key), fill) for st in stamps.values()])
                 for key, fill in (("data", 0.0), ("sigma", 1.0), ("mask", True))}
        centre = (stack["data"].shape[-1] - 1) / 2.0
        centers = np.stack([pad(np.asarray(st.positions, float), centre) for st in stamps.values()])
        try:
            fit = fit_epsf(stack["data"], stack["sigma"], stack["mask"], centers=centers, oversampling=oversampling)
        except ValueError:  # a band with no usable stamp: find it below, band by band
            pass
        else:
            for i, (b, st) in enumerate(stamps.items()):
                out[b] = fit.band(i, len(st.data))
            return out
    for b, st in stamps.items():
        try:
            out[b] = fit_epsf(st, oversampling=oversampling)
        except ValueError as exc:
            out[b] = exc
    return out


def prepare_target(images, ra, dec, config, *, progress=None, stack_bands="auto", maps=None):
    """Prepare one target in every band.

    Parameters
    ----------
    images : dict of str -> Image
    ra, dec : float or None
        ICRS degrees; ``None, None``: the target is ``config.x, config.y``
        (0-based pixels).  Then frames without a WCS need their band's
        ``pixel_scale``, and when any frame has no WCS every band is cut by
        pixels and written with a stand-in WCS (a warning says so).
    config : PrepareConfig
    progress : callable, optional
        Called with a short message before each stage.
    stack_bands : {"auto", True, False}
        True: fit the sky of every band in one compiled ``fit_sky`` call (per
        frame shape) and every band's PSF in one ``fit_epsf`` call.  False:
        band by band (``prepare_band``).  ``"auto"`` (default): PSFs in one
        call; skies in one call on a GPU/TPU, band by band on the CPU, where
        one ``fit_sky`` call over B frames ran about 2x slower than B calls
        (``benchmarks/bench_bands.py``).  The products are the same either
        way, to float32 rounding (about 1e-4 of the PSF peak).
    maps : dict of str -> BandMaps or None, optional
        From :func:`read_band_maps` (default: read here, before any work;
        a bad map raises ``ValueError`` ``config: [bands.NAME] ...``).

    Returns
    -------
    dict of str -> BandProducts
        A band that fails (target off its frame, no PSF star, ...) has
        ``error`` set and the other bands are still prepared.
    """
    def say(msg):
        if progress:
            progress(msg)

    errors = (ValueError, TypeError)
    out = {}
    if stack_bands not in ("auto", True, False):
        msg = f"stack_bands must be 'auto', True or False, got {stack_bands!r}"
        raise ValueError(msg)
    pixel = _pixel_target(ra, dec, config)
    if maps is None:
        maps = read_band_maps(config, images)
    no_wcs = [b for b, im in images.items() if isinstance(im, Image) and im.wcs is None]
    use_wcs = not no_wcs
    if pixel is not None and no_wcs and len(no_wcs) < len(images):
        warnings.warn(f"band(s) {', '.join(no_wcs)} have no WCS: every band is cut by pixels (x, y) and written "
                      "with a stand-in WCS, so that the .lyric's one sky position fits them all", stacklevel=2)
    if stack_bands is False:
        for band, image in images.items():
            say(f"{band}: sky, cutout, sigma, mask, stars, PSF")
            try:
                if not use_wcs and image.wcs is not None:  # mixed frames: cut by pixels, as the others
                    image = dataclasses.replace(image, wcs=None)
                out[band] = prepare_band(image, ra, dec, config, config.bands[band], band=band,
                                         maps=maps.get(band))
            except errors as exc:
                out[band] = BandProducts(band=band, error=str(exc))
        return out
    inputs, keep_out, targets = {}, {}, {}
    for band, image in images.items():
        try:
            inputs[band] = _band_inputs(image, config.bands[band], band)
            targets[band] = _cut_target(image, config.bands[band], band, ra, dec, pixel, use_wcs, config)
            keep_out[band] = _band_sky_mask(image, config, config.bands[band])
            if maps.get(band) is not None:
                keep_out[band] = keep_out[band] | _excluded(maps[band])
        except errors as exc:
            out[band] = BandProducts(band=band, error=str(exc))
            inputs.pop(band, None)
    say(f"sky: {', '.join(inputs)}")
    if stack_bands == "auto":
        import jax

        stack_sky = jax.default_backend() != "cpu"
    else:
        stack_sky = bool(stack_bands)
    skies = _skies({b: images[b].data for b in inputs}, keep_out, config.sky_order, stack=stack_sky,
                   method=config.sky_method, box=config.sky_box, regions=config.sky_regions)
    partial = {}
    for band in inputs:
        if isinstance(skies[band], Exception):
            out[band] = BandProducts(band=band, error=str(skies[band]))
            continue
        say(f"{band}: cutout, sigma, mask, stars")
        try:
            partial[band] = _band_after_sky(images[band], targets[band], config, config.bands[band], skies[band],
                                            *inputs[band], band, maps.get(band))
        except errors as exc:
            out[band] = BandProducts(band=band, error=str(exc))
    with_stamps = {b: p.stamps for b, p in partial.items() if p.stamps is not None}
    if with_stamps:
        say(f"PSF: {', '.join(with_stamps)}")
    psfs = _psfs(with_stamps, config.oversampling) if with_stamps else {}
    for band in images:  # keep the caller's band order
        if band in partial:
            res = psfs.get(band)
            if isinstance(res, Exception):
                out[band] = BandProducts(band=band, error=str(res))
            else:
                out[band] = dataclasses.replace(partial[band], psf=res)
    return {b: out[b] for b in images}


def galfits_block(letter, band, cut_file, psf_file, oversampling, r, zeropoint=None, unit="cR"):
    """The ``Ia1)`` ... ``Ia15)`` image lines of one band (see :func:`gsprep.galfits.image_block`).

    ``psf_file`` None: no PSF line.  The PSF named is the native-pixel one
    (``Ia5) 1``; HDU 2 ``NATIVE`` of an oversampled PSF file).
    """
    from .galfits import galfits_filter, image_block

    ref = None if psf_file is None else (psf_file, 2 if oversampling > 1 else 0)
    name, _ = galfits_filter(band)
    return image_block(letter, band, cut_file=cut_file, psf_ref=ref, psf_sampling=1, r=r, filter_name=name,
                       zeropoint=zeropoint, unit=unit)


def product_paths(config, out_dir, *, figures=True):
    """Every file ``write_products`` may write for ``config`` in ``out_dir`` (whether or not it exists)."""
    stem = os.path.join(out_dir, config.name)
    paths = [f"{stem}_images.lyric"]
    if figures:
        paths.append(f"{stem}_psfs.png")
    for band in config.bands:
        paths += [f"{stem}_{band}.fits", f"{stem}_{band}_psf.fits"]
        if figures:
            paths += [f"{stem}_{band}_{fig}.png" for fig in ("sky", "cutout", "funnel", "stars", "psf")]
    return paths


def check_out_dir(config, out_dir, *, figures=True, overwrite=False):
    """Refuse, before any work, an ``out_dir`` that already holds products of this target (unless ``overwrite``)."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        msg = f"out: {out_dir!r} exists and is not a folder"
        raise NotADirectoryError(msg)
    if overwrite:
        return
    there = [os.path.basename(p) for p in product_paths(config, out_dir, figures=figures) if os.path.exists(p)]
    if there:
        more = f" and {len(there) - 3} more" if len(there) > 3 else ""
        msg = (f"out: {out_dir!r} already holds products of {config.name} ({', '.join(there[:3])}{more}); "
               "pass overwrite=True to replace them")
        raise FileExistsError(msg)


def _sigma_form(spec):
    """The SIGFORM header value: the computed formula, or the noise map's kind."""
    if spec.noise is None and spec.noise_hdu is None:
        return "sqrt(|d+s|/(g t)+rms^2)"
    return {"rms": "noise map: rms", "variance": "noise map: sqrt(var)"}.get(spec.noise_kind,
                                                                            f"noise map: 1/sqrt({spec.noise_kind})")


def write_products(products, config, images, out_dir, *, figures=True, overwrite=False):
    """Write per band the cutout file, PSF file, figures, and the GalfitS image blocks.

    Returns a dict band -> list of written paths (or the band's error), and
    writes ``<name>_images.lyric`` with the image blocks of the bands that
    were prepared.  Existing products are kept (``FileExistsError``) unless
    ``overwrite``.
    """
    check_out_dir(config, out_dir, figures=figures, overwrite=overwrite)
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    blocks = {}
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    for band, p in products.items():
        if p.error:
            written[band] = p.error
            continue
        files = []
        spec = config.bands[band]
        cut_file = os.path.join(out_dir, f"{config.name}_{band}.fits")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StandInWCSWarning)  # said once for every band, below
            write_cutout(cut_file, p.cutout, p.mask, p.sigma, header=images[band].header, overwrite=overwrite,
                         provenance={"SKYORD": (p.sky.order, "sky polynomial order"),
                                     "SIGFORM": (_sigma_form(spec), "sigma image formula"),
                                     "MASKNSIG": (config.mask_nsigma, "mask detection threshold"),
                                     "BAND": band})
        files.append(cut_file)
        psf_file = os.path.join(out_dir, f"{config.name}_{band}_psf.fits")
        psf_ref = None
        if p.psf is not None:
            sel = p.stars[np.asarray(p.stars["selected"], bool)]
            write_psf(psf_file, p.psf, stars=sel["id", "x", "y"], overwrite=overwrite)
            files.append(psf_file)
            k = int(p.psf.oversampling)
            # GalfitS: the native-pixel PSF by default (HDU 2 NATIVE), the centred oversampled one (HDU 3 FINE)
            # on request; with k = 1 the primary HDU is both
            if k == 1:
                psf_ref, sampling = (os.path.basename(psf_file), 0), 1
            elif config.lyric_psf == "oversampled":
                psf_ref, sampling = (os.path.basename(psf_file), 3), k
            else:
                psf_ref, sampling = (os.path.basename(psf_file), 2), 1
        header = images[band].header
        filt, _how = galfits_filter(band, header, spec.filter)
        if filt is None:
            warnings.warn(f"band {band!r}: no GalfitS filter name (set filter = \"...\" in [bands.{band}], "
                          "e.g. \"sloan_g\"); its image block has Ia2) "
                          f"{band} and Ia15) 0 (no SED)", stacklevel=2)
        zp = spec.zeropoint
        if zp is None:
            zp, _ = header_zeropoint(header)
        letter = next(letters)
        blocks[letter] = image_block(letter, band, cut_file=os.path.basename(cut_file), psf_ref=psf_ref,
                                     psf_sampling=sampling if psf_ref else 1, r=config.r, filter_name=filt,
                                     zeropoint=zp, unit=spec.unit)
        if figures:
            files += _figures(p, images[band], out_dir, f"{config.name}_{band}")
        written[band] = files
    if figures and any(p.psf is not None for p in products.values() if not p.error):
        from .plots import fig_psfs

        path = os.path.join(out_dir, f"{config.name}_psfs.png")
        fig_psfs({b: p.psf for b, p in products.items() if not p.error and p.psf is not None}, save=path)
    done = {b: p for b, p in products.items() if not p.error}
    standin = [b for b, p in done.items() if p.cutout.wcs is None]
    if standin:
        warnings.warn(f"band(s) {', '.join(standin)}: no WCS; the cutout files carry a stand-in TAN WCS (WCSFAKE = T) "
                      f"with the target at RA, Dec = {STANDIN_CRVAL} (the .lyric's R2): sky positions are not real",
                      StandInWCSWarning, stacklevel=2)
    if blocks:
        lyric = os.path.join(out_dir, f"{config.name}_images.lyric")
        scales = {round(float(p.cutout.pixel_scale), 6) for p in done.values()}
        if standin:
            ra, dec = STANDIN_CRVAL
        elif config.ra is not None:
            ra, dec = config.ra, config.dec
        else:  # target in pixels, every frame with a WCS: its sky position from the first band's WCS
            first = next(iter(done.values())).cutout
            ra, dec = first.ra, first.dec
        text = lyric_text(config.name, ra, dec, blocks, redshift=config.redshift, same_pixels=len(scales) == 1,
                          standin=bool(standin))
        with atomic_write(lyric, overwrite=overwrite) as tmp, open(tmp, "w") as f:
            f.write(text)
    return written


def read_bands(config):
    """Open every band's frame; returns ``(images, errors)``, dicts keyed by band.

    A frame that cannot be read (missing, corrupt, wrong HDU) lands in
    ``errors`` with its message instead of stopping the other bands.
    """
    images, errors = {}, {}
    for band, spec in config.bands.items():
        try:
            images[band] = read_image(spec.file, spec.hdu, unit=spec.unit, band=band)
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            errors[band] = f"{spec.file}: {exc}" if os.fspath(spec.file) not in str(exc) else str(exc)
    return images, errors


@dataclass(frozen=True)
class TargetRun:
    """What ``run_target`` did: the products, the files written per band, and per-band errors."""

    products: dict
    written: dict
    errors: dict

    @property
    def ok(self):
        """True when every band was prepared and written."""
        return not self.errors


def run_target(config, out_dir, *, figures=True, progress=None, overwrite=False):
    """Read every band's frame, prepare the target and write its products to ``out_dir``.

    This is ``gsprep prepare`` as a function (``gsprep batch`` runs it once
    per target).  Bands that fail (unreadable frame, target off the frame, no
    PSF star, ...) are listed in ``errors`` (band -> message, in config
    order) and the other bands are still written.  An ``out_dir`` that
    already holds this target's products is refused before any work unless
    ``overwrite``.
    """
    check_out_dir(config, out_dir, figures=figures, overwrite=overwrite)
    images, read_errors = read_bands(config)
    maps = read_band_maps(config, images)  # a bad noise / DQ / mask map stops here, before any work
    products = prepare_target(images, config.ra, config.dec, config, progress=progress, maps=maps) if images else {}
    written = write_products(products, config, images, out_dir, figures=figures, overwrite=overwrite)
    errors = {}
    for band in config.bands:
        if band in read_errors:
            errors[band] = read_errors[band]
        elif isinstance(written.get(band), str):
            errors[band] = written[band]
    return TargetRun(products=products, written=written, errors=errors)


def _figures(p, image, out_dir, stem):
    from .plots import fig_cutout, fig_funnel, fig_psf, fig_sky, fig_stars

    paths = []

    def save(fn, name, *args, **kw):
        path = os.path.join(out_dir, f"{stem}_{name}.png")
        fn(*args, save=path, **kw)
        paths.append(path)

    save(fig_sky, "sky", image.data, p.sky.background, rms=float(np.mean(p.sky.rms)), unit=image.unit,
         title=f"{stem}: sky subtraction")
    save(fig_cutout, "cutout", p.cutout, p.mask, unit=image.unit, title=f"{stem}: cutout and mask")
    if p.psf is not None:
        save(fig_funnel, "funnel", p.stars, title=f"{stem}: PSF star selection")
        save(fig_stars, "stars", p.stamps, p.psf, title=f"{stem}: PSF stars, model, residual")
        save(fig_psf, "psf", p.psf, title=f"{stem}: PSF")
    return paths

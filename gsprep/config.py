"""The ``gsprep prepare`` / ``gsprep batch`` configuration: the TOML schema, read and checked."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields

import numpy as np

from ._checks import check_choice, check_integer, check_nonnegative, check_number, check_positive, check_ra_dec
from .noise import NOISE_KINDS
from .stars import StarCriteria

__all__ = ["BandSpec", "PrepareConfig", "load_config"]


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
    is bad) and ``user_mask = "FILE[EXT]"`` (nonzero = masked; or a DS9
    region file ``"FILE.reg"``: pixels inside a region masked) mask pixels;
    ``exposure = "FILE[EXT]"`` or ``exposure_hdu = EXT`` (an exposure map,
    seconds per pixel) replaces the exposure time in the sigma image's
    source term, pixel by pixel (exposure <= 0 masked as bad).

    ``preset`` (one of :data:`gsprep.presets.PRESETS`, e.g. ``"jwst_i2d"``)
    fills every key above that the band leaves out from the survey's file
    layout (:func:`gsprep.presets.apply_presets`, when the frame is read);
    ``hdu`` and ``unit`` are then None until it has.  ``preset_notes`` is
    set by it (what the preset assumed), not a TOML key.
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
    exposure: str | None = None
    exposure_hdu: int | str | None = None
    preset: str | None = None
    preset_notes: tuple | None = None
    spcorrection: tuple | None = None  # GalfitS img_cut spcorrection: (east, north) arcsec added to the target
    cut_center: tuple | None = None  # GalfitS img_cut cutposition: the cut centred on this frame pixel (x, y)


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
    sky_regions: tuple | str | None = None  # boxes, or "auto": split where the sky steps (gsprep.sky.find_sky_steps)
    sky_nsigma: float = 3.0
    mask_nsigma: float | None = None  # None: the mask detection's own default (see cutout_mask)
    mask_npixels: int | None = None
    mask_detection: str = "twopass"
    magnification: float | None = None  # None: each neighbour grown by its own measured light (wing_level)
    wing_level: float = 0.1  # noise units: neighbours' light masked down to this surface brightness
    deblend: bool = True
    max_grow: float = 100.0
    addgrow: float = 0.0
    star_nsigma: float = 5.0
    star_npixels: int = 10
    stamp_size: int = 25
    oversampling: int = 2
    psf_degree: int | str = "auto"
    psf: bool = True
    require_target: bool = True
    lyric_psf: str = "native"
    write_sky_subtracted: bool = False
    redshift: float | None = None
    criteria: StarCriteria = field(default_factory=lambda: StarCriteria(size=25))
    x: float | None = None
    y: float | None = None
    # GalfitS generate_PSFs options (docs/guide.md, "GalfitS data preparation, mapped")
    star_catalog: str | None = None  # the user's star list (ra, dec or x, y columns): the PSF stars are exactly these
    stars_from: str = "detected"  # "catalog": the stars are star_catalog's rows, or [criteria] starcord_list's
    gaia: bool = False  # match the detected stars against Gaia DR3 (network; cached)
    psf_fit: bool = True  # false (GalfitS notfit): select and stamp, write the stars file, fit no PSF
    stack_psf: str | None = None  # "median" / "mean" (GalfitS makestackpsf): NAME_BAND_stackpsf.fits
    recenter: str | None = None  # "peak" (GalfitS img_cut usemaxpix): the cut centred on the brightest pixel near
    target_radius: float | None = None  # GalfitS generate_cutmask source_dia: the target's segment within this (px)


_TARGET_KEYS = {"name", "ra", "dec", "x", "y", "r", "redshift"}
_OPTION_KEYS = {f.name for f in fields(PrepareConfig)} - {"name", "ra", "dec", "x", "y", "r", "bands", "criteria",
                                                         "redshift"}
_BAND_KEYS = {f.name for f in fields(BandSpec)} - {"preset_notes"}
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
        if "preset" in spec:
            from .presets import check_preset

            spec["preset"] = _in_section(f"bands.{name}", lambda spec=spec: check_preset(spec["preset"]))
            spec.setdefault("hdu", None)  # from the preset, when the frame is read
            spec.setdefault("unit", None)
        for key in ("noise", "dq", "user_mask", "exposure"):
            if key in spec:
                spec[key] = _in_section(f"bands.{name}", lambda key=key, spec=spec: _map_ref(key, spec[key], here))
        bands[name] = _in_section(f"bands.{name}", lambda spec=spec: _checked_band(BandSpec(**spec)))
    options = _in_section("options", lambda: _checked_options(options))
    if options.get("star_catalog") is not None:  # relative to the config's folder, read (and checked) now
        from .stars import read_star_catalog

        if not os.path.isabs(options["star_catalog"]):
            options["star_catalog"] = os.path.join(here, options["star_catalog"])
        try:
            _in_section("options", lambda: read_star_catalog(options["star_catalog"]))
        except FileNotFoundError as exc:
            msg = f"config: [options] {exc}"
            raise ValueError(msg) from None
        if options.setdefault("stars_from", "catalog") != "catalog":
            msg = ('config: [options] star_catalog is the PSF star list; stars_from = "detected" would ignore it '
                   '(leave stars_from out, or set it to "catalog")')
            raise ValueError(msg)
    if options.get("stars_from") == "catalog" and options.get("star_catalog") is None and crit.get(
            "starcord_list") is None:
        msg = ('config: [options] stars_from = "catalog" needs star_catalog = "FILE" or [criteria] starcord_list '
               "(the star positions)")
        raise ValueError(msg)
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
    "mask_detection": lambda v: check_choice("mask_detection", v, ("twopass", "single")),
    "magnification": lambda v: _checked_magnification(v),
    "wing_level": lambda v: check_positive("wing_level", v),
    "max_grow": lambda v: check_nonnegative("max_grow", v),
    "addgrow": lambda v: check_nonnegative("addgrow", v),
    "star_nsigma": lambda v: check_positive("star_nsigma", v),
    "star_npixels": lambda v: check_integer("star_npixels", v, lower=1),
    "stamp_size": lambda v: check_integer("stamp_size", v, lower=3, odd=True),
    "oversampling": lambda v: check_integer("oversampling", v, lower=1, upper=16),
    "psf_degree": lambda v: _checked_degree(v),
    "lyric_psf": lambda v: check_choice("lyric_psf", v, ("native", "oversampled")),
    "sky_method": lambda v: check_choice("sky_method", v, ("poly", "mesh")),
    "sky_box": lambda v: check_integer("sky_box", v, lower=4),
    "sky_regions": lambda v: _checked_regions(v),
    "star_catalog": lambda v: _checked_path("star_catalog", v),
    "stars_from": lambda v: check_choice("stars_from", v, ("detected", "catalog")),
    "stack_psf": lambda v: _checked_stack(v),
    "recenter": lambda v: check_choice("recenter", v, ("peak",)),
    "target_radius": lambda v: check_positive("target_radius", v),
}


def _checked_path(key, v):
    if not isinstance(v, str) or not v.strip():
        msg = f"{key} must be a file path (a string), got {v!r}"
        raise TypeError(msg)
    return v


def _checked_stack(v):
    """``stack_psf``: false (none), ``"median"`` or ``"mean"``; true means ``"median"``."""
    if v is False:
        return None
    if v is True:
        return "median"
    return check_choice("stack_psf", v, ("median", "mean"))


def _checked_spcorrection(v, key="spcorrection", what="[east, north] in arcsec"):
    """``spcorrection = [east, north]`` arcsec (GalfitS ``img_cut``'s sky-position correction), or another pair."""
    ok = (isinstance(v, (list, tuple)) and len(v) == 2
          and all(isinstance(q, (int, float)) and not isinstance(q, bool) and np.isfinite(q) for q in v))
    if not ok:
        msg = f"{key} must be {what} (two numbers), got {v!r}"
        raise TypeError(msg)
    return (float(v[0]), float(v[1]))


def _checked_magnification(v):
    v = check_positive("magnification", v)
    if v < 1:
        msg = f"magnification must be >= 1, got {v!r}"
        raise ValueError(msg)
    return v


def _checked_degree(v):
    if v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 3:
        msg = f"psf_degree must be 0, 1, 2, 3 or \"auto\", got {v!r}"
        raise ValueError(msg)
    return v


def _checked_regions(v):
    """``sky_regions``: a list of ``[x0, x1, y0, y1]`` boxes (0-based pixels, end excluded), or ``"auto"``."""
    if v == "auto":
        return v
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(q, int) and not isinstance(q, bool) for q in b)
        for b in v)
    if not ok:
        msg = f"sky_regions must be a list of [x0, x1, y0, y1] integer boxes or \"auto\", got {v!r}"
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
    if not (spec.preset is not None and spec.unit is None):
        check_choice("unit", spec.unit, ("cR", "counts"))
    if spec.filter is not None and not (isinstance(spec.filter, str) and spec.filter.strip()):
        msg = f"filter must be a GalfitS filter name (a string such as 'sloan_g'), got {spec.filter!r}"
        raise TypeError(msg)
    if (not isinstance(spec.hdu, (int, str)) or isinstance(spec.hdu, bool)) and not (
            spec.preset is not None and spec.hdu is None):
        msg = f"hdu must be an HDU index or EXTNAME, got {spec.hdu!r}"
        raise TypeError(msg)
    spec = _checked_maps(spec)
    if spec.spcorrection is not None:
        spec = dataclasses.replace(spec, spcorrection=_checked_spcorrection(spec.spcorrection))
    if spec.cut_center is not None:
        spec = dataclasses.replace(spec, cut_center=_checked_spcorrection(spec.cut_center, "cut_center",
                                                                          "[x, y] in 0-based frame pixels"))
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
    """A ``noise``, ``dq``, ``user_mask`` or ``exposure`` value checked, its path made absolute (config-relative)."""
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
    """The noise, DQ, user-mask and exposure-map keys of a band checked (not read: see ``read_band_maps``)."""
    for key in ("noise", "dq", "user_mask", "exposure"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            msg = f'{key} must be "FILE" or "FILE[EXT]" (EXT an HDU index or EXTNAME), got {value!r}'
            raise TypeError(msg)
    for key in ("noise_hdu", "dq_hdu", "exposure_hdu"):
        _checked_hdu(key, getattr(spec, key))
    if spec.exposure is not None and spec.exposure_hdu is not None:
        msg = "give exposure (another file, \"FILE[EXT]\") or exposure_hdu (an HDU of file), not both"
        raise ValueError(msg)
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
        if not has_noise and spec.preset is None:  # with a preset: the kind of the preset's noise map
            msg = "noise_kind is set but no noise map: give noise = \"FILE[EXT]\" or noise_hdu = EXT"
            raise ValueError(msg)
        check_choice("noise_kind", spec.noise_kind, tuple(NOISE_KINDS))
    dq_bad = spec.dq_bad
    if dq_bad is not None:
        if spec.dq is None and spec.dq_hdu is None and spec.preset is None:
            msg = "dq_bad is set but no DQ map: give dq = \"FILE[EXT]\" or dq_hdu = EXT"
            raise ValueError(msg)
        ok = (isinstance(dq_bad, (list, tuple)) and len(dq_bad) > 0
              and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in dq_bad))
        if not ok:
            msg = f"dq_bad must be a list of DQ bit values (positive integers, e.g. [1, 4, 16]), got {dq_bad!r}"
            raise TypeError(msg)
        dq_bad = tuple(dq_bad)
    return dataclasses.replace(spec, dq_bad=dq_bad)

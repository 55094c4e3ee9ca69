"""Presets: where the survey file layouts GalfitS users bring keep the noise, bad pixels, exposure, gain and zero point.

A band's ``preset = "..."`` (TOML) fills the :class:`gsprep.config.BandSpec`
keys the band leaves out (``hdu``, ``unit``, ``noise``/``noise_hdu`` and
``noise_kind``, ``dq_hdu``/``dq_bad``, ``exptime``, ``gain``,
``zeropoint``) from the file's own layout, read when the frame is read
(:func:`apply_presets`); a key the band gives always wins (a noise or DQ
location given by the band replaces the preset's location and kind
together).  Whatever a preset has to assume is said in one
:class:`PresetWarning` line per band.  The noise and DQ maps then go the one
way every map goes (:func:`gsprep.pipeline.read_band_maps`); only SDSS
frames, whose error is a recipe rather than a stored map, get their sigma
image from :func:`sdss_sigma`.

Layouts, as their documentation gives them:

- ``jwst_i2d``: JWST resampled images (jwst pipeline "Data Products":
  ``SCI`` in MJy/sr, ``ERR`` the total 1-sigma error, the square root of the
  summed ``VAR_*`` arrays, ``WHT``, ``CON``; a ``DQ`` array when present,
  bit ``DO_NOT_USE`` = 1 bad; ``PIXAR_SR`` the pixel area in sr).  AB zero
  point ``8.90 - 2.5 log10(1e6 * PIXAR_SR)``.
- ``hst_drz`` / ``hst_drc``: HST AstroDrizzle products (``SCI`` in e-/s,
  ``WHT``, ``CTX``; ``PHOTFLAM``, ``PHOTPLAM``, ``EXPTIME``).  AB zero point
  ``-2.5 log10(PHOTFLAM) - 5 log10(PHOTPLAM) - 2.408``.
- ``legacy``: Legacy Surveys coadds ``legacysurvey-BRICK-image-B.fits.fz``
  with ``legacysurvey-BRICK-invvar-B.fits.fz`` (inverse variance), in
  nanomaggies: AB zero point 22.5.
- ``sdss_frame``: SDSS ``frame-B-RUN-CAMCOL-FIELD.fits`` (data model
  "frame"): HDU 0 in nanomaggies (sky subtracted), HDU 1 the calibration
  vector (nanomaggies per count, per column), HDU 2 the sky (``ALLSKY``
  with ``XINTERP``, ``YINTERP``); error ``dn = img / cimg + simg``,
  ``dn_err = sqrt(dn / gain + darkVariance)``, ``err = dn_err * cimg`` with
  the gain and dark variance per camcol and filter of the data model's
  table.  AB zero point 22.5.
- ``2mass``: 2MASS Atlas Images (DN, ``MAGZP``): per the Explanatory
  Supplement (VI.8.a) the source term is Poisson over ``Nc = 6`` coadded
  frames and the background noise is measured; see :data:`TWOMASS`.
- ``mef``: any multi-extension file: ``SCI`` (else the first image), a noise
  extension by EXTNAME (``ERR``/``ERROR``/``SIGMA``/``RMS``, ``VAR``,
  ``IVAR``/``INVVAR``, ``WHT``/``WEIGHT``) and ``DQ``/``BPM``/``MASK``/``FLAGS``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings

import numpy as np
from astropy.io import fits

from ._checks import header_positive
from .io import AssumptionWarning

__all__ = [
    "JWST_DQ",
    "PRESETS",
    "SDSS_DARK_VARIANCE",
    "SDSS_GAIN",
    "TWOMASS",
    "PresetWarning",
    "apply_presets",
    "check_preset",
    "detect_preset",
    "has_noise_map",
    "preset_bad",
    "preset_noise",
    "resolve_band",
    "sdss_gain_dark",
    "sdss_sigma",
]

#: preset name -> the layout it reads
PRESETS = {
    "jwst_i2d": "JWST resampled image *_i2d.fits: SCI (MJy/sr), ERR (rms), DQ, WHT; PIXAR_SR",
    "hst_drz": "HST drizzled image *_drz.fits: SCI (e-/s), WHT, CTX; PHOTFLAM/PHOTPLAM, EXPTIME",
    "hst_drc": "HST drizzled CTE-corrected image *_drc.fits: as hst_drz",
    "legacy": "Legacy Surveys coadd legacysurvey-BRICK-image-B.fits.fz + its -invvar- file (nanomaggies)",
    "sdss_frame": "SDSS frame-B-RUN-CAMCOL-FIELD.fits: nanomaggies; calibration vector HDU 1, sky HDU 2",
    "2mass": "2MASS Atlas Image: DN, MAGZP",
    "mef": "generic multi-extension file: SCI (or the first image), ERR/VAR/IVAR/WHT and DQ by EXTNAME",
    "auto": "detected from the file's headers (detect_preset): one of the above, or none (the frame read as given)",
}

#: JWST DQ flags (jwst pipeline, "Data Quality Flags"): name -> bit value
JWST_DQ = {"DO_NOT_USE": 1, "SATURATED": 2, "JUMP_DET": 4, "DROPOUT": 8, "OUTLIER": 16, "PERSISTENCE": 32,
           "AD_FLOOR": 64, "CHARGELOSS": 128, "UNRELIABLE_ERROR": 256, "NON_SCIENCE": 512}

#: SDSS gain (e-/count) per camcol (1-6) and filter (data model "frame"); a pair is (run < 1100, run >= 1100)
SDSS_GAIN = {
    1: {"u": 1.62, "g": 3.32, "r": 4.71, "i": 5.165, "z": 4.745},
    2: {"u": (1.595, 1.825), "g": 3.855, "r": 4.6, "i": 6.565, "z": 5.155},
    3: {"u": 1.59, "g": 3.845, "r": 4.72, "i": 4.86, "z": 4.885},
    4: {"u": 1.6, "g": 3.995, "r": 4.76, "i": 4.885, "z": 4.775},
    5: {"u": 1.47, "g": 4.05, "r": 4.725, "i": 4.64, "z": 3.48},
    6: {"u": 2.17, "g": 4.035, "r": 4.895, "i": 4.76, "z": 4.69},
}

#: SDSS dark variance (counts^2) per camcol and filter (data model "frame"); a pair is (run < 1500, run >= 1500)
SDSS_DARK_VARIANCE = {
    1: {"u": 9.61, "g": 15.6025, "r": 1.8225, "i": 7.84, "z": 0.81},
    2: {"u": 12.6025, "g": 1.44, "r": 1.00, "i": (5.76, 6.25), "z": 1.0},
    3: {"u": 8.7025, "g": 1.3225, "r": 1.3225, "i": 4.6225, "z": 1.0},
    4: {"u": 12.6025, "g": 1.96, "r": 1.3225, "i": (6.25, 7.5625), "z": (9.61, 12.6025)},
    5: {"u": 9.3025, "g": 1.1025, "r": 0.81, "i": 7.84, "z": (1.8225, 2.1025)},
    6: {"u": 7.0225, "g": 1.8225, "r": 0.9025, "i": 5.0625, "z": 1.21},
}

#: 2MASS Atlas Images: frames coadded per pixel and the gain the preset assumes when the header has none
TWOMASS = {"frames": 6, "gain": 10.0}

#: generic noise extensions, in the order they are looked for: EXTNAMEs -> noise_kind
_MEF_NOISE = ((("ERR", "ERROR", "SIGMA", "RMS", "NOISE"), "rms"), (("VAR", "VARIANCE"), "variance"),
              (("IVAR", "INVVAR", "IVM"), "ivar"), (("WHT", "WEIGHT"), "weight"))
_MEF_DQ = ("DQ", "BPM", "MASK", "FLAGS", "BADPIX")


class PresetWarning(AssumptionWarning):
    """What a preset had to assume about a band's frame (one line per band)."""


def check_preset(name):
    """``name`` when it is a preset, else ``ValueError`` ``preset: unknown 'foo' (known: ...)``."""
    if not isinstance(name, str) or name not in PRESETS:
        msg = f"preset: unknown {name!r} (known: {', '.join(PRESETS)})"
        raise ValueError(msg)
    return name


# --------------------------------------------------------------------------
# the file's layout


@dataclasses.dataclass
class _Layout:
    """EXTNAMEs and headers of a FITS file (no pixels read)."""

    path: str
    names: list
    headers: list
    images: list

    @classmethod
    def read(cls, path):
        with fits.open(path) as hdul:
            names = [str(h.name).strip().upper() for h in hdul]
            headers = [h.header.copy() for h in hdul]
            images = [i for i, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2]
        return cls(os.fspath(path), names, headers, images)

    def find(self, *names):
        """Index of the first image HDU whose EXTNAME is one of ``names``, else None."""
        for n in names:
            for i in self.images:
                if self.names[i] == n:
                    return i
        return None

    def first_image(self):
        if not self.images:
            msg = f"{self.path!r} has no image HDU"
            raise ValueError(msg)
        return self.images[0]

    def number(self, keys, *hdus):
        """The first positive number among ``keys`` in the headers ``hdus`` (in order), else None."""
        for i in hdus:
            for key in keys:
                v = header_positive(self.headers[i], key)
                if v is not None:
                    return v
        return None

    def text(self, key, *hdus):
        for i in hdus:
            v = self.headers[i].get(key)
            if isinstance(v, str) and v.strip():
                return v.strip()
        return ""


def _sci(lay, notes):
    """The science HDU: EXTNAME SCI, else the first image HDU (said)."""
    sci = lay.find("SCI")
    if sci is None:
        sci = lay.first_image()
        notes.append(f"no SCI extension: the image is HDU {sci} ({lay.names[sci] or 'no EXTNAME'})")
    return sci


def _jwst(lay, spec):
    notes, noise_notes = [], []
    sci = _sci(lay, notes)
    out = {"hdu": sci, "unit": "cR"}
    err = lay.find("ERR")
    if err is not None:
        out.update(noise_hdu="ERR", noise_kind="rms")
    else:
        noise_notes.append("no ERR extension: the sigma image is computed from EXPTIME and GAIN")
    if lay.find("DQ") is not None:
        out.update(dq_hdu="DQ", dq_bad=(JWST_DQ["DO_NOT_USE"],))
    bunit = lay.text("BUNIT", sci, 0)
    pixar = lay.number(("PIXAR_SR",), sci, 0)
    unit = bunit.replace(" ", "").lower()
    if pixar is not None and unit in ("mjy/sr", ""):
        out["zeropoint"] = 8.90 - 2.5 * math.log10(1e6 * pixar)
        if not unit:
            out["zeropoint_note"] = "no BUNIT: MJy/sr assumed for the zero point 8.90 - 2.5 log10(1e6 PIXAR_SR)"
    else:
        why = "no PIXAR_SR" if pixar is None else f"BUNIT {bunit!r} is not MJy/sr"
        out["zeropoint_note"] = f"{why}: no zero point (Ia10 -1); give zeropoint = AB_ZP"
    t = lay.number(("EFFEXPTM", "XPOSURE", "EXPTIME", "TMEASURE"), 0, sci)
    if t is not None:
        out["exptime"] = t
    return out, notes, noise_notes


def _hst(lay, spec):
    notes, noise_notes = [], []
    sci = _sci(lay, notes)
    bunit = lay.text("BUNIT", sci, 0)
    per_s = not bunit or "/S" in bunit.upper()
    out = {"hdu": sci, "unit": "cR" if per_s else "counts", "gain": 1.0}  # the pixels are electrons
    if not bunit:
        notes.append("no BUNIT: ELECTRONS/S assumed")
    t = lay.number(("EXPTIME",), 0, sci)
    t_used = spec.exptime or t
    if lay.find("WHT") is not None:
        # WHT is inverse variance only for final_wht_type = 'IVM'; AstroDrizzle's default 'EXP' (the archive's
        # products) makes it an exposure-time map: the sigma is computed, WHT > 0 marks the pixels with data
        out["noise_hdu_if_asked"] = "WHT"
        noise_notes.append(f"sigma image from the uniform exposure time {t_used:g} s (the pixels are e-: gain "
                           "1) and the measured sky noise, WHT = 0 pixels masked; for a WHT drizzled with "
                           "final_wht_type = 'IVM' set noise_kind = \"weight\" to use it as the noise" if t_used else
                           "no EXPTIME: give exptime = SECONDS (or noise_kind = \"weight\" for an IVM-drizzled WHT)")
    else:
        noise_notes.append(f"no WHT extension: sigma image from the uniform exposure time {t_used} s (gain 1, e-) and "
                           "the measured sky noise")
    if t is not None:
        out["exptime"] = t
    flam = lay.number(("PHOTFLAM",), sci, 0)
    plam = lay.number(("PHOTPLAM",), sci, 0)
    if flam is not None and plam is not None:
        zp = -2.5 * math.log10(flam) - 5 * math.log10(plam) - 2.408
        if not per_s:
            if t is None:
                out["zeropoint_note"] = f"BUNIT {bunit!r} (counts) and no EXPTIME: no zero point (Ia10 -1)"
                return out, notes, noise_notes
            zp += 2.5 * math.log10(t)
        out["zeropoint"] = zp
    else:
        out["zeropoint_note"] = "no PHOTFLAM/PHOTPLAM: no zero point (Ia10 -1); give zeropoint = AB_ZP"
    return out, notes, noise_notes


def _legacy(lay, spec):
    notes, noise_notes = [], []
    out = {"hdu": lay.first_image(), "unit": "cR", "zeropoint": 22.5}
    folder, base = os.path.split(lay.path)
    if "-image-" in base:
        inv = os.path.join(folder, base.replace("-image-", "-invvar-", 1))
        if os.path.isfile(inv):
            k = _Layout.read(inv).first_image()
            out.update(noise=f"{inv}[{k}]", noise_kind="ivar")
        else:
            out["noise_error"] = (f"preset legacy: no inverse-variance file {os.path.basename(inv)} next to {base}; "
                                  "give noise = \"FILE[EXT]\" with noise_kind = \"ivar\"")
    else:
        out["noise_error"] = (f"preset legacy: {base} is not named legacysurvey-BRICK-image-BAND.fits[.fz], so its "
                              "-invvar- file cannot be found; give noise = \"FILE[EXT]\" with noise_kind = \"ivar\"")
    return out, notes, noise_notes


def sdss_gain_dark(header):
    """``(gain, dark_variance, notes)`` of an SDSS frame from its CAMCOL, FILTER and RUN (the data model's table).

    A missing or unknown CAMCOL or FILTER: the mean over the camcols (and
    filters) is taken and ``notes`` says so; a missing RUN takes the later
    runs' values where the table has two.
    """
    notes = []

    def pick(v, run, cut):
        if isinstance(v, tuple):
            return v[0] if run is not None and run < cut else v[1]
        return v

    try:
        camcol = int(header.get("CAMCOL"))
    except (TypeError, ValueError):
        camcol = None
    filt = str(header.get("FILTER", "")).strip().lower()[:1]
    try:
        run = int(header.get("RUN"))
    except (TypeError, ValueError):
        run = None
    cols = [camcol] if camcol in SDSS_GAIN else list(SDSS_GAIN)
    bands = [filt] if filt and filt in "ugriz" else list("ugriz")
    gain = float(np.mean([pick(SDSS_GAIN[c][b], run, 1100) for c in cols for b in bands]))
    dark = float(np.mean([pick(SDSS_DARK_VARIANCE[c][b], run, 1500) for c in cols for b in bands]))
    if len(cols) > 1 or len(bands) > 1:
        what = " and ".join(w for w, n in (("CAMCOL", len(cols)), ("FILTER", len(bands))) if n > 1)
        notes.append(f"no valid {what} in the header: gain {gain:.3f} e-/count and dark variance {dark:.3f} "
                     "counts^2 assumed (the mean of the SDSS table)")
    elif run is None and (isinstance(SDSS_GAIN[camcol][filt], tuple)
                          or isinstance(SDSS_DARK_VARIANCE[camcol][filt], tuple)):
        notes.append(f"no RUN in the header: the later runs' gain {gain} and dark variance {dark} assumed")
    return gain, dark, notes


def _sdss(lay, spec):
    notes, noise_notes = [], []
    out = {"hdu": 0 if 0 in lay.images else lay.first_image(), "unit": "cR", "zeropoint": 22.5}
    h = lay.headers[out["hdu"]]
    t = lay.number(("EXPTIME",), out["hdu"])
    if t is not None:
        out["exptime"] = t
    _, _, gnotes = sdss_gain_dark(h)
    noise_notes += gnotes
    if len(lay.headers) < 2 or lay.headers[1].get("NAXIS", 0) < 1:
        if header_positive(h, "NMGY") is None:
            out["noise_error"] = ("preset sdss_frame: no calibration vector (HDU 1) and no NMGY in the header, so the "
                                  "SDSS error recipe cannot be applied; give noise = \"FILE[EXT]\" and noise_kind")
        else:
            noise_notes.append("no calibration vector (HDU 1): NMGY (nanomaggies per count) taken for every column")
    if len(lay.headers) < 3:
        noise_notes.append("no sky (HDU 2): the sky's Poisson noise is left out of the error (sky 0 counts)")
    return out, notes, noise_notes


def _2mass(lay, spec):
    notes, noise_notes = [], []
    hdu = 0 if 0 in lay.images else lay.first_image()
    out = {"hdu": hdu, "unit": "counts"}
    zp = lay.number(("MAGZP",), hdu, 0)
    if zp is not None:
        out["zeropoint"] = zp
    else:
        out["zeropoint_note"] = "no MAGZP: no zero point (Ia10 -1); give zeropoint = AB_ZP"
    g = lay.number(("GAIN",), hdu, 0)
    nc = TWOMASS["frames"]
    if g is None:
        g = TWOMASS["gain"]
        out["gain_note"] = (f"2MASS Atlas Image: source Poisson term over Nc = {nc} coadded frames with gain "
                            f"{g:g} e-/DN (no GAIN in the header): effective gain {g * nc:g} e-/DN; the background "
                            "noise is measured")
    else:
        out["gain_note"] = (f"2MASS Atlas Image: source Poisson term over Nc = {nc} coadded frames: effective gain "
                            f"{g * nc:g} e-/DN (GAIN {g:g} x {nc}); the background noise is measured")
    out["gain"] = g * nc
    return out, notes, noise_notes


def _mef(lay, spec):
    notes, noise_notes = [], []
    sci = _sci(lay, notes)
    out = {"hdu": sci}
    for names, kind in _MEF_NOISE:
        k = lay.find(*names)
        if k is not None and k != sci:
            out.update(noise_hdu=lay.names[k], noise_kind=kind)
            if kind == "weight":
                noise_notes.append(f"{lay.names[k]} taken as an inverse-variance weight map")
            break
    k = lay.find(*_MEF_DQ)
    if k is not None and k != sci:
        out["dq_hdu"] = lay.names[k]
        out["dq_hdu_note"] = f"{lay.names[k]}: any nonzero value is a bad pixel"
    bunit = lay.text("BUNIT", sci, 0)
    if "noise_hdu" not in out and not bunit:
        out["unit_note"] = "no BUNIT: count rate (cR, counts/s) assumed"
    out["unit"] = "counts" if bunit and "/S" not in bunit.upper().replace(" ", "") and "COUNT" in bunit.upper() \
        else "cR"
    from .galfits import header_zeropoint

    for i in (sci, 0):
        zp, _ = header_zeropoint(lay.headers[i])
        if zp is not None:
            out["zeropoint"] = zp
            break
    t = lay.number(("EXPTIME",), sci, 0)
    if t is not None:
        out["exptime"] = t
    g = lay.number(("GAIN", "CCDGAIN"), sci, 0)
    if g is not None:
        out["gain"] = g
    return out, notes, noise_notes


def _detect(lay):
    """``(preset, why)`` from a file's headers and layout, or ``(None, why_not)`` (see :func:`detect_preset`)."""
    base = os.path.basename(lay.path)
    idx = sorted(set(lay.images) | {0})

    def val(key):
        """``(hdu, value)`` of the first header (primary first) with a string ``key``, else ``(None, "")``."""
        for i in idx:
            v = lay.headers[i].get(key)
            if isinstance(v, str) and v.strip():
                return i, v.strip()
        return None, ""

    def has(key):
        return any(key in lay.headers[i] for i in idx)

    _, tel = val("TELESCOP")
    _, origin = val("ORIGIN")
    tel_u, origin_u = tel.upper(), origin.upper()
    sci = lay.find("SCI")
    if tel_u.startswith("JWST") and sci is not None and (lay.find("ERR") is not None or has("PIXAR_SR")):
        what = " and ".join(w for w, ok in (("ERR", lay.find("ERR") is not None), ("PIXAR_SR", has("PIXAR_SR"))) if ok)
        return "jwst_i2d", f"TELESCOP = {tel!r} with SCI and {what}"
    if tel_u == "HST" and (sci is not None or has("PHOTFLAM")) and (lay.find("WHT") is not None or has("PHOTFLAM")):
        _, fname = val("FILENAME")
        drc = (fname or base).lower().replace(".gz", "").replace(".fits", "").endswith("_drc")
        what = " and ".join(w for w, ok in (("WHT", lay.find("WHT") is not None), ("PHOTFLAM", has("PHOTFLAM")))
                            if ok)
        src = f"FILENAME = {fname!r}" if fname else f"file name {base!r}"
        return ("hst_drc" if drc else "hst_drz"), f"TELESCOP = 'HST' with {what} ({src})"
    if "SDSS" in tel_u or origin_u == "SDSS" or (has("NMGY") and len(lay.headers) >= 3):
        key = (f"TELESCOP = {tel!r}" if "SDSS" in tel_u else f"ORIGIN = {origin!r}" if origin_u == "SDSS"
               else "NMGY with HDU 1 and HDU 2")
        return "sdss_frame", key
    if "2MASS" in origin_u or "2MASS" in tel_u:
        key = f"ORIGIN = {origin!r}" if "2MASS" in origin_u else f"TELESCOP = {tel!r}"
        return "2mass", key + (" with MAGZP" if has("MAGZP") else "")
    if re.match(r"^legacysurvey-.+-image-.+\.fits", base):
        return "legacy", f"the file name {base!r} (legacysurvey-BRICK-image-BAND)"
    for key in ("LEGPIPEV", "BRICKNAM"):
        if has(key):
            return "legacy", f"{key} (a Legacy Surveys header)"
    _, survey = val("SURVEY")
    if survey.upper() in ("DECALS", "BASS", "MZLS", "DES", "DECAM", "LS"):
        return "legacy", f"SURVEY = {survey!r}"
    if len(lay.images) > 1:
        names = ", ".join(lay.names[i] or str(i) for i in lay.images)
        return "mef", f"{len(lay.images)} image extensions ({names})"
    why = f"TELESCOP = {tel!r}" if tel else "no TELESCOP"
    return None, f"{why}, one image HDU, no survey keywords"


def detect_preset(path):
    """The preset a file's headers point to and why: ``(name, reason)``, or ``(None, reason)`` when none.

    ``preset = "auto"`` (TOML) and ``gsprep psf --preset auto`` use it.  In
    order: ``TELESCOP = 'JWST'`` with ``SCI`` and ``ERR`` or ``PIXAR_SR``:
    ``jwst_i2d``; ``TELESCOP = 'HST'`` with ``SCI``/``WHT`` or ``PHOTFLAM``:
    ``hst_drc`` when ``FILENAME`` (else the file name) ends in ``_drc``,
    else ``hst_drz``; ``TELESCOP`` naming SDSS, ``ORIGIN = 'SDSS'``, or
    ``NMGY`` with HDUs 1 and 2: ``sdss_frame``; ``ORIGIN``/``TELESCOP``
    naming 2MASS: ``2mass``; a ``legacysurvey-BRICK-image-BAND`` file name,
    ``LEGPIPEV``/``BRICKNAM``, or ``SURVEY`` = a Legacy Surveys survey:
    ``legacy``; several image extensions: ``mef``; else None.
    """
    return _detect(_Layout.read(path))


_RULES = {"jwst_i2d": _jwst, "hst_drz": _hst, "hst_drc": _hst, "legacy": _legacy, "sdss_frame": _sdss,
          "2mass": _2mass, "mef": _mef}

_NOISE_KEYS = ("noise", "noise_hdu", "noise_kind")
_DQ_KEYS = ("dq", "dq_hdu", "dq_bad")


def has_noise_map(spec):
    """Whether the band's sigma image comes from a noise map (its own, its preset's, or the SDSS recipe)."""
    return (spec.noise is not None or spec.noise_hdu is not None
            or (spec.preset == "sdss_frame" and spec.preset_notes is not None))


def resolve_band(spec, band="band"):
    """``spec`` with the keys it leaves out filled from its preset's layout (the file's headers are read).

    A key the band gives wins; a noise (or DQ) location the band gives
    replaces the preset's location and kind together (``dq_bad`` alone keeps
    the preset's DQ map with the band's bits).  What the preset assumes is
    one :class:`PresetWarning` line.  A file that cannot be opened is left to
    :func:`gsprep.pipeline.read_bands` to report (``hdu`` 0, ``unit`` cR).

    Raises ``ValueError`` (``preset NAME: ...``) when the preset cannot find
    the band's noise (a Legacy Surveys image without its invvar file).
    """
    if spec.preset is None or spec.preset_notes is not None:
        return spec
    try:
        lay = _Layout.read(spec.file)
    except (OSError, ValueError, TypeError):
        return dataclasses.replace(spec, hdu=0 if spec.hdu is None else spec.hdu,
                                   unit="cR" if spec.unit is None else spec.unit, preset_notes=(),
                                   preset=None if spec.preset == "auto" else spec.preset)
    detected = []
    if spec.preset == "auto":
        name, why = _detect(lay)
        if name is None:
            warnings.warn(f"band {band} ({os.path.basename(lay.path)}): preset \"auto\": no preset detected ({why}); "
                          "the frame is read as given", PresetWarning, stacklevel=2)
            return dataclasses.replace(spec, preset=None, hdu=0 if spec.hdu is None else spec.hdu,
                                       unit="cR" if spec.unit is None else spec.unit, preset_notes=())
        spec = dataclasses.replace(spec, preset=name)
        detected = [f"preset {name} detected from {why}"]
    out, notes, noise_notes = _RULES[spec.preset](lay, spec)
    own_noise = spec.noise is not None or spec.noise_hdu is not None
    own_dq = spec.dq is not None or spec.dq_hdu is not None
    if not own_noise and spec.noise_kind is not None:  # the band's kind for the preset's noise map
        where = out.get("noise_hdu") or out.get("noise_hdu_if_asked")
        if where is None and out.get("noise") is None:
            msg = (f"preset {spec.preset}: noise_kind is set but the file has no noise map for it; give noise = "
                   "\"FILE[EXT]\" or noise_hdu = EXT")
            raise ValueError(msg)
        out.pop("noise_kind", None)
        out.pop("noise_error", None)
        if where is not None:
            out["noise_hdu"] = where
        noise_notes = []
    out.pop("noise_hdu_if_asked", None)
    if own_noise:
        for key in _NOISE_KEYS + ("noise_error",):
            out.pop(key, None)
        noise_notes = []
    elif "noise_error" in out:
        raise ValueError(out["noise_error"])
    if own_dq:
        for key in _DQ_KEYS + ("dq_hdu_note",):
            out.pop(key, None)
    fill = {}
    for key, value in out.items():
        if key.endswith(("_note", "_error")):
            continue
        if getattr(spec, key) is None:
            fill[key] = value
            note = out.get(f"{key}_note")
            if note:
                notes.append(note)
    if spec.zeropoint is None and "zeropoint" not in out and out.get("zeropoint_note"):
        notes.append(out["zeropoint_note"])
    if spec.dq_bad is not None and not own_dq and "dq_hdu" not in out:
        msg = f"preset {spec.preset}: dq_bad is set but the file has no DQ extension; give dq_hdu or dq"
        raise ValueError(msg)
    computed = not own_noise and "noise_hdu" not in fill and "noise" not in fill and spec.preset != "sdss_frame"
    if computed and (spec.unit or fill.get("unit")) == "cR" and spec.exptime is None and "exptime" not in fill:
        notes.append("no exposure time in the headers (the computed sigma image needs one); give exptime = SECONDS")
    notes = detected + notes + noise_notes
    fill.setdefault("hdu", spec.hdu if spec.hdu is not None else 0)
    fill.setdefault("unit", spec.unit if spec.unit is not None else "cR")
    if spec.hdu is not None:
        fill.pop("hdu")
    if spec.unit is not None:
        fill.pop("unit")
    if notes:
        warnings.warn(f"band {band} (preset {spec.preset}, {os.path.basename(lay.path)}): " + "; ".join(notes),
                      PresetWarning, stacklevel=2)
    return dataclasses.replace(spec, **fill, preset_notes=tuple(notes))


def apply_presets(config):
    """``config`` with every band's preset resolved (:func:`resolve_band`); errors ``config: [bands.NAME] ...``."""
    bands = {}
    for band, spec in config.bands.items():
        try:
            bands[band] = resolve_band(spec, band)
        except ValueError as exc:
            msg = f"config: [bands.{band}] {exc}"
            raise ValueError(msg) from None
    return dataclasses.replace(config, bands=bands)


# --------------------------------------------------------------------------
# SDSS: the error is a recipe, not a stored map


def _sdss_sky(table, shape):
    """The sky image (counts) from HDU 2's ``ALLSKY`` grid, bilinear at (``XINTERP``, ``YINTERP``), edges clamped."""
    from scipy.ndimage import map_coordinates

    allsky = np.asarray(table["ALLSKY"][0], dtype=float)
    allsky = allsky.reshape(allsky.shape[-2:])
    xi = np.asarray(table["XINTERP"][0], dtype=float).ravel()
    yi = np.asarray(table["YINTERP"][0], dtype=float).ravel()
    ny, nx = shape
    if xi.size != nx or yi.size != ny:
        msg = f"SDSS sky (HDU 2): XINTERP/YINTERP have {xi.size}/{yi.size} values but the frame is {nx} x {ny}"
        raise ValueError(msg)
    yy, xx = np.meshgrid(yi, xi, indexing="ij")
    return map_coordinates(allsky, [yy, xx], order=1, mode="nearest")


def sdss_sigma(img, calib, sky, gain, dark_variance):
    """The SDSS frame error (nanomaggies), the data model's recipe.

    ``dn = img / cimg + simg`` (counts, ``cimg`` the calibration vector
    along each row, ``simg`` the sky in counts), ``dn_err = sqrt(dn / gain +
    darkVariance)``, ``err = dn_err * cimg``.  A negative ``dn`` counts as 0.

    >>> float(sdss_sigma(np.array([[1.0]]), np.array([0.01]), np.array([[296.0]]), 4.0, 1.0)[0, 0])
    0.1
    """
    img = np.asarray(img, dtype=float)
    cimg = np.broadcast_to(np.asarray(calib, dtype=float), img.shape)
    dn = img / cimg + np.asarray(sky, dtype=float)
    return np.sqrt(np.maximum(dn, 0.0) / gain + dark_variance) * cimg


def preset_bad(spec, image):
    """Pixels without data that a preset knows of (HST drizzled ``WHT`` = 0, when WHT is not the noise), or None."""
    if spec.preset not in ("hst_drz", "hst_drc") or spec.noise is not None or spec.noise_hdu is not None:
        return None
    with fits.open(spec.file) as hdul:
        if "WHT" not in hdul or hdul["WHT"].data is None:
            return None
        wht = np.asarray(hdul["WHT"].data, dtype=float)
    if wht.shape != image.data.shape:
        msg = f"preset {spec.preset}: WHT has shape {wht.shape} but the image is {image.data.shape}"
        raise ValueError(msg)
    return ~(np.isfinite(wht) & (wht > 0))


def preset_noise(spec, image):
    """``(sigma, label, which)`` of a band whose preset computes its error (SDSS frames), else None."""
    if spec.preset != "sdss_frame" or spec.noise is not None or spec.noise_hdu is not None:
        return None
    with fits.open(spec.file) as hdul:
        h = image.header
        calib = None
        if len(hdul) > 1 and hdul[1].data is not None and np.ndim(hdul[1].data) >= 1:
            calib = np.asarray(hdul[1].data, dtype=float).ravel()
        if calib is None or calib.size != image.data.shape[-1]:
            nmgy = header_positive(h, "NMGY")
            if nmgy is None:
                msg = ("preset sdss_frame: no calibration vector (HDU 1) matching the frame's width and no NMGY; "
                       "give noise and noise_kind")
                raise ValueError(msg)
            calib = np.full(image.data.shape[-1], nmgy)
        sky = 0.0
        if len(hdul) > 2 and isinstance(hdul[2], fits.BinTableHDU):
            sky = _sdss_sky(hdul[2].data, image.data.shape[-2:])
    gain, dark, _ = sdss_gain_dark(h)
    sigma = sdss_sigma(image.data, calib, sky, gain, dark)
    return sigma, f"{spec.file} (SDSS error recipe)", "preset sdss_frame"

"""What GalfitS reads: filter names, zero points, and the ``.lyric`` region, image and atlas lines.

The format follows the GalfitS documentation ("Introduction to GalfitS
Config Files", ``docs/source/config_intro.rst`` of RuancunLi/GalfitS-Public):
``R1)``-``R3)`` the region, ``Ia1)``-``Ia15)`` one image, ``Aa1)``-``Aa7)``
the image atlas.  ``Ia2)`` must be one of GalfitS's filter names (the files
of its ``src/data/filters/``, :data:`GALFITS_FILTERS`) when the SED is used
(``Ia15) 1``); a band gsprep cannot name gets ``Ia15) 0`` (GalfitS then
fits it as a pure photometric image) and a warning.
"""

from __future__ import annotations

import math
import warnings

__all__ = ["BAND_ALIASES", "GALFITS_FILTERS", "galfits_filter", "header_zeropoint", "image_block", "lyric_text"]

#: GalfitS's filter names (``src/data/filters/`` of RuancunLi/GalfitS-Public)
GALFITS_FILTERS = frozenset("""
4star_h 4star_j 4star_ks 4star_m_hlong 4star_m_hshort 4star_m_j1 4star_m_j2 4star_m_j3 acs_f435w acs_f475w
acs_f555w acs_f606w acs_f625w acs_f775w acs_f814w acs_f850lp b ch1 ch2 ch3 ch4 csst_NUV csst_g csst_i csst_r
csst_u csst_y csst_z desi_n_g desi_n_r desi_n_z desi_s_g desi_s_r desi_s_z galex_fuv galex_nuv h i j ks ndwfs_bw
ndwfs_i ndwfs_r newfirm_h newfirm_j newfirm_ks panstarrs_g panstarrs_i panstarrs_r panstarrs_y panstarrs_z r
sloan_g sloan_i sloan_r sloan_u sloan_z ukidss_h ukidss_j ukidss_k ukidss_y v wfc3_f105w wfc3_f110w wfc3_f125w
wfc3_f127m wfc3_f139m wfc3_f140w wfc3_f153m wfc3_f160w wfc3_f218w wfc3_f225w wfc3_f275w wfc3_f438w wfc3_f475w
wfc3_f555w wfc3_f606w wfc3_f625w wfc3_f775w wfc3_f814w wfc3_f850lp wfpc2_f450w wfpc2_f555w wfpc2_f606w
wfpc2_f675w wfpc2_f814w wise_ch1 wise_ch2 wise_ch3 wise_ch4
""".split())

#: band keys users write -> GalfitS filter name (a band key that is already a GalfitS name maps to itself)
BAND_ALIASES = {
    **{f"sdss_{b}": f"sloan_{b}" for b in "ugriz"},
    **{f"sdss{b}": f"sloan_{b}" for b in "ugriz"},
    "2mass_j": "j", "2mass_h": "h", "2mass_k": "ks", "2mass_ks": "ks",
    **{f"ps1_{b}": f"panstarrs_{b}" for b in "grizy"},
    **{f"decals_{b}": f"desi_s_{b}" for b in "grz"},
    **{f"ls_{b}": f"desi_s_{b}" for b in "grz"},
    "w1": "wise_ch1", "w2": "wise_ch2", "w3": "wise_ch3", "w4": "wise_ch4",
    "fuv": "galex_fuv", "nuv": "galex_nuv",
}

_HST = {"ACS": "acs", "WFC3": "wfc3", "WFPC2": "wfpc2"}

#: one-letter GalfitS names that many systems share: used for a band key only when the header names no survey
_AMBIGUOUS = {"b": "Johnson B", "v": "Johnson V", "r": "Cousins R", "i": "Cousins I", "j": "2MASS J",
              "h": "2MASS H", "ks": "2MASS Ks"}


def _text(header, key):
    v = None if header is None else header.get(key)
    return v.strip() if isinstance(v, str) else ""


def galfits_filter(band, header=None, override=None):
    """GalfitS filter name of a band: ``(name or None, how it was found)``.

    In order: ``override`` (the band's ``filter`` in the config); the band
    key itself when it is a GalfitS name other than a one-letter one;
    :data:`BAND_ALIASES`; the frame header (HST ``INSTRUME`` +
    ``FILTER``/``FILTER1``/``FILTER2``; SDSS and 2MASS ``TELESCOP``/``ORIGIN``
    + ``FILTER``); a one-letter band key that is a GalfitS name (``r`` is
    Cousins R there), with a warning.

    >>> galfits_filter("sdss_g")
    ('sloan_g', 'band alias')
    >>> from astropy.io import fits
    >>> galfits_filter("blue", fits.Header({"INSTRUME": "ACS", "FILTER1": "F475W", "FILTER2": "CLEAR2L"}))
    ('acs_f475w', 'header INSTRUME/FILTER1')
    """
    if override:
        if override not in GALFITS_FILTERS:
            warnings.warn(f"band {band!r}: filter {override!r} is not one of GalfitS's filter names "
                          "(gsprep.galfits.GALFITS_FILTERS); written as given", stacklevel=2)
        return override, "config"
    key = str(band).strip()
    low = key.lower()
    if low not in _AMBIGUOUS and (key in GALFITS_FILTERS or low in GALFITS_FILTERS):
        return (key if key in GALFITS_FILTERS else low), "band name"
    if low in BAND_ALIASES:
        return BAND_ALIASES[low], "band alias"
    inst = _text(header, "INSTRUME").upper()
    if inst in _HST:
        for fk in ("FILTER", "FILTER1", "FILTER2"):
            f = _text(header, fk).lower()
            if f and not f.startswith("clear") and f"{_HST[inst]}_{f}" in GALFITS_FILTERS:
                return f"{_HST[inst]}_{f}", f"header INSTRUME/{fk}"
    survey = (_text(header, "TELESCOP") + " " + _text(header, "ORIGIN")).upper()
    f = _text(header, "FILTER").lower()[:1]
    if "SDSS" in survey and f in "ugriz" and f:
        return f"sloan_{f}", "header TELESCOP/FILTER"
    if "2MASS" in survey and f in "jhk" and f:
        return {"j": "j", "h": "h", "k": "ks"}[f], "header TELESCOP/FILTER"
    if low in _AMBIGUOUS:
        warnings.warn(f"band {band!r}: taken as GalfitS's filter {low!r} ({_AMBIGUOUS[low]}); if it is another "
                      f"system, set filter = \"...\" in [bands.{band}] (e.g. \"sloan_{low}\")", stacklevel=2)
        return low, "band name (ambiguous)"
    return None, "unknown"


def header_zeropoint(header):
    """AB zero point of the frame's pixel values from its header: ``(zp or None, keyword)``.

    ``MAGZP``, ``MAGZPT``, ``MAGZERO``, ``ZEROPT``, ``PHOTZP`` or ``ZP``; or
    HST's ``PHOTFLAM`` and ``PHOTPLAM`` (AB: ``-2.5 log10(PHOTFLAM) - 5
    log10(PHOTPLAM) - 2.408``, for images in electrons per second).
    """
    if header is None:
        return None, ""
    for key in ("MAGZP", "MAGZPT", "MAGZERO", "ZEROPT", "PHOTZP", "ZP"):
        v = header.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v), key
    flam, plam = header.get("PHOTFLAM"), header.get("PHOTPLAM")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (flam, plam)):
        unit = _text(header, "BUNIT").upper()
        if not unit or "/S" in unit:
            return -2.5 * math.log10(flam) - 5 * math.log10(plam) - 2.408, "PHOTFLAM/PHOTPLAM"
    return None, ""


def image_block(letter, band, *, cut_file, psf_ref, psf_sampling, r, filter_name=None, zeropoint=None, unit="cR",
                filter_from=None, zeropoint_from=None):
    """The ``Ia1)`` ... ``Ia15)`` lines of one image.

    ``psf_ref`` is ``(file, extension)`` or None (no PSF written: ``Ia4)``
    names none and GalfitS fits without a PSF); ``filter_name`` None writes
    the band key in ``Ia2)`` and ``Ia15) 0`` (no SED for this image).
    ``filter_from`` / ``zeropoint_from`` say in the line's comment where
    the filter name and the zero point came from (e.g. ``"header MAGZP"``).
    """
    p = f"I{letter}"
    zp = -1 if zeropoint is None else round(float(zeropoint), 4)
    psf_line = (f"{p}4) [{psf_ref[0]},{psf_ref[1]}]    # PSF image (odd size, centred, sum 1)" if psf_ref
                else f"{p}4) none    # no PSF was made")
    sed = 1 if filter_name else 0
    return "\n".join([
        f"{p}1) [{cut_file},0]    # input data image (sky-subtracted cutout)",
        f"{p}2) {filter_name or band}    # band of the image"
        + (f" (from {filter_from})" if filter_name and filter_from else "")
        + ("" if filter_name else " (not a GalfitS filter name: no SED, see Ia15)"),
        f"{p}3) [{cut_file},2]    # sigma image",
        psf_line,
        f"{p}5) {psf_sampling if psf_ref else 1}    # PSF fine sampling factor relative to data",
        f"{p}6) [{cut_file},1]    # bad pixel mask (1 = masked)",
        f"{p}7) {unit}    # unit of the image",
        f"{p}8) {r:g}    # size of the cutout region, arcsec (half-size)",
        f"{p}9) -1    # conversion factor from erg/s/cm^2/A to image unit, -1 for default",
        f"{p}10) {zp}    # magnitude photometric zeropoint"
        + (" (unknown)" if zeropoint is None else f" (AB{', from ' + zeropoint_from if zeropoint_from else ''})"),
        f"{p}11) uniform    # sky model",
        f"{p}12) [[0,-0.5,0.5,0.1,0]]    # sky parameter (sky already subtracted by gsprep)",
        f"{p}13) 0    # allow relative shifting",
        f"{p}14) [[0,-0.5,0.5,0.1,0],[0,-0.5,0.5,0.1,0]]    # [shiftx, shifty]",
        f"{p}15) {sed}    # use SED information",
    ])


def lyric_text(name, ra, dec, blocks, *, redshift=None, same_pixels=False, standin=False):
    """A ``.lyric`` data section: the region, the image blocks ``{letter: text}`` and one image atlas.

    ``standin=True``: ``ra, dec`` is the stand-in sky position of cutouts
    whose frames have no WCS (:data:`gsprep.wcs.STANDIN_CRVAL`); ``R2)``'s
    comment says so.
    """
    letters = list(blocks)
    z = "0    # redshift of the target: unknown to gsprep, set it" if redshift is None else f"{redshift:g}"
    region = "\n".join([
        f"R1) {name}    # name of the target",
        f"R2) [{ra},{dec}]    # "
        + ("stand-in sky coordinate (frames without a WCS: WCSFAKE), not real" if standin
           else "sky coordinate of the target [RA, Dec]"),
        f"R3) {z}" + ("" if redshift is None else "    # redshift of the target"),
    ])
    atlas = "\n".join([
        "Aa1) gsprep    # name of the image atlas",
        f"Aa2) {letters!r}    # images in this atlas",
        f"Aa3) {1 if same_pixels else 0}    # whether the images have same pixel size",
        "Aa4) 0    # link relative shiftings",
        "Aa5) []    # spectra",
        "Aa6) []    # aperture size",
        "Aa7) [0]    # references images",
    ])
    body = "\n\n".join(f"# Image {letter.upper()}\n{text}" for letter, text in blocks.items())
    return f"# Region information\n{region}\n\n{body}\n\n# Image atlas\n{atlas}\n"

"""Reading frames and writing gsprep's FITS products.

Files are written only by ``write_*`` functions and always atomically: the
file is written to a temporary name in the destination folder and renamed
into place, so an interrupted run never leaves a half-written FITS file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ._bits import MASK_BITS
from ._checks import check_choice, header_positive
from .results import EPSFResult, psf_shape
from .wcs import STANDIN_CRVAL, WCS_TOL, StandInWCSWarning, cut_wcs_header, pixel_scale, strip_wcs, wcs_deviation

__all__ = ["Image", "HeaderWarning", "AssumptionWarning", "read_image", "write_cutout", "write_psf", "read_psf",
           "atomic_write", "strip_wcs"]

UNITS = ("cR", "counts")


@dataclass(frozen=True)
class Image:
    """One band of one frame, as read from FITS.

    Attributes
    ----------
    data : ndarray
        Pixel values as float64 (2-D ``(ny, nx)`` or a 3-D cube
        ``(nz, ny, nx)``); BSCALE/BZERO applied; inf replaced by NaN.
    wcs : astropy.wcs.WCS or None
        The celestial (2-D) part of the header's WCS, including SIP and
        lookup-table distortions; ``None`` when the header has none.
    header : astropy.io.fits.Header
        The HDU's header.
    unit : {"cR", "counts"}
        Count rate (counts / s) or counts.
    band : str or None
        Band label given by the caller.
    pixel_scale : float or None
        Mean pixel scale in arcsec / pixel, from the WCS.
    exptime, gain : float or None
        EXPTIME (s) and GAIN (e-/ADU) from the header when present and valid
        (an ``EXPOSURE`` whose comment says minutes, as on DSS plates, is
        converted to seconds; one without a unit is taken as seconds with
        an :class:`AssumptionWarning`).
    """

    data: np.ndarray
    wcs: WCS | None
    header: fits.Header
    unit: str
    band: str | None
    pixel_scale: float | None
    exptime: float | None
    gain: float | None


def _image_hdus(hdul):
    return [i for i, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2]


def _header_number(header, keys, path):
    for key in keys:
        if key in header:
            v = header_positive(header, key)
            if v is not None:
                return v
            warnings.warn(
                f"{path}: header {key}={header[key]!r} is not a positive number; ignored",
                stacklevel=3,
            )
    return None


class HeaderWarning(UserWarning):
    """astropy had to fix or could not parse part of a frame's header (one warning per frame read)."""


class AssumptionWarning(UserWarning):
    """gsprep had to assume a value the frame or the config did not give (a gain, a unit, a preset's recipe).

    Always one line that names what was assumed and how to give it instead.
    """


def _header_exptime(header, path):
    """EXPTIME (s), else EXPOSURE: seconds unless its comment says minutes (DSS plates: ``Exposure time minutes``).

    An EXPOSURE in minutes (its comment says so) is converted to seconds; an EXPOSURE whose comment names no
    unit is taken as seconds, with one :class:`AssumptionWarning` line.
    """
    t = _header_number(header, ("EXPTIME",), path)
    if t is not None or "EXPOSURE" not in header:
        return t
    v = _header_number(header, ("EXPOSURE",), path)
    if v is None:
        return None
    comment = str(header.comments["EXPOSURE"]).lower()
    if "min" in comment:  # the header says so: nothing assumed
        return 60.0 * v
    if "sec" in comment or comment.strip() in ("s", "[s]", "(s)"):
        return v
    warnings.warn(f"{path}: no EXPTIME; header EXPOSURE = {v:g} names no unit and is taken as seconds; "
                  "give exptime = SECONDS in the band's config if it is not", AssumptionWarning, stacklevel=3)
    return v


class _HDUError(Exception):
    """A wrong ``hdu`` (message ready for the user)."""


# astropy's framing lines around the real messages: not worth repeating
_HEADER_NOISE = ("Verification reported errors:", "Note: astropy.io.fits uses zero-based indexing.")


def _read_hdu(path, hdu):
    """``(data, header, full_wcs)`` of one HDU; raises ``_HDUError`` for a wrong ``hdu``."""
    with fits.open(path) as hdul:
        images = _image_hdus(hdul)
        where = ", ".join(f"{i} ({hdul[i].name})" for i in images) or "none"
        try:
            h = hdul[hdu]
        except (IndexError, KeyError):
            msg = f"hdu={hdu!r} not in {path!r}: it has {len(hdul)} HDUs; image HDUs: {where}"
            raise _HDUError(msg) from None
        if not h.is_image or h.data is None or h.data.ndim < 2:
            msg = f"hdu={hdu!r} of {path!r} holds no 2-D or 3-D image; image HDUs: {where}"
            raise _HDUError(msg)
        if h.data.ndim > 3:
            msg = f"hdu={hdu!r} of {path!r} has {h.data.ndim} axes; gsprep reads 2-D images and 3-D cubes"
            raise _HDUError(msg)
        header = h.header.copy()
        data = np.array(h.data, dtype=np.float64)
        full = WCS(header, fobj=hdul)
    return data, header, full


def _pass_on(caught, path):
    """Re-issue the warnings recorded while reading ``path``; header fixes become one ``HeaderWarning``."""
    fixes = []
    for w in caught:
        if issubclass(w.category, (fits.verify.VerifyWarning, FITSFixedWarning)):
            for line in str(w.message).splitlines():
                line = " ".join(line.split())
                if line and line not in _HEADER_NOISE and line not in fixes:
                    fixes.append(line)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if fixes:
        msg = f"{path}: astropy fixed {len(fixes)} header problem(s): " + " | ".join(fixes)
        warnings.warn(msg, HeaderWarning, stacklevel=3)


def read_image(path, hdu=0, *, unit="cR", band=None):
    """Read one image HDU of a FITS file.

    Parameters
    ----------
    path : str or path-like
        FITS file (plain, gzip, or tile-compressed).
    hdu : int or str
        HDU index or EXTNAME.  A tile-compressed image is found at the index
        astropy gives it (usually 1).
    unit : {"cR", "counts"}
        Whether pixel values are count rates (counts/s) or counts.
    band : str, optional
        A label for the band, kept on the result.

    Returns
    -------
    Image

    Raises
    ------
    FileNotFoundError, OSError, ValueError
        Missing file, a file that is not FITS or is cut short (the message
        names the path), HDU out of range or without image data (the
        message names the HDUs that do hold images), no finite pixel.

    Warns
    -----
    HeaderWarning
        One warning per frame listing every header problem astropy fixed
        (non-standard cards, WCS keywords it had to repair).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> from gsprep.simulate import tan_wcs
    >>> header = tan_wcs(150.1, 2.2, (50, 50), 0.396).to_header()
    >>> header["EXPTIME"] = 53.9
    >>> path = os.path.join(tempfile.mkdtemp(), "frame.fits")
    >>> fits.writeto(path, np.zeros((50, 50), np.float32), header)
    >>> img = read_image(path, band="r")
    >>> round(img.pixel_scale, 6), img.exptime, img.gain
    (0.396, 53.9, None)
    """
    check_choice("unit", unit, UNITS)
    path = os.fspath(path)
    if not os.path.exists(path):
        msg = f"path: no such file {path!r}"
        raise FileNotFoundError(msg)
    if os.path.isdir(path):
        msg = f"path: {path!r} is a folder, not a FITS file"
        raise IsADirectoryError(msg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded here and passed on below, header fixes as one warning
        try:
            data, header, full = _read_hdu(path, hdu)
        except _HDUError as exc:
            raise ValueError(str(exc)) from None
        except (OSError, TypeError, IndexError, KeyError, EOFError, ValueError) as exc:
            truncated = any("truncated" in str(w.message) for w in caught)
            why = "the file is cut short (truncated)" if truncated else str(exc).split("\n")[0]
            msg = f"path: {path!r} is not a readable FITS file: {why}"
            raise OSError(msg) from None
    _pass_on(caught, path)
    data[~np.isfinite(data)] = np.nan
    if not np.isfinite(data).any():
        msg = f"{path!r} hdu={hdu!r}: the image has no finite pixels (all NaN or inf)"
        raise ValueError(msg)
    wcs = full.celestial if full.has_celestial else None
    if wcs is not None and wcs.naxis != 2:
        wcs = None
    scale = None
    if wcs is not None:
        scale = pixel_scale(wcs)
    return Image(
        data=data,
        wcs=wcs,
        header=header,
        unit=unit,
        band=band,
        pixel_scale=scale,
        exptime=_header_exptime(header, path),
        gain=_header_number(header, ("GAIN", "CCDGAIN"), path),
    )


# --------------------------------------------------------------------------
# headers

def read_map(path, hdu=0):
    """The pixels of one image HDU (a noise, DQ or mask map) as float64, no header or WCS.

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for a
    wrong ``hdu`` (naming the HDUs that hold images) or an unreadable file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        msg = f"no such file {path!r}"
        raise FileNotFoundError(msg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # header fixes of a map do not matter: only its pixels are read
        try:
            data, _, _ = _read_hdu(path, hdu)
        except _HDUError as exc:
            raise ValueError(str(exc)) from None
        except (OSError, TypeError, IndexError, KeyError, EOFError, ValueError) as exc:
            msg = f"{path!r} is not a readable FITS file: {str(exc).splitlines()[0] if str(exc) else exc!r}"
            raise ValueError(msg) from None
    return data


def _quiet_wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


@contextlib.contextmanager
def atomic_write(path, *, overwrite=False):
    """Yield a temporary path next to ``path``; rename it into place on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        msg = f"path: folder {folder!r} does not exist"
        raise FileNotFoundError(msg)
    if os.path.exists(path) and not overwrite:
        msg = f"path: {path!r} exists; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    fd, tmp = tempfile.mkstemp(prefix=".gsprep-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)  # mkstemp makes the file private (0600); give it the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------
# cutout file

def write_cutout(path, cutout, mask, sigma, *, header=None, overwrite=False, provenance=None):
    """Write a cutout in the layout GalfitS reads.

    HDU 0 ``SCI`` (float32 image; header = ``header`` minus its old WCS plus a
    TAN WCS with CRVAL at the target and CRPIX its 1-based pixel; a cut
    without a WCS gets a stand-in one, ``WCSFAKE = T`` and ``WCSDEV = -1``,
    with a :class:`gsprep.wcs.StandInWCSWarning`), HDU 1
    ``MASK`` (uint8, 1 = masked), HDU 2 ``SIGMA`` (float32) and, when ``mask``
    carries bits, HDU 3 ``MASKBITS``.

    Parameters
    ----------
    path : str or path-like
        Output file.  Written atomically; an existing file is kept unless
        ``overwrite``.
    cutout : Cutout
        From :func:`gsprep.cutout`.
    mask : Mask or array
        A :class:`gsprep.Mask` (its ``bits`` go to MASKBITS) or an array,
        nonzero / True = masked (NaN counts as masked).
    sigma : array
        Sigma image, same shape as ``cutout.data``; finite and > 0 at every
        pixel the mask leaves good (an error otherwise: GalfitS divides by it).
    header : astropy.io.fits.Header, optional
        The parent frame's header, copied without its WCS.
    provenance : dict, optional
        Extra ``KEY: value`` or ``KEY: (value, comment)`` cards for HDU 0.
    """
    if not all(hasattr(cutout, a) for a in ("data", "wcs", "center", "ra", "dec", "pixel_scale", "off_frame")):
        msg = f"cutout must be a gsprep Cutout, got {type(cutout).__name__}"
        raise TypeError(msg)
    data = np.asarray(cutout.data)
    bits = getattr(mask, "bits", None)
    mask_arr = np.asarray(getattr(mask, "mask", mask))
    sigma = np.asarray(sigma)
    shape = data.shape[-2:]
    if mask_arr.shape != shape:
        msg = f"mask has shape {mask_arr.shape} but the cutout is {shape}"
        raise ValueError(msg)
    if mask_arr.dtype.kind not in "biuf":
        msg = f"mask must be a boolean or numeric array (nonzero = masked), got dtype {mask_arr.dtype}"
        raise TypeError(msg)
    masked = mask_arr != 0  # NaN, 0.4 and 256 are masked too (a cast to uint8 would lose them)
    if sigma.shape != data.shape:
        msg = f"sigma has shape {sigma.shape} but the cutout data is {data.shape}"
        raise ValueError(msg)
    if sigma.dtype.kind not in "biuf":
        msg = f"sigma must be a real numeric array, got dtype {sigma.dtype}"
        raise TypeError(msg)
    with np.errstate(invalid="ignore"):
        unusable = ~masked & ~(np.isfinite(sigma) & (sigma > 0))
    if unusable.any():
        k = int(np.count_nonzero(unusable))
        msg = (f"sigma is zero, negative or not finite at {k} pixel(s) that the mask leaves good; GalfitS "
               "divides by sigma: mask those pixels or fix the sigma image")
        raise ValueError(msg)
    if bits is not None and np.shape(bits) != shape:
        msg = f"mask.bits has shape {np.shape(bits)} but the cutout is {shape}"
        raise ValueError(msg)

    from . import __version__

    hdr = strip_wcs(header)
    wcs_hdr, dev = cut_wcs_header(cutout)
    hdr.update(wcs_hdr)
    if cutout.wcs is None:
        warnings.warn("write_cutout: the frame has no WCS; the cutout file carries a stand-in TAN WCS (WCSFAKE = T, "
                      f"the target at RA, Dec = {STANDIN_CRVAL}): its sky positions are not real",
                      StandInWCSWarning, stacklevel=2)
    else:
        # the WCS astropy (and GalfitS) will read from the file alone, against the parent's
        dev = wcs_deviation(_quiet_wcs(hdr), cutout)
    if dev > 5 * WCS_TOL:
        warnings.warn(f"write_cutout: the cutout's WCS differs from the parent's by up to {dev:.3f} px "
                      "(WCSDEV); sky positions read from the file are off by that much", stacklevel=2)
    hdr["GSPVER"] = (__version__, "gsprep version")
    hdr["CUTNPIX"] = ((shape[-1] - 1) // 2, "cut half-size n (pixels); size 2n+1")
    hdr["CUTR"] = (float(cutout.r_arcsec), "cut half-size r (arcsec) asked for")
    hdr["PIXSCALE"] = (float(cutout.pixel_scale), "pixel scale (arcsec/pixel)")
    hdr["ORIGX"] = (int(cutout.origin[0]), "0-based parent x of cutout pixel 0")
    hdr["ORIGY"] = (int(cutout.origin[1]), "0-based parent y of cutout pixel 0")
    hdr["WCSDEV"] = (float(dev), "max |file WCS - parent WCS| over the cut (pix)" if dev >= 0
                     else "no parent WCS (stand-in, WCSFAKE)")
    hdr["NOFFFRM"] = (int(np.count_nonzero(cutout.off_frame)), "pixels off the parent frame")
    for key, value in (provenance or {}).items():
        hdr[key.upper()] = value

    # pixels off the parent frame (masked) are written finite: data 0, sigma a large finite value (GalfitS
    # divides by sigma, so never 0 or NaN there either); every other masked pixel keeps what it has
    off = np.broadcast_to(np.asarray(cutout.off_frame, bool), data.shape) & masked
    if off.any():
        data = np.where(off, 0.0, data)
        ok = ~masked & np.isfinite(sigma) & (sigma > 0)
        big = 1e4 * float(np.max(sigma[ok])) if ok.any() else 1e30
        sigma = np.where(off & ~(np.isfinite(sigma) & (sigma > 0)), big, sigma)
    sci = fits.PrimaryHDU(data.astype(np.float32), header=hdr)
    sci.header["EXTNAME"] = "SCI"
    mhdu = fits.ImageHDU(masked.astype(np.uint8), name="MASK")
    mhdu.header["COMMENT"] = "1 = masked (excluded from the fit), 0 = good"
    shdu = fits.ImageHDU(sigma.astype(np.float32), name="SIGMA")
    hdus = [sci, mhdu, shdu]
    for h in (mhdu, shdu):
        h.header.update(wcs_hdr)
    if bits is not None:
        bhdu = fits.ImageHDU(np.asarray(bits).astype(np.int16), name="MASKBITS")
        bhdu.header.update(wcs_hdr)
        bhdu.header["COMMENT"] = "bit values OR-ed together; 0 = good"
        for bit, (key, meaning) in sorted(MASK_BITS.items()):
            bhdu.header[key] = (bit, meaning)
        hdus.append(bhdu)
    with atomic_write(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="fix")
    return os.fspath(path)


# --------------------------------------------------------------------------
# PSF file


#: header keyword -> (EPSFResult field, comment) of the PSF quality report
_REPORT = {
    "HELDCHI2": ("heldout_chi2", "held-out stars' reduced chi2 (cross-validated)"),
    "RESFLUX": ("residual_flux", "held-out residual flux fraction beyond noise"),
    "ELLIP": ("ellipticity", "ellipticity (a2-b2)/(a2+b2), adaptive moments"),
    "PSF_E1": ("e1", "ellipticity component e1"),
    "PSF_E2": ("e2", "ellipticity component e2"),
    "REGSTREN": ("reg_strength", "regularisation strength (info per fine px)"),
}


def _finite(v, default=-1.0):
    v = float(np.asarray(v, dtype=float))
    return v if np.isfinite(v) else default


def write_psf(path, result, *, stars=None, header=None, overwrite=False, at=None):
    """Write a PSF file: primary HDU = the PSF (float32, sum 1), plus a ``STARS`` table.

    With ``oversampling > 1`` two more image HDUs follow the ``STARS``
    table, for GalfitS: ``NATIVE`` (HDU 2, the native-pixel PSF, odd size,
    centred on its central pixel, sum 1) and ``FINE`` (HDU 3, the
    oversampled PSF on an odd grid centred on its central sub-pixel, see
    :func:`fine_centred`).

    Header keywords: ``OVERSAMP`` (sub-pixels per pixel), ``PSFCONV``
    (``"SUBPIXEL-FLUX"``: each value is the fraction of the flux in that
    sub-pixel; not photutils' ePSF convention), ``NSTARS`` (stars fitted,
    unflagged), ``CHI2`` (median reduced chi-square), ``CONVERGE`` and
    ``NITER`` (whether the fit converged, in how many steps), and the
    quality report: ``FWHM`` (native pixels, of the pixel-integrated PSF,
    the same at any oversampling), ``ELLIP``, ``PSF_E1``, ``PSF_E2``,
    ``HELDCHI2`` (held-out stars' reduced chi-square), ``RESFLUX`` (their
    residual flux fraction), ``REGKIND``/``REGSTREN`` (the regularisation
    the held-out stars chose).  A number that could not be measured is -1.

    Parameters
    ----------
    path : str or path-like
        Written atomically; an existing file is kept unless ``overwrite``.
    result : EPSFResult
        One band (no leading band axis).
    stars : astropy.table.Table, optional
        Extra per-star columns (e.g. ``id, x, y, selected, reason`` from
        :func:`gsprep.select_stars`), one row per fitted star.
    header : astropy.io.fits.Header, optional
        Extra cards for the primary header.
    at : (x, y), optional
        Frame pixel (0-based) whose PSF to write: with a spatially varying
        result (``degree > 0``) the primary image (and ``NATIVE``/``FINE``)
        is :meth:`EPSFResult.psf_at` there (warns outside the stars' convex
        hull), recorded as ``PSF_X``/``PSF_Y``; a constant PSF is the same
        everywhere.  A varying result also gets its spatial model in two
        extensions after the others, ``SPATIAL`` (the polynomial's planes,
        ``(T, K, K)``; ``PSFDEG``, ``POLZERO1/2``, ``POLSCAL1/2``: normalised
        position ``(x - POLZERO) / POLSCAL``, terms ``1, x, y, x^2, x y, y^2,
        ...``) and ``HULL`` (the stars' convex hull), so :func:`read_psf`
        can evaluate it anywhere.
    """
    from astropy.table import Table

    from . import __version__

    psf = np.asarray(result.psf, dtype=float)
    spatial = getattr(result, "spatial", None)
    if at is not None:
        try:
            ax_, ay_ = (float(v) for v in at)
        except (TypeError, ValueError):
            msg = f"at must be a frame pixel (x, y), got {at!r}"
            raise ValueError(msg) from None
        if not (np.isfinite(ax_) and np.isfinite(ay_)):
            msg = f"at must be finite, got {at!r}"
            raise ValueError(msg)
        if spatial is not None and psf.ndim == 2:
            psf = np.asarray(result.psf_at(ax_, ay_), dtype=float)
    if psf.ndim != 2:
        msg = f"result.psf must be one band (2-D); got shape {psf.shape}: write one band at a time"
        raise ValueError(msg)
    if not np.isfinite(psf).all():
        msg = "result.psf has non-finite values; refusing to write it"
        raise ValueError(msg)
    k = int(result.oversampling)
    if psf.shape[0] != psf.shape[1] or psf.shape[0] % k or (psf.shape[0] // k) % 2 == 0:
        msg = (f"result.psf must be square with an odd native size (shape k*size with size odd) at oversampling {k}, "
               f"got shape {psf.shape}")
        raise ValueError(msg)
    if abs(psf.sum() - 1.0) > 1e-3:
        msg = f"result.psf must sum to 1 (the PSF convention), got {psf.sum():.6g}; normalise it first"
        raise ValueError(msg)
    n = len(np.atleast_1d(result.fluxes))
    hdr = fits.Header()
    if header is not None:
        for card in strip_wcs(header).cards:
            hdr.append(card)
    hdr["OVERSAMP"] = (k, "PSF sub-pixels per native pixel (per axis)")
    hdr["PSFCONV"] = ("SUBPIXEL-FLUX", "value = flux fraction in the sub-pixel; sum 1")
    shape = psf_shape(psf, k)
    hdr["FWHM"] = (_finite(shape["fwhm"]), "FWHM, native px (pixel-integrated, half-max area)")
    flags = np.asarray(result.flags)
    hdr["NSTARS"] = (int(np.count_nonzero(flags == 0)), "stars fitted (unflagged)")
    hdr["NFLAGGED"] = (int(np.count_nonzero(flags != 0)), "stars flagged")
    chi2 = np.asarray(result.chi2, dtype=float)
    hdr["CHI2"] = (float(np.nanmedian(chi2)) if np.isfinite(chi2).any() else -1.0, "median reduced chi-square")
    hdr["CONVERGE"] = (bool(np.all(result.converged)), "fit converged (else the PSF may be inaccurate)")
    hdr["NITER"] = (int(np.max(result.n_iter)), "Gauss-Newton steps of the final fit")
    for key, (field, comment) in _REPORT.items():
        value = getattr(result, field, np.nan)
        if field in ("ellipticity", "e1", "e2") and not np.isfinite(float(np.asarray(value, dtype=float))):
            value = shape[field]
        hdr[key] = (_finite(value, -1.0), comment)
    hdr["REGKIND"] = (str(getattr(result, "reg_kind", "") or "none"), "regularisation kind (profile/smooth)")
    hdr["PSFDEG"] = (int(np.max(getattr(result, "degree", 0) or 0)), "degree of the PSF's variation across the frame")
    if at is not None:
        hdr["PSF_X"] = (ax_, "frame pixel x (0-based) of this PSF")
        hdr["PSF_Y"] = (ay_, "frame pixel y (0-based) of this PSF")
    elif spatial is not None:
        hdr["PSF_X"] = (float(spatial["offset"][0]), "frame pixel x (0-based) of this PSF (stars' centre)")
        hdr["PSF_Y"] = (float(spatial["offset"][1]), "frame pixel y (0-based) of this PSF (stars' centre)")
    hdr["GSPVER"] = (__version__, "gsprep version")
    t = Table()
    cen = np.asarray(result.centers, dtype=float).reshape(n, 2)
    t["x_stamp"], t["y_stamp"] = cen[:, 0], cen[:, 1]
    t["flux"] = np.asarray(result.fluxes, dtype=float)
    t["sky"] = np.asarray(result.sky, dtype=float)
    t["chi2"] = chi2
    t["flags"] = flags.astype(np.int32)
    if stars is not None:
        if len(stars) != n:
            msg = f"stars has {len(stars)} rows but the fit has {n} stars"
            raise ValueError(msg)
        for name in stars.colnames:
            if name not in t.colnames:
                t[name] = stars[name]
    prim = fits.PrimaryHDU(psf.astype(np.float32), header=hdr)
    tab = fits.BinTableHDU(t, name="STARS")
    hdus = [prim, tab]
    if k > 1:
        # for GalfitS: the native-pixel PSF (what every GalfitS example uses, Ia5) 1), and the oversampled
        # PSF on an odd grid centred on its central sub-pixel (Ia5) k)
        native = psf.reshape(psf.shape[0] // k, k, psf.shape[1] // k, k).sum(axis=(1, 3))
        nat = fits.ImageHDU(native.astype(np.float32), name="NATIVE")
        nat.header["OVERSAMP"] = (1, "native pixels")
        nat.header["COMMENT"] = "the PSF summed over each k x k block: odd size, centred on the central pixel, sum 1"
        fine = fine_centred(psf, k)
        fin = fits.ImageHDU(fine.astype(np.float32), name="FINE")
        fin.header["OVERSAMP"] = (k, "PSF sub-pixels per native pixel (per axis)")
        fin.header["COMMENT"] = "the oversampled PSF on an odd grid, centred on its central sub-pixel, sum 1"
        hdus += [nat, fin]
    if spatial is not None:
        sp = fits.ImageHDU(np.asarray(spatial["planes"], np.float64), name="SPATIAL")
        sp.header["PSFDEG"] = (int(spatial["degree"]), "total degree of the polynomial in frame position")
        for i, key in enumerate(("1", "2")):
            sp.header[f"POLZERO{key}"] = (float(spatial["offset"][i]), f"{'xy'[i]} offset, 0-based frame px")
            sp.header[f"POLSCAL{key}"] = (float(spatial["scale"][i]), f"{'xy'[i]} scale, px")
        sp.header["COMMENT"] = ("PSF(x, y) = sum_t c_t planes[t], c = 1, u, v, u^2, u v, v^2, ... with "
                                "u = (x - POLZERO1) / POLSCAL1, v = (y - POLZERO2) / POLSCAL2")
        hull = np.asarray(spatial["hull"], float).reshape(-1, 2)
        hdus += [sp, fits.BinTableHDU(Table({"x": hull[:, 0], "y": hull[:, 1]}), name="HULL")]
    with atomic_write(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return os.fspath(path)


def fine_centred(psf, k):
    """The oversampled PSF on an odd grid with its centre at the centre of the central sub-pixel (sum 1).

    gsprep's oversampled PSF (``k * size`` sub-pixels) is centred on the
    centre of its central *native* pixel, which for even ``k`` is the corner
    of four sub-pixels.  Here it is shifted by half a sub-pixel
    (band-limited interpolation) onto a ``k * size + 1`` grid; for odd ``k``
    it is returned as it is.
    """
    psf = np.asarray(psf, dtype=float)
    if k % 2:
        return psf / psf.sum()
    n = psf.shape[0]
    m = 2 * n + 2  # zero-padded: the shifted wings do not wrap round
    pad = np.zeros((m, m))
    pad[:n, :n] = psf
    f = np.fft.fftfreq(m)
    ph = np.exp(-2j * np.pi * f * 0.5)
    out = np.real(np.fft.ifft2(np.fft.fft2(pad) * ph[:, None] * ph[None, :]))[: n + 1, : n + 1]
    return out / out.sum()


def read_psf(path):
    """Read a PSF file written by :func:`write_psf`.

    Returns
    -------
    EPSFResult
        ``psf`` (float64, renormalised to sum 1), star centres, fluxes, sky,
        chi2 and flags from the ``STARS`` table; ``header`` is not kept, read
        it with astropy if needed.
    """
    from astropy.table import Table

    path = os.fspath(path)
    if not os.path.exists(path):
        msg = f"path: no such file {path!r}"
        raise FileNotFoundError(msg)
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        if hdul[0].data is None or "OVERSAMP" not in hdr:
            msg = f"{path!r} is not a gsprep PSF file (no PSF image with OVERSAMP in HDU 0)"
            raise ValueError(msg)
        psf = np.array(hdul[0].data, dtype=float)
        t = Table.read(hdul["STARS"]) if "STARS" in hdul else None
        spatial = None
        if "SPATIAL" in hdul:
            sh = hdul["SPATIAL"].header
            hull = Table.read(hdul["HULL"]) if "HULL" in hdul else None
            spatial = {"degree": int(sh["PSFDEG"]), "planes": np.array(hdul["SPATIAL"].data, dtype=float),
                       "offset": np.array([sh["POLZERO1"], sh["POLZERO2"]], float),
                       "scale": np.array([sh["POLSCAL1"], sh["POLSCAL2"]], float),
                       "hull": np.zeros((0, 2)) if hull is None else np.column_stack([hull["x"], hull["y"]]),
                       "scores": None}
    psf = psf / psf.sum()
    report = {field: (float(hdr[key]) if float(hdr[key]) != -1.0 else np.nan)
              for key, (field, _) in _REPORT.items() if key in hdr}
    report.update(oversampling=int(hdr["OVERSAMP"]), converged=bool(hdr.get("CONVERGE", True)),
                  n_iter=int(hdr.get("NITER", 0)), reg_kind=str(hdr.get("REGKIND", "")),
                  fwhm=float(hdr["FWHM"]) if float(hdr.get("FWHM", -1)) > 0 else np.nan,
                  degree=int(hdr.get("PSFDEG", 0)), spatial=spatial)
    if t is None:
        empty = np.zeros(0)
        return EPSFResult(psf, np.zeros((0, 2)), empty, empty, empty, empty, np.zeros(0, np.int32), **report)
    return EPSFResult(psf=psf, centers=np.column_stack([t["x_stamp"], t["y_stamp"]]),
                      fluxes=np.asarray(t["flux"]), sky=np.asarray(t["sky"]), chi2=np.asarray(t["chi2"]),
                      loss_history=np.zeros(0), flags=np.asarray(t["flags"], dtype=np.int32), **report)

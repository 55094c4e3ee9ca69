"""PSFEx on gsprep-style star stamps, for the PSF benchmark.

Needs Debian's packages (PSFEx 3.21, Source Extractor 2.25)::

    apt-get update && apt-get install -y psfex source-extractor

The stamps are mosaicked into one frame (a grid of stamps with ``GAP``
pixels of pure sky noise between them; the sigma mosaic is the stamps'
sigma maps, the sky rms in the gaps), Source Extractor writes a FITS_LDAC
catalogue with ``VIGNET(size, size)`` (zero background given, gain 1,
the sigma mosaic as ``MAP_RMS`` weight), and PSFEx fits one constant PSF
(``PSFVAR_DEGREES 0``) with its pixel basis at ``PSF_SAMPLING`` ``1/k``
(or its automatic choice), keeping its own star selection (FWHM range
widened to 0.5-30 px, S/N >= 20, ellipticity <= 0.3).  Its ``PSF_MASK``
is the PSF convolved with the native pixel (ePSF-like), centred on the
sample ``n // 2``.

    available() -> dict(psfex=path, sex=path) or None
    run_psfex(data, sigma, *, oversampling, sampling="fixed"|"auto", keep=None) -> dict(psf, step, n_loaded,
        n_accepted, chi2, fwhm, time, psf_size, workdir)
    on_fine_grid(psf, step, n_fine, k) -> (n_fine, n_fine) array at step 1/k, centre on the central sample
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy import ndimage

GAP = 8
SKY_RMS = 10.0


def available():
    psfex = shutil.which("psfex")
    sex = shutil.which("source-extractor") or shutil.which("sex")
    return dict(psfex=psfex, sex=sex) if psfex and sex else None


def mosaic(data, sigma, gap=GAP, seed=0):
    """Stamps on a grid with ``gap`` px of sky noise between; returns (image, rms, origins (n, 2) x0, y0)."""
    n, size, _ = data.shape
    ncol = int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    cell = size + gap
    h, w = gap + nrow * cell, gap + ncol * cell
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, SKY_RMS, (h, w))
    rms = np.full((h, w), SKY_RMS)
    org = np.zeros((n, 2), int)
    for s in range(n):
        r, c = divmod(s, ncol)
        x0, y0 = gap + c * cell, gap + r * cell
        img[y0:y0 + size, x0:x0 + size] = data[s]
        rms[y0:y0 + size, x0:x0 + size] = sigma[s]
        org[s] = x0, y0
    return img, rms, org


_SEX_PARAMS = """VIGNET({v},{v})
X_IMAGE
Y_IMAGE
XWIN_IMAGE
YWIN_IMAGE
FLUX_AUTO
FLUXERR_AUTO
FLUX_APER(1)
FLUXERR_APER(1)
FLUX_RADIUS
FWHM_IMAGE
SNR_WIN
ELONGATION
FLAGS
"""


def _sex_config(work, vignet, aperture, **override):
    """Write ``stars.sex`` and ``stars.param`` in ``work``; ``override``: settings that differ (e.g. ``BACK_VALUE``)."""
    cfg = dict(
        CATALOG_NAME="stars.cat", CATALOG_TYPE="FITS_LDAC", PARAMETERS_NAME="stars.param",
        DETECT_TYPE="CCD", DETECT_MINAREA="3", DETECT_THRESH="5", ANALYSIS_THRESH="5",
        FILTER="Y", FILTER_NAME=_conv_file(), DEBLEND_NTHRESH="32", DEBLEND_MINCONT="0.005",
        CLEAN="Y", CLEAN_PARAM="1.0", MASK_TYPE="CORRECT",
        WEIGHT_TYPE="MAP_RMS", WEIGHT_IMAGE="rms.fits", WEIGHT_GAIN="N",
        PHOT_APERTURES=f"{aperture:.2f}", PHOT_AUTOPARAMS="2.5,3.5", PHOT_FLUXFRAC="0.5",
        SATUR_LEVEL="1e10", GAIN="1.0", MAG_ZEROPOINT="25.0", PIXEL_SCALE="1.0", SEEING_FWHM="2.0",
        BACK_TYPE="MANUAL", BACK_VALUE="0.0", BACK_SIZE="64", BACK_FILTERSIZE="3",
        CHECKIMAGE_TYPE="NONE", MEMORY_PIXSTACK="3000000", VERBOSE_TYPE="QUIET", WRITE_XML="N",
    )
    cfg.update(override)
    (work / "stars.sex").write_text("".join(f"{k} {v}\n" for k, v in cfg.items()))
    (work / "stars.param").write_text(_SEX_PARAMS.format(v=vignet))


def _conv_file():
    for p in ("/usr/share/source-extractor/default.conv", "/usr/share/sextractor/default.conv",
              "/usr/share/psfex/default.conv"):
        if Path(p).exists():
            return p
    raise FileNotFoundError("source-extractor's default.conv")


def _psfex_config(work, step, psf_size):
    cfg = dict(
        BASIS_TYPE="PIXEL_AUTO", BASIS_NUMBER="20", PSF_SAMPLING=f"{step:.6f}", PSF_ACCURACY="0.01",
        PSF_SIZE=f"{psf_size},{psf_size}", PSF_RECENTER="N", CENTER_KEYS="X_IMAGE,Y_IMAGE",
        PHOTFLUX_KEY="FLUX_AUTO", PHOTFLUXERR_KEY="FLUXERR_AUTO",
        PSFVAR_KEYS="X_IMAGE,Y_IMAGE", PSFVAR_GROUPS="1,1", PSFVAR_DEGREES="0", PSFVAR_NSNAP="1",
        SAMPLE_AUTOSELECT="Y", SAMPLEVAR_TYPE="NONE", SAMPLE_FWHMRANGE="0.5,30.0", SAMPLE_VARIABILITY="0.2",
        SAMPLE_MINSN="20", SAMPLE_MAXELLIP="0.3", SAMPLE_FLAGMASK="0x00fe",
        CHECKPLOT_TYPE="NONE", CHECKIMAGE_TYPE="NONE", PSF_DIR=".", PSF_SUFFIX=".psf",
        VERBOSE_TYPE="QUIET", WRITE_XML="Y", XML_NAME="psfex.xml", NTHREADS="1",
    )
    (work / "stars.psfex").write_text("".join(f"{k} {v}\n" for k, v in cfg.items()))


def _xml_stats(path):
    """NStars_Loaded_Total, NStars_Accepted_Total, Sampling, FWHM, Chi2 from PSFEx's XML (best effort)."""
    out = {}
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return out
    for table in root.iter():
        if not table.tag.endswith("TABLE") or table.get("name") != "PSF_Fields":
            continue
        names = [f.get("name") for f in table.iter() if f.tag.endswith("FIELD")]
        rows = [td.text for td in table.iter() if td.tag.endswith("TD")]
        vals = dict(zip(names, rows, strict=False))
        for key, name in (("n_loaded", "NStars_Loaded_Total"), ("n_accepted", "NStars_Accepted_Total"),
                          ("step", "Sampling_Mean"), ("fwhm", "FWHM_Mean"), ("chi2", "Chi2_Mean")):
            try:
                out[key] = float(vals[name])
            except (KeyError, TypeError, ValueError):
                pass
    return out


def run_psfex(data, sigma, *, oversampling, sampling="fixed", keep=None, vignet=None):
    """Run Source Extractor + PSFEx on the stamps; returns dict(psf (its grid), step (native px), ...).

    ``sampling="fixed"``: ``PSF_SAMPLING = 1/k`` and ``PSF_SIZE = k*size`` made odd;
    ``"auto"``: PSFEx's own step (``PSF_SAMPLING 0``), ``PSF_SIZE`` chosen to cover the stamp after a first run.
    ``keep``: a folder to run in (kept); default a temporary one.
    """
    from astropy.io import fits

    tools = available()
    if tools is None:
        raise RuntimeError("psfex / source-extractor not installed")
    k = int(oversampling)
    n, size, _ = data.shape
    vignet = size if vignet is None else vignet
    tmp = None
    if keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="psfex_")
        work = Path(tmp.name)
    else:
        work = Path(keep)
        work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        img, rms, _ = mosaic(np.asarray(data, float), np.asarray(sigma, float))
        fits.writeto(work / "image.fits", img.astype(np.float32), overwrite=True)
        fits.writeto(work / "rms.fits", rms.astype(np.float32), overwrite=True)
        _sex_config(work, vignet, aperture=min(size - 2, 15))
        subprocess.run([tools["sex"], "image.fits", "-c", "stars.sex"], cwd=work, check=True,
                       capture_output=True, text=True)
        odd = lambda m: int(m) + (1 - int(m) % 2)  # noqa: E731
        if sampling == "fixed":
            step, psf_size = 1.0 / k, odd(k * size)
        else:
            step, psf_size = 0.0, odd(k * size)
        _psfex_config(work, step, psf_size)
        _run(tools["psfex"], work)
        hdr, psf = _read_psf(work / "stars.psf")
        if sampling != "fixed":  # PSFEx picked its step: size the PSF to cover the stamp and run again
            got = float(hdr["PSF_SAMP"])
            want = odd(np.ceil(size / got))
            if want != psf.shape[-1]:
                _psfex_config(work, 0.0, want)
                _run(tools["psfex"], work)
                hdr, psf = _read_psf(work / "stars.psf")
        stats = _xml_stats(work / "psfex.xml")
        out = dict(psf=psf, step=float(hdr["PSF_SAMP"]), psf_size=psf.shape[-1], time=time.perf_counter() - t0,
                   fwhm=float(hdr.get("PSF_FWHM", np.nan)), chi2=float(hdr.get("CHI2", np.nan)),
                   n_loaded=int(hdr.get("LOADED", -1)), n_accepted=int(hdr.get("ACCEPTED", -1)),
                   workdir=str(work) if keep is not None else None)
        for key in ("n_loaded", "n_accepted"):
            if out[key] < 0 and key in stats:
                out[key] = int(stats[key])
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(psfex, work):
    r = subprocess.run([psfex, "stars.cat", "-c", "stars.psfex"], cwd=work, capture_output=True, text=True)
    if r.returncode != 0 or not (work / "stars.psf").exists():
        raise RuntimeError(f"psfex failed ({r.returncode}): {r.stderr[-2000:]}")


def _read_psf(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdr = hdul[1].header
        mask = np.asarray(hdul[1].data["PSF_MASK"][0], float)
    return hdr, mask[0] if mask.ndim == 3 else mask


def on_fine_grid(psf, step, n_fine, k):
    """Resample PSFEx's PSF (step ``step`` native px, centre on sample ``n // 2``) onto an ``n_fine`` grid at step
    ``1/k`` whose centre is ``(n_fine - 1) / 2`` (cubic spline; exact when ``step == 1/k`` and the centres align)."""
    n = psf.shape[-1]
    c_in = n // 2
    off = (np.arange(n_fine) - (n_fine - 1) / 2.0) / k  # native px from the centre
    coord = c_in + off / step
    yy, xx = np.meshgrid(coord, coord, indexing="ij")
    out = ndimage.map_coordinates(psf, [yy, xx], order=3, mode="constant")
    return out * (step * k) ** 2  # keep the values' scale per unit area

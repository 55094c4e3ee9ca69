"""A cutout file's own WCS, read by astropy from the file alone, agrees with the parent's WCS (issue 13)."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

import gsprep
from gsprep.wcs import cut_wcs_header, strip_wcs

from .conftest import data_path

TOL = 0.05  # px: every star of the cut where the parent's WCS puts it


def _frame_file(tmp_path, hdr, shape=(600, 600)):
    """A FITS frame with header ``hdr`` (plus EXPTIME, GAIN, OBSERVER and FILTER) and noise as data."""
    hdr = hdr.copy()
    hdr["EXPTIME"] = 100.0
    hdr["GAIN"] = 2.0
    hdr["OBSERVER"] = ("A. Person", "kept: not a WCS keyword")
    hdr["FILTER"] = "r"
    data = np.random.default_rng(0).normal(100, 5, shape).astype(np.float32)
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return str(path)


def _tan(crval=(150.0, 2.0), scale=0.2 / 3600, rot=17.0, flip=False):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = 300.5, 290.5
    c, s = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    sx = scale if flip else -scale
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = sx * c, -scale * s, sx * s, scale * c
    return h


def _sip():
    h = _tan()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["A_ORDER"] = h["B_ORDER"] = 3
    # IRAC-like: ~1 px at the corners
    h["A_2_0"], h["A_0_2"], h["A_1_1"], h["A_3_0"] = 2e-6, -1.5e-6, 1e-6, 3e-9
    h["B_2_0"], h["B_0_2"], h["B_1_1"], h["B_0_3"] = -1e-6, 2.5e-6, -2e-6, -2e-9
    return h


def _tpv():
    h = _tan()
    h["CTYPE1"], h["CTYPE2"] = "RA---TPV", "DEC--TPV"
    # TPV polynomial (xi: PV1_*, eta: PV2_*) with a cubic radial term, as SCAMP writes it
    h["PV1_0"], h["PV1_1"], h["PV1_2"], h["PV1_7"], h["PV1_11"] = 0.0, 1.0, 0.0, 40.0, 25.0
    h["PV2_0"], h["PV2_1"], h["PV2_2"], h["PV2_9"], h["PV2_11"] = 0.0, 1.0, 0.0, -30.0, 25.0
    return h


def _zpn():
    h = _tan(crval=(210.0, -30.0))
    h["CTYPE1"], h["CTYPE2"] = "RA---ZPN", "DEC--ZPN"
    h["PV2_1"], h["PV2_3"] = 1.0, 220.0  # a wide-field camera's radial distortion
    return h


def _check_file_alone(path_frame, path_cut, n_stars=40):
    """Largest distance (px) between where the parent WCS and the cutout file's own WCS put random stars."""
    with warnings.catch_warnings():  # the parent's own header problems (the cutout's must read cleanly)
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        parent = WCS(fits.getheader(path_frame))
    hdr = fits.getheader(path_cut, 0)
    own = WCS(hdr)
    n = fits.getdata(path_cut, 0).shape[-1]
    xy = np.random.default_rng(3).uniform(0, n - 1, (n_stars, 2))
    sky = own.pixel_to_world(xy[:, 0], xy[:, 1])
    px, py = parent.world_to_pixel(sky)
    dev = np.hypot(px - (xy[:, 0] + hdr["ORIGX"]), py - (xy[:, 1] + hdr["ORIGY"]))
    return float(dev.max()), hdr


def _cut_and_write(tmp_path, frame, x, y, r):
    img = gsprep.read_image(frame)
    ra, dec = img.wcs.pixel_to_world_values(x, y)
    c = gsprep.cutout(img.data, img.wcs, float(ra), float(dec), r=r)
    out = str(tmp_path / "cut.fits")
    gsprep.write_cutout(out, c, np.zeros(c.data.shape, np.uint8), np.ones(c.data.shape), header=img.header)
    return out


@pytest.mark.parametrize("make", [_sip, _tpv, _zpn, lambda: _tan(flip=True)], ids=["tan-sip", "tpv", "zpn", "flipped"])
def test_written_wcs_matches_parent(tmp_path, make):
    frame = _frame_file(tmp_path, make())
    out = _cut_and_write(tmp_path, frame, 470.3, 120.8, r=40.0)  # near a corner: the distortion is largest
    dev, hdr = _check_file_alone(frame, out)
    assert dev < TOL
    assert hdr["WCSDEV"] < TOL
    assert hdr["OBSERVER"] == "A. Person" and hdr["FILTER"] == "r"
    assert not any(k.startswith(("PV", "CD1_", "CD2_")) for k in hdr)  # the parent's conventions are gone


def test_distortion_gets_sip_when_linear_cannot_follow(tmp_path):
    frame = _frame_file(tmp_path, _sip())
    img = gsprep.read_image(frame)
    ra, dec = img.wcs.pixel_to_world_values(560.0, 40.0)
    c = gsprep.cutout(img.data, img.wcs, float(ra), float(dec), r=50.0)
    hdr, dev = cut_wcs_header(c)
    assert hdr["CTYPE1"] == "RA---TAN-SIP"
    assert dev < 0.01
    lin, dev1 = cut_wcs_header(c, max_degree=1)
    assert lin["CTYPE1"] == "RA---TAN" and dev1 > 0.05  # the linear WCS alone would be off


def test_dss_plate_solution_removed(tmp_path):
    """A DSS plate's PLT*/AMD*/PPO*/CNPIX* keywords made astropy place the target 91-162 px off."""
    frame = data_path("dss.14.29.56-62.41.05.fits.gz")
    with pytest.warns(gsprep.io.HeaderWarning, match="PC001001"):  # the old PC form, fixed by astropy
        img = gsprep.read_image(frame)
    ny, nx = img.data.shape
    with pytest.warns(gsprep.io.HeaderWarning):
        out = _cut_and_write(tmp_path, frame, 0.7 * nx, 0.3 * ny, r=60.0)
    dev, hdr = _check_file_alone(frame, out)
    assert dev < TOL
    for key in ("PLTRAH", "PLTDECD", "AMDX1", "AMDY1", "PPO3", "CNPIX1", "XPIXELSZ", "PLTSCALE", "PC001001"):
        assert key not in hdr
    assert "PLTLABEL" in hdr  # the plate's label is not a WCS keyword


def test_strip_wcs_every_convention():
    h = _tan()
    h["CTYPE1A"], h["CRVAL1A"] = "RA---TAN", 1.0  # an alternate WCS
    h["WAT0_001"] = "system=image"
    h["WAT1_001"] = "wtype=tnx axtype=ra lngcor = \"3. 4. 4. 2."
    h["LTV1"], h["LTM1_1"], h["WCSDIM"] = -10.0, 1.0, 2
    h["PV2_1"], h["A_ORDER"], h["A_2_0"], h["CPDIS1"], h["D2IMDIS1"] = 1.0, 2, 1e-6, "Lookup", "Lookup"
    h["AMDX1"], h["PPO3"], h["PLTRAH"], h["CNPIX1"] = 1.0, 2.0, 14, 100
    h["PC001001"], h["CD002002"] = 1.0, 1.0  # the pre-standard forms
    h["OBJECT"], h["PLTLABEL"], h["DATE-OBS"] = "M31", "S123", "2001-01-01"
    out = strip_wcs(h)
    assert list(out) == ["OBJECT", "PLTLABEL", "DATE-OBS"]

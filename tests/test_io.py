import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import gsprep
from gsprep.simulate import tan_wcs

from .conftest import data_path


def test_read_compressed_ngc1316():
    img = gsprep.read_image(data_path("comp.fits"), hdu=1, band="R")
    assert img.data.shape == (300, 440)
    assert img.data.dtype == np.float64
    assert img.wcs is not None and img.wcs.naxis == 2
    assert img.pixel_scale == pytest.approx(7.0, rel=0.05)
    assert img.band == "R" and img.unit == "cR"


def test_wrong_hdu_names_the_image_hdus():
    with pytest.raises(ValueError, match=r"hdu=0 .*holds no 2-D or 3-D image; image HDUs: 1 \(COMPRESSED_IMAGE\)"):
        gsprep.read_image(data_path("comp.fits"), hdu=0)
    with pytest.raises(ValueError, match=r"hdu=7 not in"):
        gsprep.read_image(data_path("comp.fits"), hdu=7)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        gsprep.read_image(data_path("nope.fits"))


def test_bscale_bzero_exptime_gain_nan_inf(tmp_path):
    raw = np.arange(20 * 30, dtype=np.int16).reshape(20, 30)
    hdu = fits.PrimaryHDU((raw * 0.5 + 100.0).astype(np.float64))
    hdu.header.update(tan_wcs(10.0, 20.0, (20, 30), 0.5).to_header())
    hdu.header["EXPTIME"] = 120.0
    hdu.header["GAIN"] = 2.5
    hdu.scale("int16", bscale=0.5, bzero=100.0)
    p = tmp_path / "scaled.fits"
    hdu.writeto(p)
    with fits.open(p) as h:
        assert h[0].header["BSCALE"] == 0.5
    img = gsprep.read_image(p)
    np.testing.assert_allclose(img.data, raw * 0.5 + 100.0)
    assert img.exptime == 120.0 and img.gain == 2.5
    assert img.pixel_scale == pytest.approx(0.5, rel=1e-6)

    f = np.ones((10, 10))
    f[2, 3] = np.inf
    f[4, 5] = np.nan
    fits.PrimaryHDU(f).writeto(tmp_path / "bad.fits")
    img = gsprep.read_image(tmp_path / "bad.fits")
    assert np.isnan(img.data[2, 3]) and np.isnan(img.data[4, 5])
    assert img.wcs is None and img.pixel_scale is None


def test_nan_only_frame_and_bad_exptime(tmp_path):
    fits.PrimaryHDU(np.full((8, 8), np.nan)).writeto(tmp_path / "nan.fits")
    with pytest.raises(ValueError, match="no finite pixels"):
        gsprep.read_image(tmp_path / "nan.fits")
    h = fits.PrimaryHDU(np.ones((8, 8)))
    h.header["EXPTIME"] = -5.0
    h.writeto(tmp_path / "neg.fits")
    with pytest.warns(UserWarning, match="EXPTIME=-5.0 is not a positive number"):
        img = gsprep.read_image(tmp_path / "neg.fits")
    assert img.exptime is None


def test_bad_unit():
    with pytest.raises(ValueError, match="unit must be one of"):
        gsprep.read_image(data_path("m13.fits"), unit="Jy")


def test_strip_wcs_keeps_other_keys():
    from gsprep.io import strip_wcs

    with fits.open(data_path("dist_lookup.fits.gz")) as h:
        hdr = h[1].header
        out = strip_wcs(hdr)
    assert "CRVAL1" in hdr and "CRVAL1" not in out and "CPDIS1" not in out and "D2IMDIS1" not in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not WCS(out).has_celestial
    kept = [k for k in hdr if k and k not in out]
    assert "EXPTIME" not in kept or "EXPTIME" not in hdr

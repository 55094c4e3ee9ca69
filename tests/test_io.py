import os
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
    # the fixture has no EXPTIME: add the keys a frame brings and check they survive, each with its value
    hdr = hdr.copy()
    hdr["EXPTIME"] = (120.5, "exposure, s")
    hdr["GAIN"] = 2.5
    hdr["OBJECT"] = "NGC 1316"
    out = strip_wcs(hdr)
    assert (out["EXPTIME"], out["GAIN"], out["OBJECT"]) == (120.5, 2.5, "NGC 1316")
    assert out.comments["EXPTIME"] == "exposure, s"
    assert not any(k.startswith(("CRVAL", "CRPIX", "CTYPE", "CD1_", "CPDIS", "D2IM", "NAXIS")) for k in out)


def cut_of(shape=(21, 21)):
    w = tan_wcs(150.1, 2.2, (60, 60), 0.4)
    return gsprep.cutout(np.ones((60, 60)), w, 150.1, 2.2, 0.4 * (shape[0] // 2))


@pytest.mark.parametrize("bad_value", [256, 512, 0.4, np.nan, -1, 1e-30, np.inf])
def test_write_cutout_keeps_every_nonzero_mask_value_masked(tmp_path, bad_value):
    c = cut_of()
    m = np.zeros(c.data.shape, dtype=np.asarray(bad_value).dtype if not isinstance(bad_value, int) else np.int64)
    m[3, 4] = bad_value
    m[10, 10] = 1
    p = tmp_path / "cut.fits"
    gsprep.write_cutout(p, c, m, np.ones(c.data.shape))
    with fits.open(p) as h:
        got = h["MASK"].data
    assert got[3, 4] == 1 and got[10, 10] == 1 and got.sum() == 2


@pytest.mark.parametrize(("value", "where_masked"), [(0.0, False), (np.nan, False), (-1.0, False), (np.inf, False),
                                                     (0.0, True), (np.nan, True)])
def test_write_cutout_refuses_zero_or_nan_sigma_where_the_mask_is_good(tmp_path, value, where_masked):
    c = cut_of()
    sigma = np.ones(c.data.shape)
    sigma[5, 6] = value
    m = np.zeros(c.data.shape, bool)
    m[5, 6] = where_masked
    p = tmp_path / "cut.fits"
    if where_masked:  # a masked pixel may carry any sigma: GalfitS does not use it
        gsprep.write_cutout(p, c, m, sigma)
        assert p.exists()
        return
    with pytest.raises(ValueError, match=r"sigma is zero, negative or not finite at 1 pixel\(s\) that the mask"):
        gsprep.write_cutout(p, c, m, sigma)
    assert not p.exists() and os.listdir(tmp_path) == []


def test_write_cutout_refuses_a_text_mask(tmp_path):
    c = cut_of()
    with pytest.raises(TypeError, match="mask must be a boolean or numeric array"):
        gsprep.write_cutout(tmp_path / "c.fits", c, np.full(c.data.shape, "x"), np.ones(c.data.shape))


def test_read_image_names_the_path_of_a_file_that_is_not_fits(tmp_path):
    (tmp_path / "notes.fits").write_text("these are my notes, not a FITS file\n" * 200)
    with pytest.raises(OSError, match=r"path: '.*notes.fits' is not a readable FITS file: No SIMPLE card"):
        gsprep.read_image(tmp_path / "notes.fits")
    fits.PrimaryHDU(np.ones((60, 60))).writeto(tmp_path / "ok.fits")
    (tmp_path / "cut.fits").write_bytes((tmp_path / "ok.fits").read_bytes()[:5000])
    with pytest.raises(OSError, match=r"path: '.*cut.fits' is not a readable FITS file: the file is cut short"):
        gsprep.read_image(tmp_path / "cut.fits")
    (tmp_path / "empty.fits").write_bytes(b"")
    with pytest.raises(OSError, match=r"path: '.*empty.fits' is not a readable FITS file"):
        gsprep.read_image(tmp_path / "empty.fits")
    with pytest.raises(IsADirectoryError, match="is a folder, not a FITS file"):
        gsprep.read_image(tmp_path)


def test_header_fixes_come_as_one_warning_naming_the_frame():
    from gsprep.io import HeaderWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = gsprep.read_image(data_path("dss.14.29.56-62.41.05.fits.gz"))
    assert img.wcs is not None
    assert [w.category for w in caught] == [HeaderWarning]
    msg = str(caught[0].message)
    assert msg.startswith(data_path("dss.14.29.56-62.41.05.fits.gz") + ": astropy fixed")
    assert "SKEW" in msg and "DATE-OBS" in msg and "zero-based indexing" not in msg
    assert caught[0].filename == __file__  # points at the caller's line


def test_off_frame_pixels_are_written_finite(tmp_path):
    """A cut hanging off the frame: its off-frame pixels are masked and written finite (data 0, sigma large)."""
    from gsprep.simulate import tan_wcs

    w = tan_wcs(150.1, 2.2, (60, 60), 0.4)
    ra, dec = w.pixel_to_world_values(3.0, 30.0)  # 3 px from the left edge
    c = gsprep.cutout(np.ones((60, 60)), w, float(ra), float(dec), 4.0)
    assert c.off_frame.any() and np.isnan(c.data[c.off_frame]).all()
    sigma = np.where(c.off_frame, np.nan, 1.0)
    out = tmp_path / "c.fits"
    gsprep.write_cutout(out, c, c.off_frame, sigma)
    with fits.open(out) as h:
        sci, msk, sig = h[0].data, h[1].data, h[2].data
    assert np.all(np.isfinite(sci)) and np.all(sci[c.off_frame] == 0) and np.all(sci[~c.off_frame] == 1)
    assert np.all(np.isfinite(sig)) and np.all(sig > 0) and np.all(sig[~c.off_frame] == 1)
    assert np.all(msk[c.off_frame] == 1)

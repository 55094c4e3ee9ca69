import os
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

import gsprep
from gsprep.simulate import add_stars, tan_wcs

from .conftest import data_path


def star_frame(x, y, *, rotation=0.0, shape=(200, 220), scale=0.4):
    w = tan_wcs(150.1, 2.2, shape, scale, rotation_deg=rotation)
    img = add_stars(np.zeros(shape), [(x, y)], [1e4], fwhm=3.0)
    return img, w


@pytest.mark.parametrize("rotation", [0.0, 33.0])
def test_star_at_known_radec_lands_at_centre_of_written_file(tmp_path, rotation):
    img, w = star_frame(97.0, 120.0, rotation=rotation)
    sky = w.pixel_to_world(97.0, 120.0)
    c = gsprep.cutout(img, w, sky.ra.deg, sky.dec.deg, 10.0)
    n = int(10.0 / 0.4)
    assert c.data.shape == (2 * n + 1, 2 * n + 1)
    assert np.unravel_index(np.nanargmax(c.data), c.data.shape) == (n, n)
    p = tmp_path / "cut.fits"
    gsprep.write_cutout(p, c, np.zeros(c.data.shape, bool), np.ones(c.data.shape))
    with fits.open(p) as h:
        assert [x.name for x in h] == ["SCI", "MASK", "SIGMA"]
        hdr = h[0].header
        assert hdr["CRVAL1"] == pytest.approx(sky.ra.deg) and hdr["CRPIX1"] == pytest.approx(n + 1)
        assert hdr["CDELT2"] == pytest.approx(0.4 / 3600)
        fw = WCS(hdr)
    px, py = fw.world_to_pixel(sky)
    assert abs(px - n) < 0.01 and abs(py - n) < 0.01
    # a second star off-centre in the cut also lands where the parent WCS says
    far = w.pixel_to_world(97.0 + 17.3, 120.0 - 11.6)
    qx, qy = fw.world_to_pixel(far)
    assert abs(qx - (n + 17.3)) < 0.01 and abs(qy - (n - 11.6)) < 0.01


def test_subpixel_target_center_and_n_rule():
    img, w = star_frame(97.3, 120.4)
    sky = w.pixel_to_world(97.3, 120.4)
    c = gsprep.cutout(img, w, sky.ra.deg, sky.dec.deg, 3.99 * u.arcsec)
    assert c.n == 9  # int(3.99 / 0.4)
    assert c.center == pytest.approx((9.3, 9.4), abs=1e-6)
    assert c.origin == (97 - 9, 120 - 9)
    c2 = gsprep.cutout(img, w, sky.ra.deg, sky.dec.deg, 0.1 * u.arcmin)
    assert c2.n == 15


def test_partial_cut_is_nan_and_flagged():
    img, w = star_frame(5.0, 190.0)
    sky = w.pixel_to_world(5.0, 190.0)
    c = gsprep.cutout(img, w, sky.ra.deg, sky.dec.deg, 8.0)
    n = 20
    assert c.off_frame[n, 0] and c.off_frame[-1, n] and not c.off_frame[n, n]
    assert np.isnan(c.data[c.off_frame]).all()
    assert np.isfinite(c.data[~c.off_frame]).all()
    assert c.off_frame.sum() == (41 * 41 - (5 + 21) * (200 - 190 + 20))


def test_recenter_peak():
    img, w = star_frame(100.0, 100.0)
    sky = w.pixel_to_world(102.0, 99.0)
    c = gsprep.cutout(img, w, sky.ra.deg, sky.dec.deg, 6.0, recenter="peak")
    assert c.origin == (100 - 15, 100 - 15)
    star = w.pixel_to_world(100.0, 100.0)
    assert c.ra == pytest.approx(star.ra.deg) and c.dec == pytest.approx(star.dec.deg)


def test_cube_is_cut_on_spatial_axes():
    img, w = star_frame(60.0, 70.0)
    cube = np.stack([img, 2 * img, 3 * img])
    sky = w.pixel_to_world(60.0, 70.0)
    c = gsprep.cutout(cube, w, sky.ra.deg, sky.dec.deg, 4.0)
    assert c.data.shape == (3, 21, 21)
    np.testing.assert_allclose(c.data[2], 3 * c.data[0])
    assert np.argmax(c.data[1]) == 10 * 21 + 10


def test_ngc1316_fk4_frame_icrs_target():
    img = gsprep.read_image(data_path("comp.fits"), hdu=1)
    assert img.header["EQUINOX"] == 1950.0  # the frame's WCS is FK4 / B1950
    c = gsprep.cutout(img.data, img.wcs, 50.6738, -37.2083, 140.0)
    n = c.n
    peak = np.unravel_index(np.nanargmax(c.data), c.data.shape)
    assert np.hypot(peak[0] - n, peak[1] - n) <= 2.0
    # using the FK4 coordinates as if they were ICRS would miss by many pixels
    fk4 = SkyCoord(50.6738 * u.deg, -37.2083 * u.deg).transform_to("fk4")
    wrong = gsprep.cutout(img.data, img.wcs, fk4.ra.deg, fk4.dec.deg, 140.0)
    assert abs(wrong.origin[0] - c.origin[0]) + abs(wrong.origin[1] - c.origin[1]) > 10


def test_hst_lookup_table_distortion_wcs_is_kept(tmp_path):
    img = gsprep.read_image(data_path("dist_lookup.fits.gz"), hdu=1)
    assert img.wcs.cpdis1 is not None
    mid = img.wcs.pixel_to_world(50.0, 50.0)
    c = gsprep.cutout(img.data, img.wcs, mid.ra.deg, mid.dec.deg, 1.5)
    yy, xx = np.mgrid[0 : c.data.shape[0] : 5, 0 : c.data.shape[1] : 5]
    a = c.wcs.pixel_to_world(xx.ravel(), yy.ravel())
    b = img.wcs.pixel_to_world(xx.ravel() + c.origin[0], yy.ravel() + c.origin[1])
    assert a.separation(b).max() < 1e-4 * u.arcsec
    p = tmp_path / "hst.fits"
    gsprep.write_cutout(p, c, np.zeros(c.data.shape, bool), np.ones(c.data.shape))
    with fits.open(p) as h:
        fw = WCS(h[0].header)
        assert h[0].header["WCSDEV"] < 0.05
        assert "CPDIS1" not in h[0].header
    px, py = fw.world_to_pixel(b)
    assert np.max(np.hypot(px - xx.ravel(), py - yy.ravel())) < 0.05


def test_bad_input():
    img, w = star_frame(50.0, 50.0)
    sky = w.pixel_to_world(50.0, 50.0)
    ra, dec = sky.ra.deg, sky.dec.deg
    with pytest.raises(ValueError, match="data has no finite pixels"):
        gsprep.cutout(np.full_like(img, np.nan), w, ra, dec, 5.0)
    with pytest.raises(ValueError, match="wcs has no celestial axes"):
        gsprep.cutout(img, WCS(naxis=2), ra, dec, 5.0)
    with pytest.raises(TypeError, match="wcs must be an astropy.wcs.WCS"):
        gsprep.cutout(img, "header", ra, dec, 5.0)
    with pytest.raises(ValueError, match="wcs is None: .* x=, y="):  # no WCS: the target in pixels
        gsprep.cutout(img, None, ra, dec, 5.0)
    with pytest.raises(ValueError, match=r"target \(ra=.*outside the frame"):
        gsprep.cutout(img, w, ra + 1.0, dec, 5.0)
    with pytest.raises(ValueError, match="r=0.3 arcsec is less than one pixel"):
        gsprep.cutout(img, w, ra, dec, 0.3)
    with pytest.raises(ValueError, match="r must be a finite number > 0"):
        gsprep.cutout(img, w, ra, dec, -2.0)
    with pytest.raises(ValueError, match="r must be an angle"):
        gsprep.cutout(img, w, ra, dec, 5.0 * u.m)
    with pytest.raises(ValueError, match="recenter must be one of"):
        gsprep.cutout(img, w, ra, dec, 5.0, recenter="max")


def test_write_cutout_refuses_overwrite_and_bad_shapes(tmp_path):
    img, w = star_frame(50.0, 50.0)
    sky = w.pixel_to_world(50.0, 50.0)
    c = gsprep.cutout(img, w, sky.ra.deg, sky.dec.deg, 4.0)
    good = np.zeros(c.data.shape, bool)
    p = tmp_path / "c.fits"
    with pytest.raises(ValueError, match="sigma has shape"):
        gsprep.write_cutout(p, c, good, np.ones((3, 3)))
    with pytest.raises(ValueError, match="mask has shape"):
        gsprep.write_cutout(p, c, np.zeros((3, 3)), np.ones(c.data.shape))
    assert not p.exists()
    gsprep.write_cutout(p, c, good, np.ones(c.data.shape))
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gsprep.write_cutout(p, c, good, 2 * np.ones(c.data.shape))
    assert p.read_bytes() == before
    gsprep.write_cutout(p, c, good, 2 * np.ones(c.data.shape), overwrite=True)
    with fits.open(p) as h:
        assert h["SIGMA"].data[0, 0] == 2.0
        assert h["SIGMA"].data.dtype.kind == "f" and h["SIGMA"].data.dtype.itemsize == 4
    assert [f for f in os.listdir(tmp_path) if f.startswith(".gsprep-")] == []


def test_write_cutout_header_provenance_and_parent_keys(tmp_path):
    img = gsprep.read_image(data_path("comp.fits"), hdu=1)
    c = gsprep.cutout(img.data, img.wcs, 50.6738, -37.2083, 100.0)
    m = np.zeros(c.data.shape, bool)
    m[0, 0] = True
    p = tmp_path / "ngc1316.fits"
    gsprep.write_cutout(p, c, m, np.ones(c.data.shape), header=img.header,
                        provenance={"SKYORD": (3, "sky polynomial order")})
    with fits.open(p) as h:
        hdr = h[0].header
        assert hdr["GSPVER"] == gsprep.__version__ and hdr["SKYORD"] == 3
        # the parent is FK4 (EQUINOX = 1950): the written WCS is ICRS and keeps no B1950 equinox
        assert img.header["EQUINOX"] == 1950.0
        assert hdr["RADESYS"] == "ICRS" and "EQUINOX" not in hdr
        assert hdr["OBJECT"] == img.header["OBJECT"]
        assert h["MASK"].data[0, 0] == 1 and h["MASK"].data.sum() == 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, y = WCS(hdr).world_to_pixel(SkyCoord(50.6738 * u.deg, -37.2083 * u.deg))
    assert abs(x - c.center[0]) < 0.01 and abs(y - c.center[1]) < 0.01


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"dec": 95.0}, ValueError, r"dec must be within \[-90, 90\] degrees"),
    ({"dec": -90.5}, ValueError, r"dec must be within \[-90, 90\] degrees"),
    ({"ra": 400.0}, ValueError, r"ra must be within \[0, 360\) degrees \(ICRS\), got 400"),
    ({"ra": 510.1}, ValueError, r"ra must be within \[0, 360\) degrees \(ICRS\), got 510.1"),
    ({"ra": -1.0}, ValueError, r"ra must be within \[0, 360\)"),
    ({"ra": "150.1"}, TypeError, "ra must be a number of degrees"),
    ({"dec": float("nan")}, ValueError, "dec must be within"),
    ({"r": "4"}, TypeError, "r must be a positive number, got '4'"),
    ({"r": True}, TypeError, "r must be a positive number, got True"),
    ({"r": -3.0}, ValueError, "r must be a finite number > 0"),
    ({"r": [4.0, 5.0] * u.arcsec}, ValueError, "r must be one angle"),
    ({"r": 1e4}, ValueError, r"r=10000 arcsec asks for a cut of 50001 x 50001 pixels, more than twice the frame "
                             r"\(120 x 100 pixels"),
])
def test_bad_arguments_are_one_clear_error_naming_the_argument(kwargs, error, match):
    w = tan_wcs(150.1, 2.2, (100, 120), 0.4)
    args = {"ra": 150.1, "dec": 2.2, "r": 4.0, **kwargs}
    with pytest.raises(error, match=match):
        gsprep.cutout(np.ones((100, 120)), w, args["ra"], args["dec"], args["r"])


def test_largest_allowed_cut_is_made():
    w = tan_wcs(150.1, 2.2, (100, 120), 0.4)
    c = gsprep.cutout(np.ones((100, 120)), w, 150.1, 2.2, 120 * 0.4)
    assert c.data.shape == (241, 241) and np.isfinite(c.data).sum() == 100 * 120


# --------------------------------------------------------------------------
# properties of the geometry, on random frames, WCSs, positions and sizes

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def random_wcs(proj, ra, dec, shape, scale, rotation, flip):
    w = WCS(naxis=2)
    w.wcs.ctype = [f"RA---{proj}", f"DEC--{proj}"]
    w.wcs.crval = [ra, dec]
    ny, nx = shape
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    s = scale / 3600.0
    th = np.radians(rotation)
    cd = np.array([[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]])
    if flip:  # east right: a mirrored frame
        cd[:, 0] = -cd[:, 0]
    w.wcs.cd = cd
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (nx, ny)
    return w


geometry = st.fixed_dictionaries({
    "proj": st.sampled_from(["TAN", "SIN"]),
    "ra": st.floats(0.0, 359.9),
    "dec": st.floats(-80.0, 80.0),
    "ny": st.integers(20, 160),
    "nx": st.integers(20, 160),
    "scale": st.floats(0.05, 2.0),
    "rotation": st.floats(-180.0, 180.0),
    "flip": st.booleans(),
    "fx": st.floats(0.0, 1.0),
    "fy": st.floats(0.0, 1.0),
    "npix": st.integers(1, 40),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(g=geometry)
def test_written_wcs_puts_the_target_on_crpix_and_corners_on_the_parent_sky(tmp_path, g):
    shape = (g["ny"], g["nx"])
    w = random_wcs(g["proj"], g["ra"], g["dec"], shape, g["scale"], g["rotation"], g["flip"])
    x, y = g["fx"] * (g["nx"] - 1), g["fy"] * (g["ny"] - 1)
    sky = w.pixel_to_world(x, y).icrs
    ra = float(sky.ra.deg) % 360.0
    npix = min(g["npix"], max(shape))  # larger cuts are refused (cutout's size limit, tested on its own)
    r = (npix + 0.5) * g["scale"]
    c = gsprep.cutout(np.ones(shape), w, ra, float(sky.dec.deg), r)
    n = c.n
    assert n == npix and c.data.shape == (2 * n + 1, 2 * n + 1)
    path = tmp_path / "cut.fits"
    gsprep.write_cutout(path, c, np.zeros(c.data.shape, bool), np.ones(c.data.shape), overwrite=True)
    with fits.open(path) as h:
        out = WCS(h[0].header)
        crpix = h[0].header["CRPIX1"], h[0].header["CRPIX2"]
    px, py = out.world_to_pixel(SkyCoord(ra * u.deg, float(sky.dec.deg) * u.deg))
    assert abs(px + 1 - crpix[0]) < 0.01 and abs(py + 1 - crpix[1]) < 0.01
    assert abs(px - (x - c.origin[0])) < 0.01 and abs(py - (y - c.origin[1])) < 0.01
    size = 2 * n + 1
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
    parent = w.pixel_to_world(corners[:, 0] + c.origin[0], corners[:, 1] + c.origin[1])
    cx, cy = out.world_to_pixel(parent)
    assert np.max(np.hypot(cx - corners[:, 0], cy - corners[:, 1])) < 0.01


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(npix=st.integers(1, 15), seed=st.integers(0, 2**32 - 1), frac=st.floats(0.0, 1.0), with_bits=st.booleans())
def test_a_mask_written_and_read_back_is_identical(tmp_path, npix, seed, frac, with_bits):
    rng = np.random.default_rng(seed)
    w = tan_wcs(150.1, 2.2, (40, 40), 0.4)
    c = gsprep.cutout(np.ones((40, 40)), w, 150.1, 2.2, (npix + 0.5) * 0.4)
    mask = rng.random(c.data.shape) < frac
    bits = np.where(mask, rng.integers(1, 32, c.data.shape), 0).astype(np.int16)
    given_mask = gsprep.Mask(mask.astype(np.uint8), bits, 0, np.zeros(c.data.shape, np.int32), None) \
        if with_bits else mask
    path = tmp_path / "m.fits"
    gsprep.write_cutout(path, c, given_mask, np.ones(c.data.shape), overwrite=True)
    with fits.open(path) as h:
        np.testing.assert_array_equal(h["MASK"].data.astype(bool), mask)
        assert h["MASK"].data.dtype == np.uint8
        if with_bits:
            np.testing.assert_array_equal(h["MASKBITS"].data, bits)
        else:
            assert "MASKBITS" not in h

"""User masks from DS9 region files, exposure maps, and the map flags of `gsprep psf` (issue 13, item 2)."""

import numpy as np
import pytest
from astropy.io import fits

from gsprep._bits import BAD, USER
from gsprep.cli import main
from gsprep.noise import exposure_bad, sigma_image
from gsprep.simulate import demo_frame, tan_wcs
from gsprep.usermask import read_user_mask, region_mask
from tests.test_noise_maps import write_config as noise_maps_config

SHAPE = (200, 200)
DQ_BAD = ((60, 40), (150, 170))  # (y, x), DQ = 4
ZERO_EXP = (slice(96, 99), slice(105, 110))  # (y, x) block with exposure 0, inside the cutout


def grid(shape):
    y, x = np.mgrid[: shape[0], : shape[1]]
    return x, y


def region_truth(shape):
    """What the region file of ``write_regions`` covers, counted independently (0-based pixel centres)."""
    x, y = grid(shape)
    circle = (x - 20) ** 2 + (y - 30) ** 2 <= 5.5**2  # DS9 circle(21,31,5.5); no pixel centre on the edge
    hole = (x - 20) ** 2 + (y - 30) ** 2 <= 2.5**2  # -circle(21,31,2.5): excluded
    box = (x >= 55) & (x <= 64) & (y >= 37) & (y <= 42)  # box(60.5,40.5,10,6,0): centre (59.5, 39.5) 0-based
    return (circle & ~hole) | box, circle, box


def write_regions(path):
    path.write_text("# Region file format: DS9 version 4.1\n"
                    'global color=green width=1 font="helvetica 10 normal roman"\n'
                    "image\n"
                    "circle(21,31,5.5)\n"
                    "box(60.5,40.5,10,6,0) # text={a box}\n"
                    "-circle(21,31,2.5)\n")
    return path


def test_a_region_file_masks_exactly_the_pixels_inside(tmp_path):
    want, circle, box = region_truth((80, 100))
    assert circle.sum() == 97 and box.sum() == 60  # the shapes counted by hand
    got = read_user_mask(write_regions(tmp_path / "m.reg"), (80, 100))
    assert got.dtype == bool and got.sum() == want.sum() == 97 - 21 + 60
    np.testing.assert_array_equal(got, want)
    # detected by its content too (a name without .reg)
    (tmp_path / "m.txt").write_text((tmp_path / "m.reg").read_text())
    np.testing.assert_array_equal(read_user_mask(tmp_path / "m.txt", (80, 100)), want)


def test_sky_regions_are_placed_with_the_frame_wcs(tmp_path):
    shape = (80, 100)
    w = tan_wcs(150.1, 2.2, shape, 0.4)
    c = w.pixel_to_world(40, 50)  # 0-based pixel (40, 50)
    (tmp_path / "sky.reg").write_text(f"fk5\ncircle({c.ra.deg:.8f},{c.dec.deg:+.8f},3\")\n")  # 3" = 7.5 px
    got = region_mask(tmp_path / "sky.reg", shape, wcs=w)
    x, y = grid(shape)
    np.testing.assert_array_equal(got, (x - 40) ** 2 + (y - 50) ** 2 <= 7.5**2)
    with pytest.raises(ValueError, match="as a DS9 region file .*sky-coordinate region .* no WCS"):
        region_mask(tmp_path / "sky.reg", shape)


def write_frame(folder):
    data, header = demo_frame(fwhm=2.6, seed=1, shape=SHAPE, n_stars=12)  # EXPTIME 100 s, GAIN 2
    dq = np.zeros(SHAPE, np.int16)
    for y, x in DQ_BAD:
        dq[y, x] = 4
    fits.HDUList([fits.PrimaryHDU(data.astype(np.float32), header=header),
                  fits.ImageHDU(dq, name="DQ")]).writeto(folder / "f_g.fits")
    return header


def write_config(folder, band_extra=()):
    return noise_maps_config(folder, band_extra, r=16.0)


def prepare(folder, band_extra):
    out = folder / "out"
    assert main(["prepare", str(write_config(folder, band_extra)), "--out", str(out), "--no-figures", "--quiet"]) == 0
    with fits.open(out / "t1_g.fits") as h:
        ox, oy = h[0].header["ORIGX"], h[0].header["ORIGY"]
        return (h[0].data.astype(float), h["SIGMA"].data.astype(float), h["MASK"].data, h["MASKBITS"].data,
                (ox, oy))


def test_prepare_region_user_mask_gets_the_user_bit(tmp_path):
    write_frame(tmp_path)
    # DS9 pixels are 1-based: centre (80.5, 89.5) 0-based, 4 x 2 -> x 79..82, y 89..90 (inside the 81 px cutout)
    (tmp_path / "m.reg").write_text("image\nbox(81.5,90.5,4,2,0)\n")
    _, sigma, mask, bits, (cx, cy) = prepare(tmp_path, ['user_mask = "m.reg"'])
    frame = np.zeros(SHAPE, bool)
    frame[89:91, 79:83] = True
    inside = frame[cy : cy + mask.shape[0], cx : cx + mask.shape[1]]
    assert inside.sum() == 8
    assert np.all(bits[inside] & USER) and np.all(mask[inside] == 1) and not np.any(bits[~inside] & USER)
    assert np.all(np.isfinite(sigma) & (sigma > 0))


def test_a_region_file_that_does_not_parse_is_one_error_nothing_written(tmp_path, capsys):
    write_frame(tmp_path)
    (tmp_path / "bad.reg").write_text("image\ncircle(10,20\nhello there\n")
    out = tmp_path / "out"
    assert main(["prepare", str(write_config(tmp_path, ['user_mask = "bad.reg"'])), "--out", str(out),
                 "--no-figures"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "config: [bands.g]" in line]
    assert len(lines) == 1, err
    assert "config: [bands.g] user_mask: cannot read " in lines[0] and "bad.reg' as a DS9 region file (" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_sigma_image_with_an_exposure_map_on_known_numbers():
    d = np.array([[100.0, 100.0, -50.0]])
    t = np.array([[100.0, 25.0, 50.0]])
    got = sigma_image(d, exptime=t, gain=2.0, sky_rms=0.1)
    np.testing.assert_allclose(got, np.sqrt([[100 / 200 + 0.01, 100 / 50 + 0.01, 50 / 100 + 0.01]]))
    assert exposure_bad(np.array([[1.0, 0.0, -3.0, np.nan]])).tolist() == [[False, True, True, True]]
    with pytest.raises(ValueError, match="exposure map"):
        sigma_image(d, exptime=np.array([[100.0, 0.0, 1.0]]), gain=2.0, sky_rms=0.1)


def test_prepare_sigma_follows_the_exposure_map(tmp_path):
    write_frame(tmp_path)
    x, _ = grid(SHAPE)
    t = np.where(x < 100, 100.0, 400.0)  # 100 s = the header's EXPTIME on the left, 4x on the right
    t[ZERO_EXP] = 0.0
    fits.PrimaryHDU(t.astype(np.float32)).writeto(tmp_path / "exp.fits")
    data, sigma, mask, bits, (ox, oy) = prepare(tmp_path, ['exposure = "exp.fits"'])
    tt = t[oy : oy + mask.shape[0], ox : ox + mask.shape[1]]
    zero = tt == 0
    assert zero.sum() == 15
    assert np.all(bits[zero] & BAD) and np.all(mask[zero] == 1)
    assert np.all(np.isfinite(sigma) & (sigma > 0)) and np.all(sigma[zero] > 100 * np.median(sigma))
    good = ~zero & np.isfinite(data)
    sky_var = sigma**2 - np.abs(data) / (2.0 * np.where(zero, 1.0, tt))  # the sky rms^2 where the formula holds
    rms2 = np.median(sky_var[good])
    np.testing.assert_allclose(sky_var[good], rms2, rtol=0, atol=2e-6 * np.max(sigma[good] ** 2))
    # with EXPTIME alone the right half would be sqrt(|d| / (2 * 100) + rms^2)
    right = good & (tt == 400.0) & (np.abs(data) > 1.0)
    assert right.sum() > 50
    assert np.all(sigma[right] ** 2 < np.abs(data[right]) / 200.0 + rms2 - 1e-3)


def test_exposure_map_of_the_wrong_shape_is_one_config_error(tmp_path, capsys):
    write_frame(tmp_path)
    fits.PrimaryHDU(np.ones((50, 60), np.float32)).writeto(tmp_path / "exp.fits")
    out = tmp_path / "out"
    assert main(["prepare", str(write_config(tmp_path, ['exposure = "exp.fits"'])), "--out", str(out),
                 "--no-figures"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "config: [bands.g]" in line]
    assert len(lines) == 1 and "config: [bands.g] exposure: the map " in lines[0] and "(50, 60)" in lines[0], err
    assert not out.exists() or not any(out.iterdir())


class _Stop(Exception):
    pass


@pytest.fixture()
def caught_sigma(monkeypatch):
    """``gsprep psf`` stopped where it looks for stars; the sigma image it would fit with is kept."""
    import gsprep.pipeline

    seen = {}

    def stop(image, clean, sigma, sky, **kw):
        seen["sigma"] = np.asarray(sigma)
        raise _Stop("stopped before the stars")

    monkeypatch.setattr(gsprep.pipeline, "frame_psf_stars", stop)
    return seen


def test_psf_flags_reach_the_fit(tmp_path, caught_sigma, capsys):
    write_frame(tmp_path)
    t = np.full(SHAPE, 100.0)
    t[ZERO_EXP] = 0.0
    fits.PrimaryHDU(t.astype(np.float32)).writeto(tmp_path / "exp.fits")
    (tmp_path / "m.reg").write_text("image\nbox(30.5,170.5,4,2,0)\n")  # 0-based x 28..31, y 169..170
    f = str(tmp_path / "f_g.fits")
    args = ["psf", f, "--fwhm", "2.6", "--out", str(tmp_path / "p.fits"), "--no-figures", "--quiet",
            "--sky-order", "1", "--dq", f"{f}[DQ]", "--dq-bad", "4", "--exposure", str(tmp_path / "exp.fits"),
            "--user-mask", str(tmp_path / "m.reg")]
    assert main(args) == 2 and "stopped before the stars" in capsys.readouterr().err
    sigma = caught_sigma["sigma"]
    out = np.zeros(SHAPE, bool)
    out[ZERO_EXP] = True
    out[169:171, 28:32] = True
    for y, x in DQ_BAD:
        out[y, x] = True
    assert np.all(np.isfinite(sigma) & (sigma > 0))
    assert np.all(sigma[out] > 1e3 * np.median(sigma)) and np.all(sigma[~out] < 100 * np.median(sigma))
    assert not (tmp_path / "p.fits").exists()


@pytest.mark.parametrize(("extra", "says"), [
    (["--noise", "missing.fits[1]", "--noise-kind", "rms"], "--noise: no such file"),
    (["--noise", "{f}[0]"], "--noise needs --noise-kind"),
    (["--noise-kind", "rms"], "--noise-kind is set but there is no noise map"),
    (["--dq", "{f}[DQ]", "--dq-bad", "4,x"], "--dq-bad must be DQ bit values"),
    (["--dq", "{f}[NOPE]"], "--dq: hdu='NOPE' not in"),
    (["--user-mask", "{d}/bad.reg"], "--user-mask: cannot read"),
    (["--exposure", "{d}/small.fits"], "--exposure: the map"),
    (["--noise", "{d}/small.fits", "--noise-kind", "variance"], "--noise: the map"),
])
def test_psf_map_flag_errors_name_the_flag(tmp_path, capsys, extra, says):
    write_frame(tmp_path)
    (tmp_path / "bad.reg").write_text("image\ncircle(1,2\n")
    fits.PrimaryHDU(np.ones((50, 60), np.float32)).writeto(tmp_path / "small.fits")
    f = str(tmp_path / "f_g.fits")
    extra = [e.format(f=f, d=tmp_path) for e in extra]
    out = tmp_path / "p.fits"
    assert main(["psf", f, "--fwhm", "2.6", "--out", str(out), "--no-figures", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gsprep: error: ") and says in err[0], err
    assert not out.exists()

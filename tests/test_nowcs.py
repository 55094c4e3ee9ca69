"""Targets on frames without a WCS: x, y (0-based pixels) and a pixel scale (issue 13, item 5)."""

import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

import gsprep
from gsprep.batch import prepare_one, read_targets, target_configs
from gsprep.cli import main
from gsprep.pipeline import load_config, run_target
from gsprep.simulate import demo_frame
from gsprep.wcs import STANDIN_CRVAL, StandInWCSWarning, cut_wcs_header, strip_wcs

SCALE = 0.4  # arcsec / pixel of the demo frame
X, Y = 150.0, 150.0  # the target pixel (the galaxy is at the frame centre, 149.5)


def frame(with_wcs):
    data, header = demo_frame(fwhm=2.6, seed=0, shape=(300, 300), n_stars=30)
    wcs = WCS(header)
    if not with_wcs:
        header = strip_wcs(header)
        assert "CTYPE1" not in header and "EXPTIME" in header
    return data, header, wcs


def write_frame(path, with_wcs=False):
    data, header, wcs = frame(with_wcs)
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(path)
    return wcs


def write_config(folder, target, band_extra="pixel_scale = 0.4", options="psf = false", name="t1"):
    lines = ["[target]", f'name = "{name}"', *target, "r = 20.0", "", "[options]", "sky_order = 1",
             "oversampling = 2", "stamp_size = 21", options, "", "[bands.g]", 'file = "f_g.fits"', "fwhm = 2.6",
             "zeropoint = 25.0", 'filter = "sloan_g"', band_extra, ""]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def r2(lyric):
    m = re.search(r"^R2\) \[([^,\]]+),([^\]]+)\]", lyric, re.MULTILINE)
    return float(m.group(1)), float(m.group(2))


# ---------------------------------------------------------------- the cutout API


def test_cutout_by_pixel_matches_the_cut_by_sky():
    data, _, wcs = frame(True)
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(X, Y))
    by_sky = gsprep.cutout(data, wcs, ra, dec, 20.0)
    by_pix = gsprep.cutout(data, None, x=X, y=Y, r=20.0, pixel_scale=SCALE)
    by_pix_wcs = gsprep.cutout(data, wcs, x=X, y=Y, r=20.0)  # x, y with a WCS: ra, dec from it
    n = int(20.0 / SCALE)
    for c in (by_pix, by_pix_wcs):
        np.testing.assert_array_equal(c.data, by_sky.data)
        assert c.origin == by_sky.origin == (X - n, Y - n) and c.center == (n, n)
        assert c.pixel_scale == pytest.approx(SCALE) and c.data.shape == (2 * n + 1, 2 * n + 1)
    assert by_pix.wcs is None and np.isnan(by_pix.ra) and np.isnan(by_pix.dec)
    assert (by_pix_wcs.ra, by_pix_wcs.dec) == pytest.approx((ra, dec), abs=1e-9)
    np.testing.assert_array_equal(by_pix.data[n, n], data[int(Y), int(X)])
    # a target between pixels: the nearest pixel is the centre, as for a target on the sky
    ra2, dec2 = (float(v) for v in wcs.pixel_to_world_values(150.6, 149.4))
    a, b = gsprep.cutout(data, wcs, ra2, dec2, 20.0), gsprep.cutout(data, None, x=150.6, y=149.4, r=20.0,
                                                                    pixel_scale=SCALE)
    np.testing.assert_array_equal(a.data, b.data)
    assert b.origin == (151 - n, 149 - n) and b.center == pytest.approx((n - 0.4, n + 0.4))
    # a pixel scale given with a WCS overrides the WCS's in the half-size rule
    assert gsprep.cutout(data, wcs, ra, dec, 20.0, pixel_scale=0.8).n == 25


def test_cutout_without_wcs_needs_pixel_scale_and_pixels():
    data, _, wcs = frame(True)
    with pytest.raises(ValueError, match=r"^pixel_scale \(arcsec/pixel\) is required when wcs is None"):
        gsprep.cutout(data, None, x=X, y=Y, r=20.0)
    with pytest.raises(ValueError, match=r"wcs is None: .* x=, y="):
        gsprep.cutout(data, None, 150.1, 2.2, 20.0, pixel_scale=SCALE)
    with pytest.raises(ValueError, match="either as ra, dec .* or as x, y .*not both"):
        gsprep.cutout(data, wcs, 150.1, 2.2, 20.0, x=X, y=Y)
    with pytest.raises(ValueError, match="no target"):
        gsprep.cutout(data, wcs, r=20.0)
    with pytest.raises(ValueError, match=r"target \(x=400, y=10\) falls at pixel .* outside the frame"):
        gsprep.cutout(data, None, x=400, y=10, r=20.0, pixel_scale=SCALE)
    with pytest.raises(ValueError, match="pixel_scale must be"):
        gsprep.cutout(data, None, x=X, y=Y, r=20.0, pixel_scale=-1)


def test_write_cutout_without_wcs_writes_a_marked_stand_in(tmp_path):
    data, _, _ = frame(False)
    c = gsprep.cutout(data, None, x=X, y=Y, r=20.0, pixel_scale=SCALE)
    hdr, dev = cut_wcs_header(c)
    assert dev == -1 and hdr["WCSFAKE"] is True
    with pytest.warns(StandInWCSWarning, match="stand-in TAN WCS .*not real") as rec:
        gsprep.write_cutout(tmp_path / "c.fits", c, np.zeros(c.data.shape, bool), np.ones(c.data.shape))
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    with fits.open(tmp_path / "c.fits") as h:
        h0 = h[0].header
        assert h0["WCSFAKE"] is True and h0["WCSDEV"] == -1 and h0["PIXSCALE"] == SCALE
        w = WCS(h0)  # a WCS astropy reads from the file alone
        assert w.has_celestial and tuple(w.wcs.crval) == STANDIN_CRVAL
        assert tuple(w.wcs.crpix) == (c.center[0] + 1, c.center[1] + 1)
        np.testing.assert_allclose(w.wcs.cdelt, [-SCALE / 3600, SCALE / 3600])
        np.testing.assert_allclose(w.world_to_pixel_values(*STANDIN_CRVAL), c.center, atol=1e-9)
        # one pixel east (left) and north (up) of the target: one pixel scale away
        ra, dec = w.pixel_to_world_values(c.center[0] - 1, c.center[1] + 1)
        assert (ra - 180.0) * 3600 == pytest.approx(SCALE, rel=1e-6)
        assert dec * 3600 == pytest.approx(SCALE, rel=1e-6)
        np.testing.assert_array_equal(h["SCI"].data, c.data.astype(np.float32))


# ---------------------------------------------------------------- prepare


def test_prepare_without_wcs_writes_products_centred_on_the_pixel(tmp_path, capsys):
    write_frame(tmp_path / "f_g.fits", with_wcs=False)
    cfg = write_config(tmp_path, [f"x = {X}", f"y = {Y}"], options="psf = true")
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert sum("stand-in" in line for line in err.splitlines()) == 1, err  # warned once, in one line
    assert "not real" in err
    n = int(20.0 / SCALE)
    with fits.open(out / "t1_g.fits") as h:
        sci = h["SCI"].data
        hdr = h[0].header
        assert hdr["WCSFAKE"] is True and hdr["WCSDEV"] == -1
        assert (hdr["ORIGX"], hdr["ORIGY"]) == (X - n, Y - n)
        w = WCS(hdr)
        np.testing.assert_allclose(w.world_to_pixel_values(*STANDIN_CRVAL), (n, n), atol=1e-9)
        assert h["MASK"].data[n, n] == 0 and np.all(h["SIGMA"].data > 0)
    lyric = (out / "t1_images.lyric").read_text()
    assert r2(lyric) == (hdr["CRVAL1"], hdr["CRVAL2"]) == STANDIN_CRVAL
    assert "stand-in" in next(line for line in lyric.splitlines() if line.startswith("R2)"))
    assert "Ia4) [t1_g_psf.fits,2]" in lyric and (out / "t1_g_psf.fits").exists()
    assert (out / "t1_g_cutout.png").stat().st_size > 1000

    # the same cut made on the same frame with its WCS, the target given by ra, dec: identical data
    (tmp_path / "wcs").mkdir()
    wcs = write_frame(tmp_path / "wcs" / "f_g.fits", with_wcs=True)
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(X, Y))
    cfg2 = load_config(write_config(tmp_path / "wcs", [f"ra = {ra!r}", f"dec = {dec!r}"], band_extra=""))
    run = run_target(cfg2, tmp_path / "wcs" / "out", figures=False)
    assert run.ok
    with fits.open(tmp_path / "wcs" / "out" / "t1_g.fits") as h:
        np.testing.assert_array_equal(h["SCI"].data, sci)
        assert "WCSFAKE" not in h[0].header and 0 <= h[0].header["WCSDEV"] < 0.05
        assert r2((tmp_path / "wcs" / "out" / "t1_images.lyric").read_text()) == pytest.approx((ra, dec))


def test_pixel_target_on_a_frame_with_wcs_gets_its_real_sky_position(tmp_path):
    wcs = write_frame(tmp_path / "f_g.fits", with_wcs=True)
    cfg = load_config(write_config(tmp_path, [f"x = {X}", f"y = {Y}"], band_extra=""))
    assert cfg.ra is None and (cfg.x, cfg.y) == (X, Y) and cfg.bands["g"].pixel_scale is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stand-in here
        run = run_target(cfg, tmp_path / "out", figures=False)
    assert run.ok
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(X, Y))
    assert r2((tmp_path / "out" / "t1_images.lyric").read_text()) == pytest.approx((ra, dec), abs=1e-9)
    with fits.open(tmp_path / "out" / "t1_g.fits") as h:
        assert "WCSFAKE" not in h[0].header
        assert (h[0].header["CRVAL1"], h[0].header["CRVAL2"]) == pytest.approx((ra, dec), abs=1e-9)


def test_missing_pixel_scale_without_wcs_is_one_clear_error_and_nothing_written(tmp_path, capsys):
    write_frame(tmp_path / "f_g.fits", with_wcs=False)
    cfg = write_config(tmp_path, [f"x = {X}", f"y = {Y}"], band_extra="")
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out)]) == 1
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "no WCS" in line]
    assert len(lines) == 1 and "pixel_scale = ARCSEC_PER_PIXEL in [bands.g]" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    # ra, dec on a frame without a WCS: the error says to give x, y
    cfg = write_config(tmp_path, ["ra = 150.1", "dec = 2.2"], name="t2")
    run = run_target(load_config(cfg), tmp_path / "out2", figures=False)
    assert "has no WCS, so the target cannot be placed by ra, dec; give x, y" in run.errors["g"]
    assert not any((tmp_path / "out2").glob("*.fits"))


@pytest.mark.parametrize(("target", "match"), [
    (["ra = 150.1", "dec = 2.2", "x = 150", "y = 150"], r"config: \[target\] takes ra, dec .* or x, y .*not both"),
    (["x = 150"], r"config: \[target\] needs ra and dec .* or x and y .*; it has only \['x'\]"),
    (["ra = 150.1", "y = 3"], r"config: \[target\] takes ra, dec .*not both"),
    (["x = 150", 'y = "a"'], r"config: \[target\] y must be"),
    ([], r"config: \[target\] needs ra and dec .* or x and y"),
])
def test_target_keys_in_the_config(tmp_path, target, match):
    cfg = write_config(tmp_path, target)
    with pytest.raises(ValueError, match=match):
        load_config(cfg)


def test_pixel_scale_key_is_checked(tmp_path):
    cfg = write_config(tmp_path, [f"x = {X}", f"y = {Y}"], band_extra="pixel_scale = 0")
    with pytest.raises(ValueError, match=r"config: \[bands.g\] pixel_scale must be"):
        load_config(cfg)


# ---------------------------------------------------------------- batch


def test_batch_table_with_x_y(tmp_path):
    write_frame(tmp_path / "f_g.fits", with_wcs=False)
    bands = tmp_path / "bands.toml"
    bands.write_text("[target]\nr = 20.0\n[options]\nsky_order = 1\npsf = false\n"
                     '[bands.g]\nfile = "f_g.fits"\nfwhm = 2.6\npixel_scale = 0.4\nfilter = "sloan_g"\n')
    Table({"name": ["a", "b"], "x": [X, X + 3], "y": [Y, Y - 2]}).write(tmp_path / "t.csv")
    tab = read_targets(tmp_path / "t.csv")
    configs = target_configs(tab, load_config(bands, batch=True), targets_dir=tmp_path)
    assert [(c.name, c.x, c.y, c.ra, c.dec) for c in configs] == [("a", X, Y, None, None),
                                                                  ("b", X + 3, Y - 2, None, None)]
    out = tmp_path / "out"
    with pytest.warns(StandInWCSWarning):
        rec = prepare_one(configs[1], str(out), figures=False)
    assert rec["status"] == "done", rec["error"]
    with fits.open(out / "b" / "b_g.fits") as h:
        n = h[0].header["CUTNPIX"]
        assert h[0].header["WCSFAKE"] is True and (h[0].header["ORIGX"], h[0].header["ORIGY"]) == (X + 3 - n,
                                                                                                   Y - 2 - n)
    assert r2((out / "b" / "b_images.lyric").read_text()) == STANDIN_CRVAL
    # both kinds of target columns, or half a pair: one clear error
    Table({"name": ["a"], "ra": [150.1], "dec": [2.2], "x": [1.0], "y": [2.0]}).write(tmp_path / "both.csv")
    with pytest.raises(ValueError, match="targets: columns ra, dec .* or x, y .*not both"):
        read_targets(tmp_path / "both.csv")
    Table({"name": ["a"], "x": [1.0]}).write(tmp_path / "half.csv")
    with pytest.raises(ValueError, match=r"targets: missing column\(s\) \['y'\]"):
        read_targets(tmp_path / "half.csv")
    Table({"name": ["a"], "x": [np.nan], "y": [2.0]}).write(tmp_path / "nan.csv")
    with pytest.raises(ValueError, match=r"targets: x not a finite number or missing for \['a'\]"):
        read_targets(tmp_path / "nan.csv")


def test_mixed_frames_are_all_cut_by_pixels_with_the_stand_in(tmp_path):
    write_frame(tmp_path / "f_g.fits", with_wcs=False)
    data, header = demo_frame(fwhm=3.2, seed=1, shape=(300, 300), n_stars=30)
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(tmp_path / "f_r.fits")
    cfg = write_config(tmp_path, [f"x = {X}", f"y = {Y}"])
    with open(cfg, "a") as f:
        f.write('[bands.r]\nfile = "f_r.fits"\nfwhm = 3.2\nfilter = "sloan_r"\n')
    config = load_config(cfg)
    with pytest.warns(StandInWCSWarning) as rec, pytest.warns(UserWarning, match="band.s. g have no WCS: every band"):
        run = run_target(config, tmp_path / "out", figures=False)
    assert run.ok and sum(isinstance(w.message, StandInWCSWarning) for w in rec) == 1
    assert run.products["r"].cutout.wcs is None and run.products["r"].cutout.pixel_scale == pytest.approx(SCALE)
    for band in ("g", "r"):
        with fits.open(tmp_path / "out" / f"t1_{band}.fits") as h:
            assert h[0].header["WCSFAKE"] is True
    assert r2((tmp_path / "out" / "t1_images.lyric").read_text()) == STANDIN_CRVAL


def test_star_reference_without_wcs_is_refused_before_any_work(tmp_path):
    write_frame(tmp_path / "f_g.fits", with_wcs=False)
    cfg = write_config(tmp_path, [f"x = {X}", f"y = {Y}"], options="psf = true")
    with open(cfg, "a") as f:
        f.write("[criteria]\nstarcord_list = [[150.1, 2.2]]\n")
    run = run_target(load_config(cfg), tmp_path / "out", figures=False)
    assert "[criteria] starcord_list" in run.errors["g"] and "no WCS" in run.errors["g"]
    assert not any((tmp_path / "out").glob("*"))

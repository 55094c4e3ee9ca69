import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import gsprep
from gsprep.cli import main
from gsprep.pipeline import load_config
from gsprep.simulate import demo_frame

RA, DEC = 150.1, 2.2


def write_frames(folder, bands=(("g", 2.6), ("r", 3.2)), ra=RA):
    for i, (band, fwhm) in enumerate(bands):
        data, header = demo_frame(fwhm=fwhm, seed=i, shape=(300, 300), n_stars=30, ra=ra)
        fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(folder / f"f_{band}.fits")


def write_config(folder, extra_band="", options="", bands=(("g", 2.6), ("r", 3.2))):
    lines = ["[target]", 'name = "t1"', f"ra = {RA}", f"dec = {DEC}", "r = 20.0", "", "[options]",
             "oversampling = 2", "stamp_size = 21", "sky_order = 1", options, ""]
    for band, fwhm in bands:
        lines += [f"[bands.{band}]", f'file = "f_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    lines.append(extra_band)
    path = folder / "cfg.toml"
    path.write_text("\n".join(lines))
    return path


def test_prepare_end_to_end(tmp_path, capsys):
    write_frames(tmp_path)
    cfg = write_config(tmp_path)
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out)]) == 0
    for band in ("g", "r"):
        cut = out / f"t1_{band}.fits"
        psf = out / f"t1_{band}_psf.fits"
        with fits.open(cut) as h:
            assert [x.name for x in h[:3]] == ["SCI", "MASK", "SIGMA"]
            n = (h[0].data.shape[0] - 1) // 2
            assert n == int(20.0 / 0.4)
            x, y = WCS(h[0].header).world_to_pixel_values(RA, DEC)
            assert abs(x - n) < 0.51 and abs(y - n) < 0.51
            assert h["MASK"].data[n, n] == 0 and 0 < h["MASK"].data.mean() < 0.8
            assert np.all(h["SIGMA"].data > 0)
        with fits.open(psf) as h:
            assert h[0].header["OVERSAMP"] == 2 and abs(h[0].data.sum() - 1) < 1e-5
            assert h[0].data.shape == (42, 42)
            # the quality report survives the bands-in-one-call split into per-band files
            hdr = h[0].header
            assert hdr["CONVERGE"] and 0.5 < hdr["HELDCHI2"] < 3 * hdr["CHI2"] and hdr["REGKIND"] in ("smooth", "profile"), (hdr["HELDCHI2"], hdr["CHI2"])
            assert 1.5 < hdr["FWHM"] < 5 and 0 <= hdr["ELLIP"] < 0.2
        for fig in ("sky", "cutout", "funnel", "stars", "psf"):
            assert (out / f"t1_{band}_{fig}.png").stat().st_size > 1000
    lyric = (out / "t1_images.lyric").read_text()
    for line in lyric.splitlines():
        for token in line.split("#")[0].replace("[", " ").replace("]", " ").replace(",", " ").split():
            if token.endswith(".fits"):
                assert (out / token).exists(), token
    assert "Ia1) [t1_g.fits,0]" in lyric and "Ib4) [t1_r_psf.fits,2]" in lyric and "Ia10) 25.0" in lyric
    # GalfitS reads the native-pixel PSF (HDU 2): odd, centred on its central pixel, sum 1, Ia5) 1
    assert "Ia5) 1 " in lyric and "Ia2) sloan_g " in lyric and "Ia15) 1 " in lyric and "Aa2) ['a', 'b']" in lyric
    with fits.open(out / "t1_r_psf.fits") as h:
        nat = h[2].data.astype(float)
        assert h[2].name == "NATIVE" and nat.shape == (21, 21) and abs(nat.sum() - 1) < 1e-5
        yy, xx = np.indices(nat.shape)
        assert abs((nat * xx).sum() - 10) < 0.05 and abs((nat * yy).sum() - 10) < 0.05


def test_prepare_target_is_pure_and_matches_cli_products(tmp_path):
    write_frames(tmp_path, bands=(("g", 2.6),))
    cfg = load_config(write_config(tmp_path, bands=(("g", 2.6),)))
    img = gsprep.read_image(cfg.bands["g"].file)
    before = img.data.copy()
    prods = gsprep.prepare_target({"g": img}, RA, DEC, cfg)
    np.testing.assert_array_equal(img.data, before)
    p = prods["g"]
    assert p.error is None and p.psf.psf.sum() == pytest.approx(1.0, abs=1e-6)
    assert p.mask.mask[p.cutout.n, p.cutout.n] == 0


def test_bad_config(tmp_path, capsys):
    write_frames(tmp_path)
    cfg = write_config(tmp_path, options="colour = 3")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\] in \[options\]"):
        load_config(cfg)
    assert main(["prepare", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsprep: error: config: unknown key") and "Traceback" not in err
    cfg = write_config(tmp_path, extra_band='[bands.z]\nfile = "f_g.fits"\nfwhm = 3.0\ncolour = "z"\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\] in \[bands.z\]"):
        load_config(cfg)
    with pytest.raises(FileNotFoundError, match="config: no such file"):
        load_config(tmp_path / "nope.toml")


def test_missing_file_and_off_frame_band_are_skipped(tmp_path, capsys):
    write_frames(tmp_path)
    # a third band whose frame is elsewhere on the sky, a fourth whose file is missing
    data, header = demo_frame(fwhm=3.0, seed=5, shape=(300, 300), n_stars=30, ra=151.0)
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(tmp_path / "f_far.fits")
    extra = '[bands.far]\nfile = "f_far.fits"\nfwhm = 3.0\nfilter = "sloan_i"\n\n[bands.gone]\nfile = "missing.fits"\nfwhm = 3.0\n'
    cfg = write_config(tmp_path, extra_band=extra)
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out), "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "gone: skipped: path: no such file" in text
    assert "far: skipped: target (ra=150.1, dec=2.2) falls at pixel" in text
    assert (out / "t1_g.fits").exists() and (out / "t1_r.fits").exists()
    assert not (out / "t1_far.fits").exists()
    lyric = (out / "t1_images.lyric").read_text()
    assert "far" not in lyric and "Ib2) sloan_r" in lyric


def test_psf_command(tmp_path, capsys):
    write_frames(tmp_path, bands=(("g", 2.6),))
    out = tmp_path / "psf.fits"
    assert main(["psf", str(tmp_path / "f_g.fits"), "--fwhm", "2.6", "--size", "21", "--out", str(out)]) == 0
    res = gsprep.read_psf(out)
    assert res.psf.shape == (42, 42) and (res.flags == 0).sum() >= 10
    assert main(["psf", str(tmp_path / "f_g.fits"), "--fwhm", "2.6", "--size", "20", "--out",
                 str(tmp_path / "x.fits")]) == 2
    assert "size must be an odd integer" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.fits")


def test_bands_in_one_call_match_band_by_band(tmp_path):
    write_frames(tmp_path, bands=(("g", 2.6), ("r", 3.2)))
    # a third band whose frame does not hold the target: it fails alone, the stack goes on
    data, header = demo_frame(fwhm=3.0, seed=5, shape=(300, 300), n_stars=30, ra=151.0)
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(tmp_path / "f_far.fits")
    cfg = load_config(write_config(tmp_path, extra_band='[bands.far]\nfile = "f_far.fits"\nfwhm = 3.0\nfilter = "sloan_i"\n'))
    images = {b: gsprep.read_image(s.file) for b, s in cfg.bands.items()}
    stacked = gsprep.prepare_target(images, RA, DEC, cfg, stack_bands=True)  # sky and PSF stacked
    single = gsprep.prepare_target(images, RA, DEC, cfg, stack_bands=False)
    assert list(stacked) == ["g", "r", "far"]
    assert "falls at pixel" in stacked["far"].error and single["far"].error == stacked["far"].error
    for band in ("g", "r"):
        a, b = stacked[band], single[band]
        assert a.error is None
        # float32 sums in another order: same sky to 1e-5 of the noise, same PSF to 1e-4 of its peak
        assert np.abs(a.sky.background - b.sky.background).max() < 1e-5 * b.sky.rms
        np.testing.assert_array_equal(a.mask.mask, b.mask.mask)
        assert a.psf.psf.shape == b.psf.psf.shape and a.psf.fluxes.shape == b.psf.fluxes.shape
        assert np.abs(a.psf.psf - b.psf.psf).max() < 1e-4 * b.psf.psf.max()
        np.testing.assert_array_equal(a.psf.flags, b.psf.flags)
    # the two bands have different star counts: the stack padded one of them
    assert len(stacked["g"].psf.fluxes) != len(stacked["r"].psf.fluxes)
    with pytest.raises(ValueError, match="stack_bands must be 'auto', True or False"):
        gsprep.prepare_target(images, RA, DEC, cfg, stack_bands="yes")


def no_work(*args, **kwargs):
    raise AssertionError("work started before the options were checked")


def test_prepare_refuses_existing_products_before_any_work(tmp_path, capsys, monkeypatch):
    write_frames(tmp_path)
    cfg = write_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "t1_r_psf.fits").write_bytes(b"an earlier product")
    monkeypatch.setattr("gsprep.pipeline.read_bands", no_work)
    assert main(["prepare", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"gsprep: error: out: {str(out)!r} already holds products of t1 (t1_r_psf.fits); "
        "add --overwrite to replace them"]
    assert os.listdir(out) == ["t1_r_psf.fits"] and (out / "t1_r_psf.fits").read_bytes() == b"an earlier product"
    with pytest.raises(FileExistsError, match="pass overwrite=True to replace them"):
        gsprep.pipeline.run_target(load_config(cfg), out)


def test_prepare_when_every_band_fails_says_so_and_not_wrote(tmp_path, capsys):
    cfg = write_config(tmp_path)  # no frames written: both bands fail
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out), "--no-figures"]) == 1
    cap = capsys.readouterr()
    assert "wrote" not in cap.out and "g: skipped: path: no such file" in cap.out
    assert cap.err.strip() == f"gsprep: error: every band failed (2 of 2); nothing written to {out}"


@pytest.mark.parametrize(("option", "match"), [
    ("sky_order = 2.5", r"config: \[options\] sky_order must be an integer between 0 and 12, got 2.5"),
    ("oversampling = 0", r"config: \[options\] oversampling must be an integer between 1 and 16, got 0"),
    ("stamp_size = 20", r"config: \[options\] stamp_size must be an odd integer >= 3, got 20"),
    ('mask_nsigma = "3"', r"config: \[options\] mask_nsigma must be a positive number, got '3'"),
    ('deblend = "yes"', r"config: \[options\] deblend must be true or false, got 'yes'"),
    ("wing_level = 0", r"config: \[options\] wing_level must be a finite number > 0, got 0"),
    ("magnification = 0.5", r"config: \[options\] magnification must be >= 1, got 0.5"),
])
def test_config_options_are_checked_when_read_naming_the_toml_key(tmp_path, option, match):
    cfg = write_config(tmp_path)
    key = option.split(" = ")[0]
    lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith(key + " = ")]
    lines.insert(lines.index("[options]") + 1, option)
    cfg.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=match):
        load_config(cfg)


@pytest.mark.parametrize(("old", "new", "match"), [
    (f"dec = {DEC}", "dec = 95.0", r"config: \[target\] dec must be within \[-90, 90\] degrees"),
    (f"ra = {RA}", "ra = 510.1", r"config: \[target\] ra must be within \[0, 360\) degrees"),
    ("r = 20.0", 'r = "20"', r"config: \[target\] r must be a positive number, got '20'"),
    ("fwhm = 2.6", "fwhm = -2.6", r"config: \[bands.g\] fwhm must be a finite number > 0"),
    ('filter = "sloan_g"\n\n[bands.r]', 'filter = "sloan_g"\nunit = "Jy"\n\n[bands.r]',
     r"config: \[bands.g\] unit must be one of"),
    ("[bands.g]", "[criteria]\ndrop = 5\n\n[bands.g]", r"config: \[criteria\] drop must be a sequence of star ids"),
    ("[bands.g]", "[criteria]\nq_min = 'a'\n\n[bands.g]", r"config: \[criteria\] q_min must be a number, got 'a'"),
    ("r = 20.0", "r = 20.0\nredshift = -0.1", r"config: \[target\] redshift must be"),
    ("sky_order = 1", 'sky_order = 1\nlyric_psf = "fine"', r"config: \[options\] lyric_psf must be one of"),
    ('filter = "sloan_g"', "filter = 5", r"config: \[bands.g\] filter must be a GalfitS filter name"),
])
def test_config_values_are_checked_when_read_naming_the_toml_key(tmp_path, old, new, match):
    cfg = write_config(tmp_path)
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=match):
        load_config(cfg)


def test_target_not_detected_names_the_toml_keys(tmp_path):
    write_frames(tmp_path, bands=(("g", 2.6),))
    cfg = load_config(write_config(tmp_path, options="psf = false\nmask_nsigma = 1e6", bands=(("g", 2.6),)))
    img = gsprep.read_image(cfg.bands["g"].file)
    p = gsprep.prepare_target({"g": img}, RA, DEC, cfg)["g"]
    assert "lower mask_nsigma or mask_npixels in [options]" in p.error and "require_target = false" in p.error
    assert "pass require_target" not in p.error
    import dataclasses

    with pytest.warns(UserWarning, match="the target was not detected"):
        p = gsprep.prepare_target({"g": img}, RA, DEC, dataclasses.replace(cfg, require_target=False))["g"]
    assert p.error is None and p.mask.target_label == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--oversampling", "0"], "--oversampling must be an integer between 1 and 16, got 0"),
    (["--size", "20"], "--size must be an odd integer >= 3, got 20"),
    (["--fwhm", "-1"], "--fwhm must be a finite number > 0, got -1.0"),
    (["--q-min", "2"], r"--q-min must be a finite number within [0, 1], got 2.0"),
    (["--npixels", "0"], "--npixels must be an integer >= 1, got 0"),
    (["--sky-order", "13"], "--sky-order must be an integer between 0 and 12, got 13"),
    (["--exptime", "0"], "--exptime must be a finite number > 0, got 0.0"),
    (["--stars", "nope.ecsv"], "--stars: no such file 'nope.ecsv'"),
    (["--stars", "cat.ecsv", "--gaia"], "give --stars FILE or --gaia, not both"),
    (["--out", "/no/such/folder/psf.fits"], "--out: folder '/no/such/folder' does not exist"),
    (["--out", "old.fits"], "--out: 'old.fits' exists; add --overwrite to replace it"),
])
def test_psf_options_are_checked_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "frame.fits").write_bytes(b"")
    (tmp_path / "old.fits").write_bytes(b"x")
    (tmp_path / "cat.ecsv").write_text("ra dec\n1 2\n")
    monkeypatch.setattr("gsprep.io.read_image", no_work)
    base = {"--fwhm": "2.6", "--out": "new.fits"}
    for flag, value in zip(args[::2], args[1::2], strict=False):
        base[flag] = value
    argv = ["psf", "frame.fits"] + [x for kv in base.items() for x in kv]
    argv += [a for a in args if a == "--gaia"]
    argv = [a for a in argv if a != "--gaia" or "--gaia" in args]
    assert main([a for a in argv if a]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gsprep: error: {message}"]
    assert sorted(os.listdir(tmp_path)) == ["cat.ecsv", "frame.fits", "old.fits"]


def test_psf_without_exptime_is_refused_not_assumed(tmp_path, capsys):
    data, header = demo_frame(fwhm=2.6, seed=0, shape=(120, 120), n_stars=5)
    del header["EXPTIME"]
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(tmp_path / "f.fits")
    out = tmp_path / "psf.fits"
    assert main(["psf", str(tmp_path / "f.fits"), "--fwhm", "2.6", "--size", "21", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no EXPTIME in the header" in err and "give --exptime SECONDS (or --unit counts" in err
    assert not out.exists()


def test_header_warnings_are_one_line_and_debug_after_the_command_shows_them(tmp_path, capsys, monkeypatch):
    from .conftest import data_path

    def stop(*args, **kwargs):
        raise ValueError("stopped after reading")

    monkeypatch.setattr("gsprep.pipeline.fit_sky", stop)
    dss = data_path("dss.14.29.56-62.41.05.fits.gz")
    argv = ["psf", dss, "--fwhm", "3", "--exptime", "60", "--out", str(tmp_path / "p.fits")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0] == "gsprep: error: stopped after reading"
    assert err[1].startswith("gsprep: note: astropy fixed or flagged the headers of the frames (1 warning)")
    assert err[1].endswith("--debug shows them")
    with pytest.raises(ValueError, match="stopped after reading"):
        main([*argv, "--debug"])  # --debug after the command: the traceback and every warning in full
    err = capsys.readouterr().err
    assert "gsprep: warning: HeaderWarning: " in err and "SKEW" in err and "note:" not in err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gsprep.batch.run_batch", interrupted)
    assert main(["batch", "t.csv", "--config", "b.toml", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gsprep: interrupted; finished targets are kept: run the same command again to resume"]


def test_python_advice_is_restated_as_command_line_flags(tmp_path, monkeypatch):
    from gsprep import stars as stars_mod
    from gsprep.cli import _cli_message

    class Down:
        def launch_job_async(self, query):
            raise OSError("network is unreachable")

    monkeypatch.setattr(stars_mod, "_gaia_client", lambda: Down())
    with pytest.raises(ConnectionError) as info:
        gsprep.gaia_stars(10.0, 20.0, 60.0, cache=tmp_path)
    assert "select_stars(reference=...)" in str(info.value)
    text = _cli_message(str(info.value))
    assert "gsprep psf --stars FILE" in text and "reference=" not in text
    assert _cli_message("path: 'x.fits' exists; pass overwrite=True to replace it") == \
        "path: 'x.fits' exists; add --overwrite to replace it"

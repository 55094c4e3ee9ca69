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
        lines += [f"[bands.{band}]", f'file = "f_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0", ""]
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
        for fig in ("sky", "cutout", "funnel", "stars", "psf"):
            assert (out / f"t1_{band}_{fig}.png").stat().st_size > 1000
    lyric = (out / "t1_images.lyric").read_text()
    for line in lyric.splitlines():
        for token in line.split("#")[0].replace("[", " ").replace("]", " ").replace(",", " ").split():
            if token.endswith(".fits"):
                assert (out / token).exists(), token
    assert "Ia1) [t1_g.fits,0]" in lyric and "Ib4) [t1_r_psf.fits,0]" in lyric and "Ia10) 25.0" in lyric


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
    cfg = write_config(tmp_path, extra_band='[bands.z]\nfile = "f_g.fits"\nfwhm = 3.0\nfilter = "z"\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['filter'\] in \[bands.z\]"):
        load_config(cfg)
    with pytest.raises(FileNotFoundError, match="config: no such file"):
        load_config(tmp_path / "nope.toml")


def test_missing_file_and_off_frame_band_are_skipped(tmp_path, capsys):
    write_frames(tmp_path)
    # a third band whose frame is elsewhere on the sky, a fourth whose file is missing
    data, header = demo_frame(fwhm=3.0, seed=5, shape=(300, 300), n_stars=30, ra=151.0)
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(tmp_path / "f_far.fits")
    extra = '[bands.far]\nfile = "f_far.fits"\nfwhm = 3.0\n\n[bands.gone]\nfile = "missing.fits"\nfwhm = 3.0\n'
    cfg = write_config(tmp_path, extra_band=extra)
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out), "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "gone: skipped: path: no such file" in text
    assert "far: skipped: target (ra=150.1, dec=2.2) falls at pixel" in text
    assert (out / "t1_g.fits").exists() and (out / "t1_r.fits").exists()
    assert not (out / "t1_far.fits").exists()
    lyric = (out / "t1_images.lyric").read_text()
    assert "far" not in lyric and "Ib2) r" in lyric


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
    cfg = load_config(write_config(tmp_path, extra_band='[bands.far]\nfile = "f_far.fits"\nfwhm = 3.0\n'))
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

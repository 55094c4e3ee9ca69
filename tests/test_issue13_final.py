"""Issue 13, last pieces: the preset detected from the header (``preset = "auto"``), the sky-subtracted frame on
request (GalfitS's ``sky_subtraction(..., filepath=)``) and a per-region sky whose split is found from a step
(``sky_regions = "auto"``)."""

import math
import os
import warnings

import numpy as np
import pytest
from astropy.io import fits

from gsprep.io import AssumptionWarning
from gsprep.presets import PresetWarning, detect_preset

from .test_presets import (
    BADPIX,
    DEC,
    RA,
    R,
    hst_file,
    run,
    scene,
    sdss_file,
    warned,
    wcs_header,
)

N = 40


# --------------------------------------------------------------------------
# 1. preset = "auto"


def jwst_file(folder, name="jw_i2d.fits", telescop="JWST"):
    pixar = 2.29e-14
    sci = scene(level=0.5)
    err = 0.02 + 0.001 * np.arange(N)[None, :] + 0.0 * sci
    dq = np.zeros((N, N), np.int32)
    dq[BADPIX] = 1
    h = wcs_header()
    h["BUNIT"], h["PIXAR_SR"] = "MJy/sr", pixar
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"], prim.header["EFFEXPTM"] = telescop, 1288.4
    fits.HDUList([prim, fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(err.astype(np.float32), name="ERR"), fits.ImageHDU(dq, name="DQ"),
                  fits.ImageHDU(np.ones((N, N), np.float32), name="WHT")]).writeto(folder / name)
    return name, err, 8.90 - 2.5 * math.log10(1e6 * pixar)


def test_detect_preset_from_each_layout(tmp_path):
    assert detect_preset(tmp_path / jwst_file(tmp_path)[0])[0] == "jwst_i2d"
    for kind in ("hst_drz", "hst_drc"):
        name, *_ = hst_file(tmp_path, kind)
        got, why = detect_preset(tmp_path / name)
        assert got == kind and "TELESCOP = 'HST'" in why
    name, *_ = sdss_file(tmp_path)
    assert detect_preset(tmp_path / name) == ("sdss_frame", "ORIGIN = 'SDSS'")
    h = wcs_header()
    h.update(MAGZP=20.8, TELESCOP="2MASS")
    fits.PrimaryHDU(scene().astype(np.float32), h).writeto(tmp_path / "ki.fits")
    assert detect_preset(tmp_path / "ki.fits")[0] == "2mass"
    fits.PrimaryHDU(scene().astype(np.float32), wcs_header()).writeto(tmp_path / "legacysurvey-0001m002-image-g.fits")
    assert detect_preset(tmp_path / "legacysurvey-0001m002-image-g.fits")[0] == "legacy"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(scene().astype(np.float32), name="IMG"),
                  fits.ImageHDU(np.ones((N, N), np.float32), name="VAR")]).writeto(tmp_path / "m.fits")
    assert detect_preset(tmp_path / "m.fits")[0] == "mef"
    fits.PrimaryHDU(scene().astype(np.float32), wcs_header()).writeto(tmp_path / "plain.fits")
    assert detect_preset(tmp_path / "plain.fits")[0] is None
    # a JWST-named telescope alone, without the i2d layout, is not an i2d
    fits.PrimaryHDU(scene().astype(np.float32), fits.Header({"TELESCOP": "JWST"})).writeto(tmp_path / "j1.fits")
    assert detect_preset(tmp_path / "j1.fits")[0] is None


def test_auto_preset_gives_the_detected_presets_products_and_says_so_in_one_line(tmp_path):
    name, err, want_zp = jwst_file(tmp_path)
    _, sig, mask, _, o, zp, caught = run(tmp_path, "f200w", "auto", name)
    ok = mask == 0
    np.testing.assert_allclose(sig[ok], err[o[0]: o[0] + sig.shape[0], o[1]: o[1] + sig.shape[1]][ok], rtol=1e-6)
    assert zp == pytest.approx(round(want_zp, 4), abs=1e-4)
    said = warned(caught, PresetWarning)
    assert len(said) == 1 and "\n" not in said[0]
    assert "preset jwst_i2d detected from TELESCOP = 'JWST' with SCI and ERR and PIXAR_SR" in said[0]


def test_auto_preset_on_a_plain_frame_reads_it_as_given(tmp_path):
    data = scene(level=1.0, sky=5.0)
    h = wcs_header()
    h.update(EXPTIME=100.0, GAIN=2.0, MAGZP=25.0)
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(tmp_path / "f.fits")
    p, _, _, _, _, zp, caught = run(tmp_path, "sloan_g", "auto", "f.fits")
    said = warned(caught, AssumptionWarning)
    assert len(said) == 1 and "no preset detected" in said[0] and "read as given" in said[0]
    assert zp == 25.0 and p.error is None


def test_cli_psf_preset_auto(tmp_path, monkeypatch, capsys):
    from gsprep.cli import main

    name, _, _ = jwst_file(tmp_path)
    seen = {}

    def stop(img, **kw):
        seen.update(data=img.data, bad=kw["bad"])
        raise ValueError("stopped after the sky mask")

    monkeypatch.setattr("gsprep.pipeline.frame_sky", stop)
    argv = ["psf", str(tmp_path / name), "--fwhm", "2.5", "--out", str(tmp_path / "p.fits"), "--preset", "auto",
            "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert sum("preset jwst_i2d detected from TELESCOP = 'JWST'" in line for line in err) == 1
    assert seen["data"].shape == (N, N) and seen["bad"][BADPIX] and seen["bad"].sum() == 1


# --------------------------------------------------------------------------
# 2. the sky-subtracted frame on request (GalfitS sky_subtraction(..., filepath=))


def prepare_plain(folder, options=""):
    from gsprep.pipeline import load_config, run_target

    data = scene(level=1.0, sky=5.0)
    h = wcs_header()
    h.update(EXPTIME=100.0, GAIN=2.0, MAGZP=25.0, OBSERVER="someone")
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(folder / "f.fits")
    (folder / "c.toml").write_text(f'[target]\nname = "t"\nra = {RA}\ndec = {DEC}\nr = {R}\n[options]\nsky_order = 0\n'
                                   f'psf = false\nrequire_target = false\n{options}'
                                   '[bands.sloan_g]\nfile = "f.fits"\nfwhm = 2.5\n')
    return data.astype(np.float32).astype(float), run_target(load_config(str(folder / "c.toml")), folder / "out",
                                                            figures=False)


def test_sky_subtracted_frame_on_request(tmp_path):
    from astropy.wcs import WCS

    data, tr = prepare_plain(tmp_path, "write_sky_subtracted = true\n")
    assert tr.ok, tr.errors
    path = tmp_path / "out" / "t_sloan_g_skysub.fits"
    assert str(path) in tr.written["sloan_g"]
    with fits.open(path) as h:
        assert len(h) == 1
        sub, hdr = np.asarray(h[0].data, float), h[0].header
    np.testing.assert_allclose(sub, data - tr.products["sloan_g"].sky.background, atol=1e-4)
    assert hdr["SKYORD"] == 0 and hdr["SKYMETH"] == "poly" and hdr["OBSERVER"] == "someone"
    parent = WCS(wcs_header())
    assert WCS(hdr).wcs.compare(parent.wcs)  # the frame's WCS, kept
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".gsprep-")]  # written atomically
    # off by default
    (tmp_path / "x").mkdir()
    _, tr = prepare_plain(tmp_path / "x")
    assert tr.ok and not any(p.endswith("_skysub.fits") for p in tr.written["sloan_g"])
    assert not (tmp_path / "x" / "out" / "t_sloan_g_skysub.fits").exists()


# --------------------------------------------------------------------------
# 3. sky_regions = "auto": the split found from a step


S = 300


@pytest.fixture(scope="module")
def frames():
    """A demo frame (noise 0.3 per pixel), the same plus two readout halves on their own ramps (split at
    column 150, as in test_sky_structure), and plus four quadrants (split at x = 120, y = 210)."""
    from gsprep.simulate import demo_frame
    from gsprep.sky import sky_mask

    frame, _ = demo_frame(fwhm=3.0, shape=(S, S), n_stars=30, seed=2)
    y, x = np.mgrid[:S, :S] / S
    halves = frame + np.where(x < 0.5, 30 + 80 * y, -20 + 150 * (1 - y) + 60 * x)
    quads = frame + 10 * x + np.where(x < 0.4, 0.0, 25.0) + np.where(y < 0.7, 0.0, -10.0)
    return {k: (v, sky_mask(v, fwhm=3.0)) for k, v in (("flat", frame), ("halves", halves), ("quads", quads))}


def auto_sky(data, m, order=2, **kw):
    from gsprep.sky import SkyStepWarning, fit_sky

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sky = fit_sky(data, m, order=order, regions="auto", label="band h", **kw)
    said = [str(w.message) for w in caught if issubclass(w.category, SkyStepWarning)]
    assert len(said) == 1 and "\n" not in said[0] and said[0].startswith('band h: sky_regions "auto": ')
    return sky, said[0]


def test_auto_regions_split_two_readout_halves_at_the_step(frames):
    from gsprep.sky import SkyResidualWarning, sky_residual_check

    data, m = frames["halves"]
    sky, said = auto_sky(data, m, order=1)  # each half's ramp is a plane (order 1, as prepare's below: one compile)
    assert sky.regions is not None and len(sky.regions) == 2 and sky.method == "poly/regions"
    split = sky.regions[0][1]
    assert abs(split - S // 2) <= 2 and sky.regions[1][0] == split
    assert sky.regions[0][2:] == (0, S) and sky.regions[1][2:] == (0, S)
    assert f"split at x = {split}" in said and "no step along y" in said
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkyResidualWarning)
        rms, pp = sky_residual_check(data, sky, m)
    assert rms < 1.5 * pp  # the residual is the pixel noise (measured 1.13x)


def test_auto_regions_four_quadrants(frames):
    data, m = frames["quads"]
    sky, said = auto_sky(data, m, order=0, method="median")  # the split is what is tested (no compile per box)
    assert len(sky.regions) == 4
    xs = {b[1] for b in sky.regions} - {S}
    ys = {b[3] for b in sky.regions} - {S}
    assert len(xs) == 1 and abs(xs.pop() - 120) <= 2 and len(ys) == 1 and abs(ys.pop() - 210) <= 2
    assert "split into 4 regions" in said


def test_auto_regions_without_a_step_do_not_split(frames):
    from gsprep.sky import fit_sky

    data, m = frames["flat"]
    sky, said = auto_sky(data, m, order=0, method="median")
    assert sky.regions is None and sky.method == "median"
    assert "no step found" in said
    np.testing.assert_allclose(sky.background, fit_sky(data, m, order=0, method="median").background)


def test_sky_regions_auto_in_the_config_and_prepare(tmp_path):
    """The TOML option reaches the sky fit: prepare on a frame with readout halves splits it (said for band g)."""
    import gsprep
    from gsprep.pipeline import load_config, prepare_target
    from gsprep.sky import SkyResidualWarning, SkyStepWarning

    from .test_pipeline import write_config, write_frames

    with pytest.raises(ValueError, match=r"config: \[options\] sky_regions must be a list of .* or \"auto\""):
        load_config(write_config(tmp_path, options='sky_regions = "steps"\n'))
    write_frames(tmp_path, bands=(("g", 2.6),))
    cfg = load_config(write_config(tmp_path, bands=(("g", 2.6),), options='sky_regions = "auto"\npsf = false\n'))
    assert cfg.sky_regions == "auto"
    img = gsprep.read_image(cfg.bands["g"].file)
    x = np.arange(img.data.shape[1])[None, :]
    stepped = gsprep.io.Image(**{**img.__dict__, "data": img.data + np.where(x < 150, 0.0, 40.0)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = prepare_target({"g": stepped}, cfg.ra, cfg.dec, cfg)["g"]
    assert p.error is None
    said = [str(w.message) for w in caught if issubclass(w.category, SkyStepWarning)]
    assert len(said) == 1 and said[0].startswith('band g: sky_regions "auto": split into 2 regions')
    assert not [w for w in caught if issubclass(w.category, SkyResidualWarning)]
    assert abs(p.sky.regions[0][1] - 150) <= 2


def test_auto_regions_ignore_the_edge_of_a_no_data_region(frames):
    """A drizzled frame's no-data band (0, masked as bad) is not a step in the sky."""
    from gsprep.sky import find_sky_steps

    data, m = frames["flat"]
    f = data.copy()
    f[:, :100] = 0.0
    steps = find_sky_steps(f, m | (f == 0))
    assert steps.x is None and steps.y is None and len(steps.boxes) == 1

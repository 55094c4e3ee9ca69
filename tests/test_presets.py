"""Presets (issue 13 item 3): each survey layout, built small from its documented keywords, gives the format's own
sigma image, masks its bad pixels with bit BAD and writes its AB zero point in the .lyric (Ia10).

Layouts: JWST i2d (jwst pipeline "Data Products" and "Data Quality Flags"), HST drz/drc (DrizzlePac: SCI, WHT,
CTX; PHOTFLAM/PHOTPLAM), Legacy Surveys coadds (legacysurvey.org "files": image + invvar, nanomaggies), SDSS
frame (data model "frame": HDU 0 nanomaggies, HDU 1 calibvec, HDU 2 sky; its error recipe), 2MASS Atlas Images
(Explanatory Supplement IV.3 and VI.8.a: DN, MAGZP), and a generic multi-extension file.
"""

import math
import os
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits

from gsprep._bits import BAD, OFF_FRAME
from gsprep.io import AssumptionWarning, read_image
from gsprep.pipeline import load_config, run_target
from gsprep.presets import (
    PRESETS,
    SDSS_DARK_VARIANCE,
    SDSS_GAIN,
    PresetWarning,
    sdss_sigma,
)
from gsprep.simulate import tan_wcs

N = 40
RA, DEC, SCALE, R = 150.1, 2.2, 0.1, 1.5  # cutout 31 x 31, origin (5, 5): inside the frame
BADPIX = (12, 20)  # (y, x) inside the cutout
OKPIX = (25, 14)  # a DQ bit that is not bad


def scene(level=1.0, sky=0.0):
    """A round galaxy at the centre on a flat sky (a fixed, noise-like ripple so the sky rms is not 0)."""
    y, x = np.mgrid[:N, :N]
    rng = np.random.default_rng(1)
    gal = level * 20 * np.exp(-((x - 19.5) ** 2 + (y - 19.5) ** 2) / (2 * 2.5**2))
    return gal + sky + level * rng.normal(0, 0.1, (N, N))


def wcs_header():
    return tan_wcs(RA, DEC, (N, N), SCALE).to_header()


def run(folder, band, preset, file, extra=()):
    lines = ["[target]", 'name = "t"', f"ra = {RA}", f"dec = {DEC}", f"r = {R}", "", "[options]", "sky_order = 0",
             "psf = false", "require_target = false", "", f"[bands.{band}]", f'file = "{file}"', "fwhm = 2.5",
             f'preset = "{preset}"', *extra, ""]
    cfg = folder / "cfg.toml"
    cfg.write_text("\n".join(lines))
    config = load_config(str(cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = run_target(config, folder / "out", figures=False)
    assert tr.ok, tr.errors
    with fits.open(folder / "out" / f"t_{band}.fits") as h:
        sig = np.array(h["SIGMA"].data, float)
        mask = np.array(h["MASK"].data)
        bits = np.array(h["MASKBITS"].data) if "MASKBITS" in h else None
        ox, oy = h[0].header["ORIGX"], h[0].header["ORIGY"]
    lyric = (folder / "out" / "t_images.lyric").read_text()
    zp = float(re.search(r"Ia10\) (\S+)", lyric).group(1))
    return tr.products[band], sig, mask, bits, (oy, ox), zp, caught


def frame_part(arr, origin, shape):
    oy, ox = origin
    return np.asarray(arr, float)[oy : oy + shape[0], ox : ox + shape[1]]


def warned(caught, cls):
    return [str(w.message) for w in caught if issubclass(w.category, cls)]


def good(mask, bits):
    """Pixels the sigma image must match: not masked as BAD nor off the frame (sources may be masked)."""
    ok = (bits & (BAD | OFF_FRAME)) == 0 if bits is not None else mask == 0
    assert ok.sum() > 0.9 * ok.size - 5  # the comparison covers (nearly) the whole cutout
    return ok


def test_jwst_i2d(tmp_path):
    pixar = 2.29e-14
    sci = scene(level=0.5)
    err = 0.02 + 0.001 * np.arange(N)[None, :] + 0.0 * sci
    dq = np.zeros((N, N), np.int32)
    dq[BADPIX] = 1 | 4  # DO_NOT_USE + JUMP_DET
    dq[OKPIX] = 4  # JUMP_DET alone: not bad
    h = wcs_header()
    h["BUNIT"], h["PIXAR_SR"] = "MJy/sr", pixar
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"], prim.header["EFFEXPTM"] = "JWST", 1288.4
    fits.HDUList([prim, fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(err.astype(np.float32), name="ERR"), fits.ImageHDU(dq, name="DQ"),
                  fits.ImageHDU(np.ones((N, N), np.float32), name="WHT")]).writeto(tmp_path / "jw_i2d.fits")
    _, sig, mask, bits, o, zp, caught = run(tmp_path, "wfc3_f160w", "jwst_i2d", "jw_i2d.fits")
    ok = good(mask, bits)
    np.testing.assert_allclose(sig[ok], frame_part(err, o, sig.shape)[ok], rtol=1e-6)  # ERR: the total error
    by, bx = BADPIX[0] - o[0], BADPIX[1] - o[1]
    assert mask[by, bx] == 1 and bits[by, bx] & BAD
    assert not bits[OKPIX[0] - o[0], OKPIX[1] - o[1]] & BAD
    assert zp == pytest.approx(round(8.90 - 2.5 * math.log10(1e6 * pixar), 4), abs=1e-4)
    assert not warned(caught, AssumptionWarning)  # nothing assumed: every keyword is there


def hst_file(folder, kind):
    flam, plam = 1.5e-20, 15369.2
    sci = scene(level=0.2, sky=0.5)
    wht = 4000.0 + 50.0 * np.arange(N)[:, None] + 0.0 * sci
    wht[BADPIX] = 0.0  # no data
    h = wcs_header()
    h.update(BUNIT="ELECTRONS/S", PHOTFLAM=flam, PHOTPLAM=plam)
    prim = fits.PrimaryHDU()
    prim.header.update(TELESCOP="HST", INSTRUME="WFC3", EXPTIME=2400.0)
    name = f"x_{kind[4:]}.fits"
    fits.HDUList([prim, fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(wht.astype(np.float32), name="WHT"),
                  fits.ImageHDU(np.ones((N, N), np.int32), name="CTX")]).writeto(folder / name)
    return name, sci.astype(np.float32).astype(float), wht, -2.5 * math.log10(flam) - 5 * math.log10(plam) - 2.408


@pytest.mark.parametrize("kind", ["hst_drz", "hst_drc"])
def test_hst_drizzled(tmp_path, kind):
    # AstroDrizzle's default WHT (final_wht_type = 'EXP', the archive's) is an exposure map, not a variance: the
    # sigma is the Poisson recipe for e-/s data (gain 1, EXPTIME) with the measured sky noise; WHT = 0 is no data
    name, sci, _, want_zp = hst_file(tmp_path, kind)
    p, sig, mask, bits, o, zp, caught = run(tmp_path, "wfc3_f160w", kind, name)
    clean = sci - p.sky.background
    want = np.sqrt(np.abs(clean) / 2400.0 + p.sky.rms**2)
    ok = good(mask, bits)
    np.testing.assert_allclose(sig[ok], frame_part(want, o, sig.shape)[ok], rtol=1e-5)
    by, bx = BADPIX[0] - o[0], BADPIX[1] - o[1]
    assert mask[by, bx] == 1 and bits[by, bx] & BAD
    assert zp == pytest.approx(round(want_zp, 4), abs=1e-4)
    said = warned(caught, AssumptionWarning)
    assert len(said) == 1 and "uniform exposure time 2400 s" in said[0] and "\n" not in said[0]
    assert issubclass(next(w.category for w in caught if issubclass(w.category, AssumptionWarning)), PresetWarning)


def test_hst_ivm_weight_on_request(tmp_path):
    name, _, wht, _ = hst_file(tmp_path, "hst_drz")
    _, sig, mask, bits, o, _, caught = run(tmp_path, "wfc3_f160w", "hst_drz", name, ['noise_kind = "weight"'])
    ok = good(mask, bits)
    np.testing.assert_allclose(sig[ok], 1 / np.sqrt(frame_part(wht, o, sig.shape)[ok]), rtol=1e-6)
    by, bx = BADPIX[0] - o[0], BADPIX[1] - o[1]
    assert mask[by, bx] == 1 and bits[by, bx] & BAD
    assert not warned(caught, AssumptionWarning)


def test_legacy_surveys(tmp_path):
    img = scene(level=0.05)
    ivar = 1.0 / (0.01 + 0.0002 * np.arange(N)[None, :] + 0.0 * img) ** 2
    ivar[BADPIX] = 0.0  # no coverage
    name = "legacysurvey-1501p022-image-r.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(img.astype(np.float32), wcs_header())]).writeto(
        tmp_path / name)
    fits.PrimaryHDU(ivar.astype(np.float32)).writeto(tmp_path / name.replace("-image-", "-invvar-").replace(".fz", ""))
    os.rename(tmp_path / name.replace("-image-", "-invvar-").replace(".fz", ""),
              tmp_path / name.replace("-image-", "-invvar-"))
    _, sig, mask, bits, o, zp, caught = run(tmp_path, "desi_s_r", "legacy", name)
    ok = good(mask, bits)
    inv = fits.getdata(tmp_path / name.replace("-image-", "-invvar-")).astype(float)
    np.testing.assert_allclose(sig[ok], 1 / np.sqrt(frame_part(inv, o, sig.shape)[ok]), rtol=1e-6)
    by, bx = BADPIX[0] - o[0], BADPIX[1] - o[1]
    assert mask[by, bx] == 1 and bits[by, bx] & BAD
    assert zp == 22.5
    assert not warned(caught, AssumptionWarning)


def test_legacy_without_invvar_is_one_line_nothing_written(tmp_path):
    fits.PrimaryHDU(scene().astype(np.float32), wcs_header()).writeto(tmp_path / "legacysurvey-x-image-g.fits")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[target]\nra = {RA}\ndec = {DEC}\nr = {R}\n[options]\npsf = false\n'
                   '[bands.g]\nfile = "legacysurvey-x-image-g.fits"\nfwhm = 2.5\npreset = "legacy"\n')
    with pytest.raises(ValueError, match=r"^config: \[bands\.g\] preset legacy: no inverse-variance file "
                                         r"legacysurvey-x-invvar-g\.fits") as e:
        run_target(load_config(str(cfg)), tmp_path / "out", figures=False)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def sdss_file(folder, camcol=3, filt="r", run_no=756):
    """A frame with the data model's layout: HDU 0 nanomaggies, HDU 1 calibvec (per column), HDU 2 sky table."""
    calib = 0.004 + 0.00002 * np.arange(N)
    # sky grid ALLSKY (ny_s, nx_s) = (6, 8), linear: the bilinear sky at (XINTERP, YINTERP) is the same plane
    ys, xs = np.mgrid[:6, :8]
    allsky = 120.0 + 2.0 * xs + 3.0 * ys
    xinterp = np.linspace(-0.5, 7.5, N)  # the ends fall off the grid: clamped to its edge
    yinterp = np.linspace(0.2, 4.8, N)
    img = scene(level=0.3)
    h = wcs_header()
    h.update(BUNIT="nanomaggy", NMGY=0.0045, CAMCOL=camcol, FILTER=filt, RUN=run_no, EXPTIME=53.907456,
             TELESCOP="2.5m", ORIGIN="SDSS")
    cols = [fits.Column("ALLSKY", "48E", dim="(8,6)", array=allsky[None].astype(np.float32)),
            fits.Column("XINTERP", f"{N}E", array=xinterp[None].astype(np.float32)),
            fits.Column("YINTERP", f"{N}E", array=yinterp[None].astype(np.float32))]
    fits.HDUList([fits.PrimaryHDU(img.astype(np.float32), h), fits.ImageHDU(calib.astype(np.float32)),
                  fits.BinTableHDU.from_columns(cols)]).writeto(folder / f"frame-{filt}-000756-{camcol}-0100.fits")
    xc = np.clip(xinterp, 0, 7)
    yc = np.clip(yinterp, 0, 5)
    simg = 120.0 + 2.0 * xc[None, :] + 3.0 * yc[:, None]
    return f"frame-{filt}-000756-{camcol}-0100.fits", calib, simg


def test_sdss_frame(tmp_path):
    name, calib, simg = sdss_file(tmp_path)
    _, sig, mask, bits, o, zp, caught = run(tmp_path, "sloan_r", "sdss_frame", name)
    img = fits.getdata(tmp_path / name).astype(float)
    gain, dark = SDSS_GAIN[3]["r"], SDSS_DARK_VARIANCE[3]["r"]
    cimg = np.asarray(calib, np.float32).astype(float)[None, :]
    dn = img / cimg + simg
    want = np.sqrt(dn / gain + dark) * cimg  # the data model's recipe, written out
    np.testing.assert_allclose(sdss_sigma(img, calib.astype(np.float32), simg, gain, dark), want, rtol=1e-6)
    ok = good(mask, bits) if bits is not None else mask == 0
    np.testing.assert_allclose(sig[ok], frame_part(want, o, sig.shape)[ok], rtol=1e-5)
    assert zp == 22.5
    assert not warned(caught, AssumptionWarning)


def test_sdss_frame_without_camcol_says_what_it_assumes(tmp_path):
    name, _, _ = sdss_file(tmp_path)
    with fits.open(tmp_path / name, mode="update") as h:
        del h[0].header["CAMCOL"]
    *_, caught = run(tmp_path, "sloan_r", "sdss_frame", name)
    said = warned(caught, PresetWarning)
    assert len(said) == 1 and "no valid CAMCOL" in said[0] and "assumed" in said[0]


def test_2mass_atlas(tmp_path):
    data = scene(level=5.0, sky=300.0)
    h = wcs_header()
    h.update(MAGZP=20.8755, TELESCOP="2MASS", FILTER="k")
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(tmp_path / "ki0420123.fits")
    p, sig, mask, bits, o, zp, caught = run(tmp_path, "2mass_ks", "2mass", "ki0420123.fits")
    clean = data.astype(np.float32).astype(float) - p.sky.background
    want = np.sqrt(np.abs(clean) / (10.0 * 6) + p.sky.rms**2)  # Poisson over Nc = 6 frames, g = 10; sky measured
    ok = good(mask, bits)
    np.testing.assert_allclose(sig[ok], frame_part(want, o, sig.shape)[ok], rtol=1e-5)
    assert zp == pytest.approx(20.8755)
    said = warned(caught, PresetWarning)
    assert len(said) == 1 and "gain 10 e-/DN (no GAIN in the header)" in said[0] and "Nc = 6" in said[0]


def test_mef(tmp_path):
    sci = scene(level=1.0, sky=2.0)
    var = 0.04 + 0.001 * np.arange(N)[:, None] + 0.0 * sci
    dq = np.zeros((N, N), np.int16)
    dq[BADPIX] = 32
    h = wcs_header()
    h.update(MAGZP=26.5, EXPTIME=300.0, GAIN=2.0)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(var.astype(np.float32), name="VAR"), fits.ImageHDU(dq, name="DQ")]).writeto(
        tmp_path / "m.fits")
    _, sig, mask, bits, o, zp, caught = run(tmp_path, "sloan_i", "mef", "m.fits")
    ok = good(mask, bits)
    np.testing.assert_allclose(sig[ok], np.sqrt(frame_part(var, o, sig.shape)[ok]), rtol=1e-6)
    by, bx = BADPIX[0] - o[0], BADPIX[1] - o[1]
    assert mask[by, bx] == 1 and bits[by, bx] & BAD
    assert zp == 26.5
    said = warned(caught, PresetWarning)
    assert len(said) == 1 and "DQ: any nonzero value is a bad pixel" in said[0]


def test_user_keys_override_the_preset(tmp_path):
    sci = scene(level=1.0, sky=2.0)
    var = np.full((N, N), 0.09)
    h = wcs_header()
    h.update(MAGZP=26.5, EXPTIME=300.0, GAIN=2.0)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(var.astype(np.float32), name="VAR"),
                  fits.ImageHDU(np.full((N, N), 0.5, np.float32), name="ERR2")]).writeto(tmp_path / "m.fits")
    _, sig, mask, bits, _, zp, _ = run(tmp_path, "sloan_i", "mef", "m.fits",
                                       ['zeropoint = 24.0', 'noise_hdu = "ERR2"', 'noise_kind = "rms"'])
    assert zp == 24.0
    np.testing.assert_allclose(sig[good(mask, bits)], 0.5, rtol=1e-6)


def test_unknown_preset_is_one_line_before_any_work(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[target]\nra = {RA}\ndec = {DEC}\nr = {R}\n[bands.X]\nfile = "nothere.fits"\nfwhm = 2.5\n'
                   'preset = "foo"\n')
    with pytest.raises(ValueError) as e:
        load_config(str(cfg))
    assert str(e.value) == f"config: [bands.X] preset: unknown 'foo' (known: {', '.join(PRESETS)})"
    assert sorted(os.listdir(tmp_path)) == ["c.toml"]


def test_cli_prepare_unknown_preset(tmp_path, capsys):
    from gsprep.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[target]\nra = {RA}\ndec = {DEC}\nr = {R}\n[bands.X]\nfile = "f.fits"\nfwhm = 2.5\n'
                   'preset = "foo"\n')
    assert main(["prepare", str(cfg), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[bands.X] preset: unknown 'foo'" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["c.toml"]


def test_missing_gain_warns_once(tmp_path):
    data = scene(level=1.0, sky=5.0)
    h = wcs_header()
    h["EXPTIME"] = 100.0
    fits.PrimaryHDU(data.astype(np.float32), h).writeto(tmp_path / "f.fits")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[target]\nname = "t"\nra = {RA}\ndec = {DEC}\nr = {R}\n[options]\nsky_order = 0\npsf = false\n'
                   'require_target = false\n[bands.sloan_g]\nfile = "f.fits"\nfwhm = 2.5\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_target(load_config(str(cfg)), tmp_path / "out", figures=False).ok
    said = warned(caught, AssumptionWarning)
    assert len(said) == 1 and "no GAIN" in said[0] and "1 e-/ADU assumed" in said[0] and "\n" not in said[0]


def test_dss_exposure_in_minutes(tmp_path):
    import astropy

    path = os.path.join(os.path.dirname(astropy.__file__), "wcs/tests/data/dss.14.29.56-62.41.05.fits.gz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_image(path)
    assert img.exptime == 70 * 60.0  # EXPOSURE = 70 / Exposure time minutes: the header says so
    assert not warned(caught, AssumptionWarning)
    h = fits.Header()
    h["EXPOSURE"] = 50.0  # no unit in the comment: taken as seconds, said
    fits.PrimaryHDU(np.ones((5, 5), np.float32), h).writeto(tmp_path / "e.fits")
    with pytest.warns(AssumptionWarning, match=r"EXPOSURE = 50 names no unit and is taken as seconds"):
        assert read_image(tmp_path / "e.fits").exptime == 50.0


def test_cli_psf_unknown_preset(tmp_path, capsys):
    from gsprep.cli import main

    fits.PrimaryHDU(scene().astype(np.float32), wcs_header()).writeto(tmp_path / "f.fits")
    out = tmp_path / "p.fits"
    assert main(["psf", str(tmp_path / "f.fits"), "--fwhm", "2.5", "--out", str(out), "--preset", "foo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gsprep: error: --preset: unknown 'foo' (known: {', '.join(PRESETS)})"]
    assert sorted(os.listdir(tmp_path)) == ["f.fits"]


def test_cli_psf_preset_reads_the_layout(tmp_path, monkeypatch):
    """`gsprep psf --preset jwst_i2d`: the SCI image, its DQ-bad pixels kept out of the sky (stopped there)."""
    from gsprep.cli import main

    sci = scene(level=0.5)
    dq = np.zeros((N, N), np.int32)
    dq[BADPIX] = 1
    h = wcs_header()
    h["BUNIT"], h["PIXAR_SR"] = "MJy/sr", 2.29e-14
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(np.full((N, N), 0.03, np.float32), name="ERR"),
                  fits.ImageHDU(dq, name="DQ")]).writeto(tmp_path / "jw_i2d.fits")
    seen = {}

    def stop(img, **kw):
        seen.update(data=img.data, bad=kw["bad"])
        raise ValueError("stopped after the sky mask")

    monkeypatch.setattr("gsprep.pipeline.frame_sky", stop)
    argv = ["psf", str(tmp_path / "jw_i2d.fits"), "--fwhm", "2.5", "--out", str(tmp_path / "p.fits"),
            "--preset", "jwst_i2d", "--quiet"]
    assert main(argv) == 2  # no EXPTIME needed: the ERR map is the noise
    np.testing.assert_allclose(seen["data"], sci.astype(np.float32))
    assert seen["bad"][BADPIX] and seen["bad"].sum() == 1


def test_noise_kind_without_a_map_in_the_file_is_one_line(tmp_path):
    h = wcs_header()
    h["MAGZP"] = 20.0
    fits.PrimaryHDU(scene(level=5.0, sky=300.0).astype(np.float32), h).writeto(tmp_path / "k.fits")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[target]\nra = {RA}\ndec = {DEC}\nr = {R}\n[bands.ks]\nfile = "k.fits"\nfwhm = 2.5\n'
                   'preset = "2mass"\nnoise_kind = "rms"\n')
    with pytest.raises(ValueError, match=r"^config: \[bands\.ks\] preset 2mass: noise_kind is set but the file has "
                                         "no noise map for it"):
        run_target(load_config(str(cfg)), tmp_path / "out", figures=False)
    assert not (tmp_path / "out").exists()


def test_api_read_bands_and_prepare_target_fill_in_the_preset(tmp_path):
    """Without run_target: read_bands reads the preset's HDU, prepare_target uses its noise map (said once)."""
    from gsprep.pipeline import prepare_target, read_bands

    sci = scene(level=1.0, sky=2.0)
    h = wcs_header()
    h.update(MAGZP=26.5, EXPTIME=300.0, GAIN=2.0)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(np.full((N, N), 0.25, np.float32), name="ERR")]).writeto(tmp_path / "m.fits")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[target]\nra = {RA}\ndec = {DEC}\nr = {R}\n[options]\nsky_order = 0\npsf = false\n'
                   'require_target = false\n[bands.sloan_i]\nfile = "m.fits"\nfwhm = 2.5\npreset = "mef"\n')
    config = load_config(str(cfg))
    images, errors = read_bands(config)
    assert not errors and images["sloan_i"].data.shape == (N, N)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = prepare_target(images, RA, DEC, config, stack_bands=False)["sloan_i"]
    assert p.error is None
    ok = (p.mask.bits & (BAD | OFF_FRAME)) == 0
    np.testing.assert_allclose(p.sigma[ok], 0.25, rtol=1e-6)
    assert not warned(caught, AssumptionWarning)

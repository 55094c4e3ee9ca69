"""Noise maps (rms, variance, inverse variance, drizzle weight), DQ maps and user masks in `gsprep prepare`."""

import numpy as np
import pytest
from astropy.io import fits

from gsprep._bits import BAD, USER
from gsprep.cli import main
from gsprep.noise import sigma_from_map
from gsprep.pipeline import load_config
from gsprep.simulate import demo_frame

SHAPE = (300, 300)
BAD_PIXELS = ((150, 130), (165, 160), (135, 150))  # (y, x): rms 0, NaN, negative
DQ4 = ((140, 140), (160, 145))  # DQ bit 4
DQ8 = ((145, 165), (155, 128))  # DQ bit 8


def rms_map():
    """Clearly not the computed sigma (about 0.05-0.3 on the demo frame): a tilted plane 0.4-0.7."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    rms = 0.4 + 0.3 * x / SHAPE[1] + 0.0 * y
    (y0, x0), (y1, x1), (y2, x2) = BAD_PIXELS
    rms[y0, x0], rms[y1, x1], rms[y2, x2] = 0.0, np.nan, -1.0
    return rms


def write_frame(folder, dq_all_bad=False, negative_var=False):
    data, header = demo_frame(fwhm=2.6, seed=0, shape=SHAPE, n_stars=30)
    rms = rms_map()
    var = np.where(np.isfinite(rms), np.clip(rms, 0, None), np.nan) ** 2
    if negative_var:
        var[10, 10] = -0.25
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(np.isfinite(rms) & (rms != 0), np.sign(rms) / rms**2, np.where(rms == 0, 0.0, np.nan))
    dq = np.zeros(SHAPE, np.int32)
    for y, x in DQ4:
        dq[y, x] = 4
    for y, x in DQ8:
        dq[y, x] = 8
    if dq_all_bad:
        dq[:] = 4
    hdus = [fits.PrimaryHDU(data.astype(np.float32), header=header),
            fits.ImageHDU(rms.astype(np.float32), name="ERR"),
            fits.ImageHDU(var.astype(np.float32), name="VAR"),
            fits.ImageHDU(ivar.astype(np.float32), name="IVAR"),
            fits.ImageHDU(dq, name="DQ")]
    fits.HDUList(hdus).writeto(folder / "f_g.fits")
    return rms


def write_config(folder, band_extra=(), r=20.0):
    """A one-band config (no PSF) for the frame ``f_g.fits`` in ``folder``, with ``band_extra`` lines in [bands.g]."""
    lines = ["[target]", 'name = "t1"', "ra = 150.1", "dec = 2.2", f"r = {r}", "", "[options]", "sky_order = 1",
             "psf = false", "", "[bands.g]", 'file = "f_g.fits"', "fwhm = 2.6", "zeropoint = 25.0",
             'filter = "sloan_g"', *band_extra, ""]
    path = folder / "cfg.toml"
    path.write_text("\n".join(lines))
    return path


def prepare(folder, band_extra):
    out = folder / "out"
    assert main(["prepare", str(write_config(folder, band_extra)), "--out", str(out), "--no-figures"]) == 0
    with fits.open(out / "t1_g.fits") as h:
        ox, oy = h[0].header["ORIGX"], h[0].header["ORIGY"]
        n = h[0].data.shape[0]
        return (h["SIGMA"].data.astype(float), h["MASK"].data, h["MASKBITS"].data, h[0].header,
                (slice(oy, oy + n), slice(ox, ox + n)), (ox, oy))


@pytest.mark.parametrize(("keys", "sigform"), [
    (['noise_hdu = "ERR"', 'noise_kind = "rms"'], "noise map: rms"),
    (['noise_hdu = "VAR"', 'noise_kind = "variance"'], "noise map: sqrt(var)"),
    (["noise_hdu = 3", 'noise_kind = "ivar"'], "noise map: 1/sqrt(ivar)"),
    (['noise = "f_g.fits[IVAR]"', 'noise_kind = "weight"'], "noise map: 1/sqrt(weight)"),
    (['noise = "err.fits"', 'noise_kind = "rms"'], "noise map: rms"),  # another file, its primary HDU
])
def test_the_noise_map_is_the_sigma_written(tmp_path, keys, sigform):
    rms = write_frame(tmp_path)
    fits.PrimaryHDU(rms.astype(np.float32)).writeto(tmp_path / "err.fits")
    sigma, mask, bits, header, cut, (ox, oy) = prepare(tmp_path, keys)
    want = rms.astype(np.float32).astype(float)[cut]
    good = mask == 0
    assert good.sum() > 0.5 * good.size
    np.testing.assert_allclose(sigma[good], want[good], rtol=2e-6)
    assert header["SIGFORM"] == sigform
    # no valid noise (0, NaN, negative rms): masked with the bad bit, written with a finite sigma > 0
    for y, x in BAD_PIXELS:
        assert mask[y - oy, x - ox] == 1
        assert bits[y - oy, x - ox] & BAD and not bits[y - oy, x - ox] & USER
    assert np.all(np.isfinite(sigma) & (sigma > 0))


def test_without_a_noise_map_the_sigma_is_computed(tmp_path):
    rms = write_frame(tmp_path)
    sigma, mask, _, header, cut, _ = prepare(tmp_path, [])
    good = mask == 0
    assert np.mean(np.isclose(sigma[good], rms[cut][good], rtol=1e-3)) < 0.01  # a map ignored would be seen
    assert header["SIGFORM"].startswith("sqrt(")


@pytest.mark.parametrize(("keys", "masked", "kept"), [
    (['dq_hdu = "DQ"'], DQ4 + DQ8, ()),  # default: any nonzero DQ is bad
    (['dq_hdu = "DQ"', "dq_bad = [4]"], DQ4, DQ8),
    (['dq = "f_g.fits[4]"', "dq_bad = [8, 16]"], DQ8, DQ4),
])
def test_dq_bad_pixels_get_the_bad_bit(tmp_path, keys, masked, kept):
    write_frame(tmp_path)
    sigma, mask, bits, _, _, (ox, oy) = prepare(tmp_path, [*keys, 'noise_hdu = "ERR"', 'noise_kind = "rms"'])
    for y, x in masked:
        assert mask[y - oy, x - ox] == 1 and bits[y - oy, x - ox] & BAD
        assert np.isfinite(sigma[y - oy, x - ox]) and sigma[y - oy, x - ox] > 0
    for y, x in kept:
        assert not bits[y - oy, x - ox] & BAD


def test_dq_with_the_computed_sigma(tmp_path):
    write_frame(tmp_path)
    _, mask, bits, header, _, (ox, oy) = prepare(tmp_path, ['dq_hdu = "DQ"'])
    assert header["SIGFORM"].startswith("sqrt(")
    for y, x in DQ4 + DQ8:
        assert mask[y - oy, x - ox] == 1 and bits[y - oy, x - ox] & BAD


def test_user_mask_file_masks_its_pixels(tmp_path):
    write_frame(tmp_path)
    user = np.zeros(SHAPE, np.uint8)
    user[120:125, 170:180] = 1
    fits.PrimaryHDU(user).writeto(tmp_path / "mine.fits")
    sigma, mask, bits, _, _, (ox, oy) = prepare(tmp_path, ['user_mask = "mine.fits"'])
    box = (slice(120 - oy, 125 - oy), slice(170 - ox, 180 - ox))
    assert np.all(mask[box] == 1) and np.all(bits[box] & USER) and not np.any(bits[box] & BAD)
    assert np.all(np.isfinite(sigma[box]) & (sigma[box] > 0))
    outside = np.ones(mask.shape, bool)
    outside[box] = False
    assert not np.any(bits[outside] & USER)


@pytest.mark.parametrize(("keys", "frame_kw", "says"), [
    (['noise = "small.fits"', 'noise_kind = "rms"'], {}, r"config: [bands.g] noise: the map "),
    (['dq = "small.fits[0]"'], {}, r"config: [bands.g] dq: the map "),
    (['user_mask = "small.fits"'], {}, r"config: [bands.g] user_mask: the map "),
    (['noise_hdu = "VAR"', 'noise_kind = "variance"'], {"negative_var": True},
     r"config: [bands.g] noise_hdu ("),
    (['dq_hdu = "DQ"'], {"dq_all_bad": True}, r"config: [bands.g] dq_hdu: every pixel of the DQ map"),
    (['dq_hdu = "NOPE"'], {}, r"config: [bands.g] dq_hdu: hdu='NOPE' not in"),
    (['noise = "missing.fits[1]"', 'noise_kind = "rms"'], {}, r"config: [bands.g] noise: no such file"),
])
def test_bad_maps_are_one_error_before_any_work(tmp_path, capsys, keys, frame_kw, says):
    write_frame(tmp_path, **frame_kw)
    fits.PrimaryHDU(np.ones((200, 300), np.float32)).writeto(tmp_path / "small.fits")
    out = tmp_path / "out"
    assert main(["prepare", str(write_config(tmp_path, keys)), "--out", str(out), "--no-figures"]) == 2
    said = capsys.readouterr()
    lines = [line for line in said.err.splitlines() if "config: [bands.g]" in line]
    assert len(lines) == 1 and says in lines[0], said.err
    if "the map" in says:
        assert "(200, 300)" in lines[0] and "(300, 300)" in lines[0]
    if "noise_hdu (" in says:
        assert "negative" in lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("keys", "match"), [
    (['noise_hdu = "ERR"'], r"config: \[bands.g\] a noise map needs noise_kind"),
    (['noise_hdu = "ERR"', 'noise_kind = "sigma"'], r"config: \[bands.g\] noise_kind must be one of"),
    (['noise_hdu = "ERR"', 'noise = "x.fits"', 'noise_kind = "rms"'], r"config: \[bands.g\] give noise .* not both"),
    (['noise_kind = "rms"'], r"config: \[bands.g\] noise_kind is set but no noise map"),
    (["dq_bad = [4]"], r"config: \[bands.g\] dq_bad is set but no DQ map"),
    (['dq_hdu = "DQ"', "dq_bad = [0]"], r"config: \[bands.g\] dq_bad must be a list"),
    (["noise = 3", 'noise_kind = "rms"'], r"config: \[bands.g\] noise must be"),
])
def test_map_keys_are_checked_when_the_config_is_read(tmp_path, keys, match):
    with pytest.raises(ValueError, match=match):
        load_config(write_config(tmp_path, keys))


def test_sigma_from_map_kinds():
    v = np.array([[4.0, 0.0, -1.0, np.nan]])
    for kind, want in (("rms", 4.0), ("variance", 2.0), ("ivar", 0.5), ("weight", 0.5)):
        sigma, bad = sigma_from_map(np.where(v < 0, 0.0, v) if kind == "variance" else v, kind)
        assert sigma[0, 0] == want and bad.tolist() == [[False, True, True, True]]
        assert np.isnan(sigma[0, 1:]).all()
    with pytest.raises(ValueError, match="negative"):
        sigma_from_map(v, "variance")
    with pytest.raises(ValueError, match="no valid pixel"):
        sigma_from_map(np.zeros((3, 3)), "rms")

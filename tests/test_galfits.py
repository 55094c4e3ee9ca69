"""What GalfitS reads: filter names, zero points, PSF extensions and the .lyric file (issue 13, item 6)."""

import numpy as np
import pytest
from astropy.io import fits

from gsprep.cli import main
from gsprep.galfits import GALFITS_FILTERS, galfits_filter, header_zeropoint, image_block, lyric_text
from gsprep.io import fine_centred
from gsprep.simulate import moffat_psf

from .test_pipeline import write_config, write_frames


@pytest.mark.parametrize(("band", "header", "want"), [
    ("sloan_g", None, "sloan_g"),
    ("SDSS_r", None, "sloan_r"),
    ("2mass_k", None, "ks"),
    ("blue", {"INSTRUME": "ACS", "FILTER1": "F475W", "FILTER2": "CLEAR2L"}, "acs_f475w"),
    ("x", {"INSTRUME": "WFC3", "FILTER": "F160W"}, "wfc3_f160w"),
    ("r", {"TELESCOP": "SDSS 2.5-M", "FILTER": "r"}, "sloan_r"),  # the header beats the ambiguous key
    ("K", {"TELESCOP": "2MASS", "FILTER": "k"}, "ks"),
    ("mystery", {"FILTER": "q"}, None),
])
def test_filter_names(band, header, want):
    name, _ = galfits_filter(band, fits.Header(header) if header else None)
    assert name == want
    assert name is None or name in GALFITS_FILTERS


def test_ambiguous_one_letter_band_warns():
    with pytest.warns(UserWarning, match="Cousins R"):
        assert galfits_filter("r")[0] == "r"


def test_unknown_override_warns_but_is_kept():
    with pytest.warns(UserWarning, match="not one of GalfitS's filter names"):
        assert galfits_filter("g", override="jwst_f200w") == ("jwst_f200w", "config")


def test_header_zeropoint():
    assert header_zeropoint(fits.Header({"MAGZP": 23.1})) == (23.1, "MAGZP")
    # HST ACS/WFC F814W: PHOTFLAM 7.0723e-20, PHOTPLAM 8045.0 -> AB ZP 25.94 (STScI's published value)
    zp, key = header_zeropoint(fits.Header({"PHOTFLAM": 7.0723e-20, "PHOTPLAM": 8045.0, "BUNIT": "ELECTRONS/S"}))
    assert key == "PHOTFLAM/PHOTPLAM" and abs(zp - 25.94) < 0.01
    # counts (not per second): PHOTFLAM does not apply to the pixel values
    assert header_zeropoint(fits.Header({"PHOTFLAM": 7.0723e-20, "PHOTPLAM": 8045.0, "BUNIT": "ELECTRONS"})) == (None, "")
    assert header_zeropoint(fits.Header({"ZP": "unknown"})) == (None, "")


def test_image_block_without_filter_or_psf():
    text = image_block("c", "mystery", cut_file="t_x.fits", psf_ref=None, psf_sampling=2, r=10.0)
    assert "Ic4) none" in text and "Ic5) 1 " in text and "Ic15) 0 " in text and "Ic2) mystery " in text
    assert "Ic10) -1 " in text


def test_lyric_region_and_atlas():
    blocks = {"a": image_block("a", "g", cut_file="t_g.fits", psf_ref=("t_g_psf.fits", 2), psf_sampling=1,
                               r=10.0, filter_name="sloan_g", zeropoint=22.5)}
    text = lyric_text("t", 150.1, 2.2, blocks, redshift=0.05)
    assert "R1) t " in text and "R2) [150.1,2.2]" in text and "R3) 0.05" in text
    assert "Aa2) ['a']" in text and "Ia4) [t_g_psf.fits,2]" in text and "Ia10) 22.5 " in text
    # where an assumed value came from is said on its line
    b = image_block("a", "blue", cut_file="t.fits", psf_ref=None, psf_sampling=1, r=5.0, filter_name="acs_f475w",
                    zeropoint=26.05, filter_from="header INSTRUME/FILTER1", zeropoint_from="header PHOTFLAM/PHOTPLAM")
    assert "(from header INSTRUME/FILTER1)" in b and "(AB, from header PHOTFLAM/PHOTPLAM)" in b


@pytest.mark.parametrize("k", [2, 3, 4])
def test_fine_centred_psf_is_odd_and_centred(k):
    n = 15 * k
    c = (n - 1) / 2  # gsprep's convention: centre of the central native pixel
    psf = moffat_psf((n, n), c + 0.0, c, fwhm=2.5 * k, beta=3.0, oversample=4)
    psf /= psf.sum()
    fine = fine_centred(psf, k)
    m = fine.shape[0]
    assert m % 2 == 1 and abs(fine.sum() - 1) < 1e-9
    yy, xx = np.indices(fine.shape)
    h = (m - 1) / 2
    core = np.hypot(xx - h, yy - h) < 4 * k
    w = fine * core
    assert abs((w * xx).sum() / w.sum() - h) < 0.01 and abs((w * yy).sum() / w.sum() - h) < 0.01
    assert np.unravel_index(np.argmax(fine), fine.shape) == (h, h)


def test_lyric_without_psf_names_no_psf_file(tmp_path, capsys):
    write_frames(tmp_path, bands=(("g", 2.6),))
    cfg = write_config(tmp_path, bands=(("g", 2.6),), options="psf = false\n")
    out = tmp_path / "out"
    assert main(["prepare", str(cfg), "--out", str(out), "--no-figures"]) == 0
    lyric = (out / "t1_images.lyric").read_text()
    assert "Ia4) none" in lyric and not (out / "t1_g_psf.fits").exists()
    assert "_psf.fits" not in lyric


def test_no_zeropoint_is_made_up():
    # no keyword gsprep knows (a JWST frame needs its preset): no zero point, GalfitS gets -1
    assert header_zeropoint(fits.Header({"PIXAR_SR": 2.3e-14, "BUNIT": "MJy/sr"})) == (None, "")

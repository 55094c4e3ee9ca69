"""PSF stars that are single and unsaturated: blends and saturated stars are rejected with their reason."""

import numpy as np
import pytest
from astropy.io import fits

import gsprep
from gsprep.simulate import add_stars

from .conftest import data_path

FWHM = 2.5
SIGB = 5.0


def _frame(rng, stars, shape=(200, 200), beta=3.0):
    img = add_stars(np.zeros(shape), [p for p, _ in stars], [f for _, f in stars], fwhm=FWHM, beta=beta, half=30)
    return img + rng.normal(0, 1, shape) * np.sqrt(SIGB**2 + np.clip(img, 0, None))


def _flux_for_snr(snr):
    nap = np.pi * (1.5 * FWHM) ** 2
    return 0.5 * (snr**2 + np.sqrt(snr**4 + 4 * snr**2 * nap * SIGB**2))


def _nearest(t, xy):
    d = np.hypot(t["x"] - xy[0], t["y"] - xy[1])
    i = int(np.argmin(d))
    assert d[i] < 4, (xy, d[i])
    return t[i]


def _select(t, **kw):
    kw = {"size": 15, "q_min": 0.5, "fwhm_nsigma": 5.0, **kw}
    return gsprep.select_stars(t, gsprep.StarCriteria(**kw))


@pytest.mark.parametrize("sep", [3, 5, 7])
def test_close_pairs_are_rejected_as_blends(rng, sep):
    # primaries at SNR 100, companions 1-10 times fainter, in many directions; nine single stars keep the
    # FWHM window honest
    pairs = []
    for k, ratio in enumerate((1, 2, 3, 5, 10)):
        th = 2 * np.pi * k / 5 + 0.3
        c1 = np.array([30.0 + 35 * k + 0.3, 40.2])
        pairs.append((c1, c1 + sep * np.array([np.cos(th), np.sin(th)]), ratio))
    singles = [(30.0 + 35 * k + 0.1, 150.4) for k in range(5)]
    f1 = _flux_for_snr(100)
    stars = [(tuple(c1), f1) for c1, _, _ in pairs] + [(tuple(c2), f1 / r) for _, c2, r in pairs]
    stars += [(p, f1) for p in singles]
    t = gsprep.find_stars(_frame(rng, stars), fwhm=FWHM, nsigma=3.0, npixels=5, size=15)
    s = _select(t)
    for c1, _, ratio in pairs:
        r = _nearest(s, c1)
        assert not r["selected"] and r["reason"].startswith("blend"), (sep, ratio, r["reason"])
    for p in singles:
        r = _nearest(s, p)
        assert r["selected"], (p, r["reason"])


def test_single_stars_are_kept_from_snr_50_to_500(rng):
    snrs = np.geomspace(50, 500, 20)
    pos = [(20.0 + 40 * (i % 5) + rng.uniform(-0.5, 0.5), 20.0 + 40 * (i // 5) + rng.uniform(-0.5, 0.5))
           for i in range(len(snrs))]
    img = _frame(rng, list(zip(pos, [_flux_for_snr(v) for v in snrs], strict=True)), shape=(180, 200), beta=3.5)
    t = gsprep.find_stars(img, fwhm=FWHM, nsigma=3.0, npixels=5, size=15)
    s = _select(t)
    for p in pos:
        r = _nearest(s, p)
        assert r["selected"], (p, r["reason"])
        assert r["asymmetry"] <= 0.05 and r["companion"] <= 0.05
    assert s.meta["funnel"]["blend"] == s.meta["funnel"]["saturated"]


def _clipped_field(rng, level):
    """One star clipped at ``level`` (a flat top), one bright unclipped star, and fainter ones."""
    stars = [((50.3, 50.6), 150000.0), ((120.2, 50.1), 8000.0), ((50.0, 120.0), 3000.0), ((120.0, 120.0), 4000.0),
             ((85.0, 160.0), 5000.0)]
    img = add_stars(np.zeros((190, 170)), [p for p, _ in stars], [f for _, f in stars], fwhm=3.0, half=30)
    sky = 100.0
    img = np.minimum(img + sky, level) + rng.normal(0, 2.0, img.shape)
    return img, stars, sky


def test_a_clipped_star_is_saturated_with_the_level_and_by_its_flat_top_without(rng):
    level = 2500.0  # the 150000 star peaks at ~12000 above the sky: clipped over >= 6 pixels
    img, stars, sky = _clipped_field(rng, level)
    assert np.count_nonzero(img >= level - 10) >= 6
    # the level given (in the frame's units before sky subtraction; find_stars sees the frame minus its sky)
    t = gsprep.find_stars(img - sky, fwhm=3.0, nsigma=5.0, npixels=5, size=15, background=sky)
    s = _select(t, saturation=level)
    r = _nearest(s, stars[0][0])
    assert not r["selected"] and r["reason"].startswith("saturated: core peak"), r["reason"]
    assert f"{level:.6g}" in r["reason"]
    for p, _ in stars[1:]:
        assert _nearest(s, p)["selected"], _nearest(s, p)["reason"]
    # a level just above the bright unclipped star's peak keeps it; just below, it goes
    peak1 = float(_nearest(t, stars[1][0])["peak_raw"])
    assert _nearest(_select(t, saturation=peak1 + 1), stars[1][0])["selected"]
    assert _nearest(_select(t, saturation=peak1 - 1), stars[1][0])["reason"].startswith("saturated")
    # no level anywhere: the flat top alone rejects it, and says (once) that no level was known
    with pytest.warns(gsprep.stars.SaturationWarning, match="no saturation level is known") as rec:
        s = _select(t)
    assert len(rec) == 1
    r = _nearest(s, stars[0][0])
    assert not r["selected"] and r["reason"].startswith("saturated: flat-topped core"), r["reason"]
    assert all(_nearest(s, p)["selected"] for p, _ in stars[1:])


def test_no_warning_when_nothing_is_flat_topped(rng):
    img, stars, sky = _clipped_field(rng, 1e9)
    t = gsprep.find_stars(img, fwhm=3.0, nsigma=5.0, npixels=5, size=15)
    s = _select(t)  # pytest turns a warning into an error
    assert s["selected"].sum() == len(stars)


def test_saturation_level_from_the_header(rng):
    img, stars, sky = _clipped_field(rng, 2500.0)
    hdr = fits.Header({"SATURATE": 2500.0, "MAXLIN": 2400.0, "DATAMAX": 100.0})
    assert gsprep.stars.saturation_level(hdr) == (2400.0, "MAXLIN")
    assert gsprep.stars.saturation_level(fits.Header({"DATAMAX": 5.0})) is None
    t = gsprep.find_stars(img, fwhm=3.0, nsigma=5.0, npixels=5, size=15, header=hdr)
    assert t.meta["saturation"] == 2400.0 and t.meta["saturation_source"] == "header MAXLIN"
    s = _select(t)
    r = _nearest(s, stars[0][0])
    assert r["reason"].startswith("saturated: core peak") and "header MAXLIN" in r["reason"], r["reason"]
    # the user's level wins over the header's
    s = _select(t, saturation=1e6)
    assert _nearest(s, stars[0][0])["reason"].startswith("saturated: flat-topped")


def test_saturation_is_checked_and_reaches_the_config(tmp_path):
    with pytest.raises(ValueError, match="saturation"):
        gsprep.StarCriteria(saturation=-1.0)
    assert gsprep.StarCriteria(saturation=3e4).saturation == 3e4
    from gsprep.pipeline import load_config

    data = np.zeros((20, 20), np.float32)
    fits.PrimaryHDU(data).writeto(tmp_path / "f.fits")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[target]\nname = "t"\nra = 10.0\ndec = 1.0\nr = 5.0\n\n[criteria]\nsaturation = 30000.0\n\n'
                   '[bands.g]\nfile = "f.fits"\nfwhm = 3.0\n')
    assert load_config(str(cfg)).criteria.saturation == 30000.0


def test_cli_psf_has_a_saturation_flag():
    from gsprep.cli import build_parser

    args = build_parser().parse_args(["psf", "x.fits", "--fwhm", "3", "--out", "p.fits", "--saturation", "30000"])
    assert args.saturation == 30000.0


def test_real_frame_keeps_a_sensible_number_of_stars():
    # the EY UMa CCD frame: 71 detections, among them hot pixels, column artefacts and close pairs
    img = gsprep.read_image(data_path("thumbnail-image.fit.gz"), unit="counts")
    t = gsprep.find_stars(img.data, fwhm=2.5, nsigma=5.0, npixels=5, size=15, header=img.header)
    s = gsprep.select_stars(t, gsprep.StarCriteria(size=15))
    f = s.meta["funnel"]
    assert 10 <= f["drop"] <= 40, f
    reasons = np.asarray(s["reason"], str)
    nblend = np.count_nonzero(np.char.startswith(reasons, "blend"))
    assert 0 < nblend < 0.5 * len(s), f
    # every rejected blend has light that is not point-symmetric or a companion peak
    b = np.char.startswith(reasons, "blend")
    assert np.all((s["asymmetry"][b] > 0.06) | (s["companion"][b] > 0.05))


def test_prepare_reads_the_saturation_level_from_the_frame_header(tmp_path, monkeypatch):
    """The pipeline passes the header (and the sky it removed) to find_stars: SATURATE rejects bright stars."""
    import gsprep.pipeline
    from gsprep.pipeline import load_config, prepare_target

    monkeypatch.setattr(gsprep.pipeline, "_psfs", lambda stamps, k, degree=0: {})  # star selection is what is tested

    from .test_pipeline import write_config, write_frames

    write_frames(tmp_path, bands=(("g", 2.6),))
    cfg = load_config(write_config(tmp_path, bands=(("g", 2.6),), options="psf = true\n"))
    img = gsprep.read_image(cfg.bands["g"].file)
    plain = prepare_target({"g": img}, cfg.ra, cfg.dec, cfg)["g"]
    assert "saturation" not in plain.stars.meta
    # a level between the frame's brightest pixels and its sky: the brightest stars now reach it
    level = float(np.percentile(img.data, 99.95))
    hdr = img.header.copy()
    hdr["SATURATE"] = level
    sat_img = gsprep.io.Image(**{**img.__dict__, "header": hdr})
    p = prepare_target({"g": sat_img}, cfg.ra, cfg.dec, cfg)["g"]
    assert p.stars.meta["saturation"] == pytest.approx(level)
    assert "SATURATE" in p.stars.meta["saturation_source"]
    def saturated(t):
        return int(sum(str(r).startswith("saturated") for r in t["reason"]))

    assert saturated(p.stars) >= 1 and saturated(plain.stars) == 0

import os
import warnings

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

import gsprep
from gsprep import stars as stars_mod
from gsprep.simulate import add_stars, sersic_image, tan_wcs

from .conftest import data_path

# --------------------------------------------------------------------------
# made-up field with known answers

STARS = [(40 + 55 * i, 40 + 55 * j) for i in range(4) for j in range(4) if (i, j) not in {(1, 1), (2, 2), (3, 1)}]
GALAXY = (95.0, 95.0)
PAIR = [(150.0, 150.0), (160.0, 160.0)]
CR = (205.0, 95.0)


def made_up_field(rng):
    shape = (260, 260)
    img = sersic_image(shape, *GALAXY, flux=4e4, r_eff=6.0, n=1.0, q=0.45, theta=0.5)
    fluxes = np.geomspace(4e3, 6e4, len(STARS))
    img = add_stars(img, STARS, fluxes, fwhm=3.0, beta=3.0, half=20)
    img = add_stars(img, PAIR, [2e4, 1.5e4], fwhm=3.0, beta=3.0, half=20)
    img[int(CR[1]), int(CR[0])] += 3000.0
    img += 100.0 + rng.normal(0, 5.0, shape)
    return img, tan_wcs(30.0, -10.0, shape, 0.5)


def nearest(t, xy):
    d = np.hypot(t["x"] - xy[0], t["y"] - xy[1])
    i = int(np.argmin(d))
    assert d[i] < 3, (xy, d[i])
    return t[i]


def test_made_up_field_each_reason_is_right(rng):
    img, w = made_up_field(rng)
    t = gsprep.find_stars(img, fwhm=3.0, nsigma=3.0, npixels=5, wcs=w, size=25)
    assert {"id", "x", "y", "ra", "dec", "flux", "peak", "fwhm", "q", "isolation", "central_bad", "in_frame"} <= set(t.colnames)
    s = gsprep.select_stars(t, gsprep.StarCriteria(size=25, q_min=0.7, isolate=0.1, fwhm_nsigma=5.0))
    for xy in STARS:
        r = nearest(s, xy)
        assert r["selected"], (xy, r["reason"])
        assert 2.5 < r["fwhm"] < 4.5  # second-moment FWHM: Moffat wings push it above 3
    g = nearest(s, GALAXY)
    assert not g["selected"] and (g["reason"].startswith("axis ratio") or g["reason"].startswith("FWHM"))
    for xy in PAIR:
        p = nearest(s, xy)
        assert not p["selected"] and p["reason"].startswith("not isolated"), p["reason"]
    c = nearest(s, CR)
    assert not c["selected"] and c["reason"].startswith("FWHM"), c["reason"]
    f = s.meta["funnel"]
    assert list(f) == ["detected", "flux", "saturated", "blend", "shape", "fwhm", "isolation", "edge", "central", "drop"]
    assert f["detected"] >= len(STARS) + 4 and f["drop"] == int(s["selected"].sum()) == len(STARS)
    assert all(a >= b for a, b in zip(list(f.values()), list(f.values())[1:], strict=False))


def test_drop_by_id_and_no_star_left(rng):
    img, w = made_up_field(rng)
    t = gsprep.find_stars(img, fwhm=3.0, npixels=5, wcs=w, size=25)
    crit = gsprep.StarCriteria(size=25, q_min=0.7, fwhm_nsigma=5.0)
    s = gsprep.select_stars(t, crit)
    first = int(s["id"][s["selected"]][0])
    s2 = gsprep.select_stars(t, gsprep.StarCriteria(size=25, q_min=0.7, fwhm_nsigma=5.0, drop=(first,)))
    row = s2[s2["id"] == first][0]
    assert not row["selected"] and row["reason"] == "dropped by hand"
    with pytest.raises(gsprep.NoStarsError,
                       match=r"the 'fwhm' stage removed the last one \(detected=\d+, flux=\d+, saturated=\d+, blend=\d+, shape=\d+, fwhm=0"):
        gsprep.select_stars(t, gsprep.StarCriteria(size=25, q_min=0.0, fwhm_max=0.5))
    with pytest.raises(gsprep.NoStarsError, match="'flux' stage removed the last one") as info:
        gsprep.select_stars(t, gsprep.StarCriteria(size=25, flux_threshold=1e9))
    assert len(info.value.table) == len(t) and not info.value.table["selected"].any()
    assert all(r.startswith("flux") for r in info.value.table["reason"])


def test_stamps_mask_neighbours(rng):
    img, w = made_up_field(rng)
    t, seg = gsprep.find_stars(img, fwhm=3.0, npixels=5, wcs=w, size=25, return_segmentation=True)
    pair = [nearest(t, xy)["id"] for xy in PAIR]
    sub = t[np.isin(t["id"], pair)]
    st = gsprep.extract_stamps(img, np.full(img.shape, 5.0), sub, 25, segmentation=seg)
    assert st.data.shape == st.sigma.shape == st.mask.shape == (2, 25, 25)
    for k in range(2):
        x, y = st.positions[k]
        assert abs(x - 12) <= 0.5 and abs(y - 12) <= 0.5
        assert not st.mask[k, 12, 12]
    # star 0 at (150,150): its neighbour at (160,160) -> stamp pixel (22, 22) masked
    k0 = int(np.argmin(np.hypot(st.origins[:, 0] + 12 - 150, st.origins[:, 1] + 12 - 150)))
    assert st.mask[k0, 22, 22]
    edge = Table({"id": [1], "x": [3.0], "y": [128.0]})
    st2 = gsprep.extract_stamps(img, np.full(img.shape, 5.0), edge, 25)
    assert st2.mask[0, 12, :9].all() and np.isinf(st2.sigma[0, 12, 0])
    assert st2.positions[0] == pytest.approx((12.0, 12.0))


def test_bad_input(rng):
    img, w = made_up_field(rng)
    t = gsprep.find_stars(img, fwhm=3.0, npixels=5, wcs=w, size=25)
    with pytest.raises(ValueError, match="catalog is empty"):
        gsprep.select_stars(t[:0], gsprep.StarCriteria(size=25))
    with pytest.raises(ValueError, match=r"reference needs 'ra' and 'dec' columns"):
        gsprep.crossmatch(t, Table({"x": [1.0], "y": [2.0]}), 2.0)
    with pytest.raises(ValueError, match="size must be an odd integer"):
        gsprep.extract_stamps(img, img, t, 24)
    with pytest.raises(ValueError, match="size=301 is larger than the frame"):
        gsprep.extract_stamps(img, img, t, 301)
    with pytest.raises(ValueError, match="size must be an odd integer"):
        gsprep.find_stars(img, fwhm=3.0, size=10)
    with pytest.raises(ValueError, match="size must be an odd integer"):
        gsprep.StarCriteria(size=10)
    with pytest.raises(ValueError, match=r"q_min must be a finite number within \[0, 1\]"):
        gsprep.StarCriteria(q_min=1.5)
    with pytest.raises(ValueError, match="fwhm must be a finite number > 0"):
        gsprep.find_stars(img, fwhm=0.0)


# --------------------------------------------------------------------------
# real frames


def ey_uma():
    img = gsprep.read_image(data_path("thumbnail-image.fit.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WCS(fits.getheader(data_path("wcs-sol-from-thumbnail-image-index-5200.fit")))
    return img, w


def test_ey_uma_tycho_crossmatch():
    img, w = ey_uma()
    t = gsprep.find_stars(img.data, fwhm=2.0, nsigma=3.0, npixels=5, wcs=w, size=15)
    tyc = Table.read(data_path("tycho2_thumbnail.ecsv"))
    assert len(tyc) == 15
    m = gsprep.crossmatch(tyc, t, 3.0)
    assert m["matched"].sum() >= 12
    assert np.all(m["sep"][m["matched"]] <= 3.0)
    assert np.all(m["ref_index"][~m["matched"]] == -1)
    # the other way round: catalogue rows learn their reference match
    back = gsprep.crossmatch(t, tyc, 3.0)
    assert back["matched"].sum() >= 12 and "ref_ra" in back.colnames
    assert np.ma.is_masked(back["ref_ra"][np.nonzero(~back["matched"])[0][0]])


def test_ngc1316_galaxy_rejected_unsaturated_tycho_stars_survive():
    img = gsprep.read_image(data_path("comp.fits"), hdu=1)
    sat = 980.0  # plate: bright stars saturate at ~990-1037 (raw), with flat tops
    t = gsprep.find_stars(img.data, fwhm=2.0, nsigma=3.0, npixels=5, wcs=img.wcs, size=15,
                          saturation=sat, deblend=True)
    tyc = Table.read(data_path("tycho2_comp.ecsv"))
    crit = gsprep.StarCriteria(size=15, q_min=0.55, isolate=0.3)  # 2-px FWHM: q is noisy
    s = gsprep.select_stars(t, crit, reference=tyc)
    gal = SkyCoord(50.6738, -37.2083, unit="deg")
    d = SkyCoord(s["ra"], s["dec"], unit="deg").separation(gal).arcsec
    g = s[int(np.argmin(d))]
    assert d.min() < 10 and not g["selected"] and g["reason"]
    # judged on its shape alone (no reference), the galaxy fails on axis ratio or FWHM (or its saturated core)
    alone = gsprep.select_stars(t, crit)
    ga = alone[int(np.argmin(d))]
    assert not ga["selected"] and ga["reason"].startswith(("axis ratio", "FWHM", "saturated")), ga["reason"]
    raw_peak = np.array([np.nanmax(img.data[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3])
                         for x, y in zip(s["x"], s["y"], strict=True)])
    matched_ok = s["matched"] & (raw_peak < sat - 20) & s["in_frame"]
    assert matched_ok.sum() >= 8
    # one of them, (124, 50), has a real companion 5 px away (peak 0.4 of its own): rejected as a blend
    blend = np.char.startswith(np.asarray(s["reason"], str), "blend")
    assert np.count_nonzero(matched_ok & blend) == 1
    assert s["selected"][matched_ok & ~blend].all(), s[matched_ok & ~blend & ~s["selected"]]["reason"]
    saturated = s["matched"] & (raw_peak >= sat)
    assert saturated.sum() >= 2 and not s["selected"][saturated].any()


# --------------------------------------------------------------------------
# Gaia, with the network call replaced by astroquery's recorded replies


class FakeJob:
    def __init__(self, path):
        self.path = path

    def get_results(self):
        return Table.read(self.path)


class FakeGaia:
    def __init__(self, path, calls):
        self.path, self.calls = path, calls

    def launch_job_async(self, query, **kw):
        self.calls.append(query)
        return FakeJob(self.path)


@pytest.mark.parametrize("reply", ["1712337806100O-result.ecsv", "1710099405832VAL-result.vot"])
def test_gaia_stars_recorded_reply_and_cache(tmp_path, monkeypatch, reply):
    calls = []
    path = data_path(os.path.join("gaia", reply))
    monkeypatch.setattr(stars_mod, "_gaia_client", lambda: FakeGaia(path, calls))
    t = gsprep.gaia_stars(268.07, 26.5, 120.0, cache=tmp_path)
    n = len(Table.read(path))
    assert len(t) == n and {"source_id", "ra", "dec", "pmra", "pmdec", "ref_epoch"} <= set(t.colnames)
    assert len(calls) == 1
    q = calls[0]
    assert "TOP" not in q.upper()  # row limit lifted: no TOP 50
    assert "gaiadr3.gaia_source" in q and "CIRCLE('ICRS', 268.07" in q and "0.0333333333" in q
    # second call: served from the cache, no network
    t2 = gsprep.gaia_stars(268.07, 26.5, 120.0, cache=tmp_path)
    assert len(calls) == 1 and len(t2) == n
    np.testing.assert_allclose(t2["ra"], t["ra"])
    assert len(list(tmp_path.iterdir())) == 1


def test_gaia_network_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    class Down:
        def launch_job_async(self, query, **kw):
            raise OSError("Name or service not known")

    monkeypatch.setattr(stars_mod, "_gaia_client", lambda: Down())
    with pytest.raises(ConnectionError, match="To work offline.*local catalogue"):
        gsprep.gaia_stars(10.0, 20.0, 60.0, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_crossmatch_moves_reference_by_proper_motion():
    ref = Table({"ra": [10.0], "dec": [0.0], "pmra": [36000.0], "pmdec": [0.0], "ref_epoch": [2016.0]})
    cat = Table({"ra": [10.0 + 0.1 / 3600 * 10], "dec": [0.0]})  # 36 arcsec/yr * 10 yr = 360 arcsec? no: 36000 mas = 36"
    cat["ra"][0] = 10.0 + 36.0 * 10 / 3600.0
    assert not gsprep.crossmatch(cat, ref, 1.0)["matched"][0]
    m = gsprep.crossmatch(cat, ref, 1.0, epoch=2026.0)
    assert m["matched"][0] and m["sep"][0] < 0.01
    m2 = gsprep.crossmatch(cat, ref, 1.0, epoch="2026-01-01T12:00:00")
    assert m2["matched"][0]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"q_min": "a"}, TypeError, "q_min must be a number, got 'a'"),
    ({"q_min": 1.5}, ValueError, r"q_min must be a finite number within \[0, 1\], got 1.5"),
    ({"drop": 5}, TypeError, r"drop must be a sequence of star ids \(integers\), e.g. \(3, 17\), got 5"),
    ({"drop": "12"}, TypeError, "drop must be a sequence of star ids"),
    ({"drop": (1, 2.5)}, TypeError, "drop must be a sequence of star ids"),
    ({"size": 24}, ValueError, "size must be an odd integer >= 3, got 24"),
    ({"size": "25"}, TypeError, "size must be an odd integer >= 3, got '25'"),
    ({"central_tol": 0.5}, ValueError, "central_tol must be an integer >= 0, got 0.5"),
    ({"flux_threshold": None}, TypeError, "flux_threshold must be a number >= 0, got None"),
    ({"fwhm_max": -1.0}, ValueError, "fwhm_max must be a finite number > 0"),
    ({"isolate": True}, TypeError, "isolate must be a number >= 0, got True"),
    ({"gaia_radius": "1"}, TypeError, "gaia_radius must be a positive number"),
    ({"starcord_list": (10.0, 20.0)}, TypeError, r"starcord_list must be a sequence of \(ra, dec\) pairs"),
    ({"starcord_list": [(10.0, 95.0)]}, ValueError, r"starcord_list dec must be within \[-90, 90\]"),
    ({"starcord_list": []}, ValueError, "starcord_list is empty"),
])
def test_star_criteria_refuses_bad_values_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        gsprep.StarCriteria(**kwargs)


def test_star_criteria_normalises_sequences():
    c = gsprep.StarCriteria(drop=[3, np.int64(7)], starcord_list=[[10, 20], (30.5, -2)])
    assert c.drop == (3, 7) and all(type(v) is int for v in c.drop)
    assert c.starcord_list == ((10.0, 20.0), (30.5, -2.0))


@pytest.mark.parametrize("column", ["q", "fwhm", "flux", "isolation", "central_bad", "id"])
def test_select_stars_names_a_missing_column(rng, column):
    img, w = made_up_field(rng)
    t = gsprep.find_stars(img, fwhm=3.0, npixels=5, wcs=w, size=25)
    t.remove_column(column)
    with pytest.raises(ValueError, match=rf"catalog is missing column\(s\) \['{column}'\] \(select_stars needs"):
        gsprep.select_stars(t, gsprep.StarCriteria(size=25))
    with pytest.raises(TypeError, match="catalog must be an astropy Table"):
        gsprep.select_stars({"q": [1.0]}, gsprep.StarCriteria(size=25))


def test_fwhm_of_undersampled_stars_wherever_they_fall_in_the_pixel(rng):
    """A star a pixel wide: its FWHM does not depend on where it falls within its pixel (pixel-integrated fit)."""
    from scipy.special import erf

    n, true = 160, 1.1
    s = true / 2.3548200450309493 * np.sqrt(2.0)
    img = rng.normal(0.0, 2.0, (n, n))
    xy = [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)) for x in range(20, 150, 26) for y in range(20, 150, 26)]
    ax = np.arange(n, dtype=float)
    for x, y in xy:
        gx = 0.5 * (erf((ax + 0.5 - x) / s) - erf((ax - 0.5 - x) / s))
        gy = 0.5 * (erf((ax + 0.5 - y) / s) - erf((ax - 0.5 - y) / s))
        img += 4e3 * np.outer(gy, gx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = gsprep.find_stars(img, fwhm=1.5, nsigma=5, npixels=3, size=15)
    assert len(t) == len(xy)
    # the windowed moments less the pixel's 1/12 gave 0.05-1.1 px here, by sub-pixel position
    np.testing.assert_allclose(np.asarray(t["fwhm"]), true, rtol=0.05)


def test_fwhm_of_ey_uma_stars_is_their_pixel_width():
    """EY UMa's stars put ~90% of their light in one pixel: FWHM about half a pixel, none collapsed to ~0."""
    data = fits.getdata(data_path("thumbnail-image.fit.gz")).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = gsprep.find_stars(data, fwhm=1.5, nsigma=5, npixels=5, size=15)
    bright = t[np.asarray(t["peak"]) > np.percentile(np.asarray(t["peak"]), 50)]
    f = np.asarray(bright["fwhm"])
    assert np.isfinite(f).all()
    assert 0.35 < np.median(f) < 0.8, np.median(f)
    assert f.min() > 0.1, np.sort(f)[:5]  # the moments gave 0.002-0.03 for half of them

"""GalfitS's img_cut / generate_cutmask / write_imcut / generate_PSFs options and their gsprep equivalents.

Fast: no PSF fit (``psf_fit = false``, or StarCriteria/select_stars directly).
"""

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import gsprep
from gsprep import pipeline
from gsprep import stars as stars_mod
from gsprep.simulate import add_stars, moffat_psf, sersic_image, tan_wcs

RA, DEC, SCALE = 30.0, -10.0, 0.5
SHAPE = (200, 200)
STARS = [(30.0 + 45 * i, 30.0 + 45 * j) for i in range(4) for j in range(4) if (i, j) not in {(1, 1), (2, 2)}]
GALAXY = (100.0, 100.0)


def _field(seed=1):
    rng = np.random.default_rng(seed)
    img = sersic_image(SHAPE, *GALAXY, flux=3e4, r_eff=5.0, n=1.0, q=0.6, theta=0.4)
    img = add_stars(img, STARS, np.geomspace(5e3, 4e4, len(STARS)), fwhm=3.0, beta=3.0, half=15)
    img += 50.0 + rng.normal(0, 3.0, SHAPE)
    return img, tan_wcs(RA, DEC, SHAPE, SCALE)


@pytest.fixture(scope="module")
def field():
    return _field()


@pytest.fixture(scope="module")
def catalog(field):
    img, w = field
    return gsprep.find_stars(img - 50.0, fwhm=3.0, nsigma=5.0, npixels=5, wcs=w, size=25)


def _row_near(t, xy, tol=3.0):
    d = np.hypot(np.asarray(t["x"], float) - xy[0], np.asarray(t["y"], float) - xy[1])
    i = int(np.nanargmin(d))
    assert d[i] < tol, (xy, d[i])
    return i


# --------------------------------------------------------------------------
# generate_PSFs droppsf: by index (GalfitS) or by id


def test_drop_index_drops_the_row_shown_and_drop_still_takes_ids(catalog):
    crit = dict(size=25, q_min=0.7, isolate=0.2)
    base = gsprep.select_stars(catalog, gsprep.StarCriteria(**crit))
    kept = np.nonzero(np.asarray(base["selected"]))[0]
    assert len(kept) >= 8
    i, j = int(kept[0]), int(kept[3])
    s = gsprep.select_stars(catalog, gsprep.StarCriteria(drop_index=(i,), drop=(int(catalog["id"][j]),), **crit))
    assert not s["selected"][i] and s["reason"][i] == f"dropped by hand (row {i})"
    assert not s["selected"][j] and s["reason"][j] == "dropped by hand"
    assert int(s["selected"].sum()) == len(kept) - 2
    assert s.meta["funnel"]["drop"] == len(kept) - 2


def test_drop_index_out_of_range_and_negative_are_errors(catalog):
    with pytest.raises(ValueError, match="drop_index .* out of range"):
        gsprep.select_stars(catalog, gsprep.StarCriteria(size=25, drop_index=(len(catalog),)))
    with pytest.raises(TypeError, match="drop_index must be a sequence of 0-based row indices"):
        gsprep.StarCriteria(drop_index=(-1,))
    with pytest.raises(TypeError, match="drop_index"):
        gsprep.StarCriteria(drop_index=3)


# --------------------------------------------------------------------------
# generate_PSFs size: the stamp must fit in the frame


def test_criteria_size_rejects_stars_whose_stamp_leaves_the_frame(catalog):
    crit = dict(q_min=0.7, isolate=0.2)
    i = _row_near(catalog, STARS[0])  # (30, 30): a 25 px box fits, a 75 px one does not
    small = gsprep.select_stars(catalog, gsprep.StarCriteria(size=25, **crit))
    assert small["selected"][i]
    big = gsprep.select_stars(catalog, gsprep.StarCriteria(size=75, **crit))
    assert not big["selected"][i]
    assert big["reason"][i] == "stamp does not fit inside the frame (75 px)"
    j = _row_near(catalog, (120.0, 75.0))  # 37 px from every edge: fits a 75 px box
    assert big["selected"][j], big["reason"][j]


# --------------------------------------------------------------------------
# generate_PSFs sigfwhm / medianfwhm


def test_fwhm_median_centres_the_window(catalog):
    crit = dict(size=25, q_min=0.7, isolate=0.2, fwhm_nsigma=3.0)
    s = gsprep.select_stars(catalog, gsprep.StarCriteria(**crit))
    fw = np.asarray(s["fwhm"])[np.asarray(s["selected"])]
    med = float(np.median(fw))
    ok = gsprep.select_stars(catalog, gsprep.StarCriteria(fwhm_median=med, **crit))
    assert int(ok["selected"].sum()) == int(s["selected"].sum())
    with pytest.raises(gsprep.NoStarsError, match="'fwhm' stage") as err:
        gsprep.select_stars(catalog, gsprep.StarCriteria(fwhm_median=3 * med, **crit))
    reasons = [r for r in err.value.table["reason"] if r.startswith("FWHM")]
    assert reasons
    lo, hi = (float(v) for v in reasons[0].split("[")[1].rstrip("]").split(","))
    assert lo < 3 * med < hi and abs((lo + hi) / 2 - 3 * med) < 1e-2
    with pytest.raises(ValueError, match="fwhm_median"):
        gsprep.StarCriteria(fwhm_median=-1.0)


# --------------------------------------------------------------------------
# generate_PSFs starcord_list: the user's list is the catalogue


def test_positions_make_the_catalogue_in_the_order_given(field):
    img, w = field
    given = [STARS[5], (5.0, 190.0), STARS[1], GALAXY]  # a star, empty sky, a star, the galaxy
    t = gsprep.find_stars(img - 50.0, fwhm=3.0, nsigma=5.0, npixels=5, wcs=w, size=25, positions=given)
    assert len(t) == 4
    assert list(t["found"]) == [True, False, True, True]
    assert np.allclose(t["given_x"], [g[0] for g in given]) and np.allclose(t["given_y"], [g[1] for g in given])
    assert np.hypot(t["x"][0] - STARS[5][0], t["y"][0] - STARS[5][1]) < 0.5  # measured there
    s = gsprep.select_stars(t, gsprep.StarCriteria(size=25, q_min=0.7, isolate=0.2))
    assert s["reason"][1] == "no source detected at the given position (5.0, 190.0)"
    assert s["selected"][0] and s["selected"][2]
    assert not s["selected"][3] and s["reason"][3]  # the galaxy is still quality-checked
    assert s.meta["funnel"]["catalog"] == 3
    # droppsf indices count in the user's list
    d = gsprep.select_stars(t, gsprep.StarCriteria(size=25, q_min=0.7, isolate=0.2, drop_index=(2,)))
    assert d["selected"][0] and not d["selected"][2] and d["reason"][2] == "dropped by hand (row 2)"


def test_star_positions_from_sky_or_pixel_columns(field):
    _, w = field
    sky = w.pixel_to_world([STARS[0][0], STARS[4][0]], [STARS[0][1], STARS[4][1]])
    t = Table({"RA": sky.ra.deg, "Dec": sky.dec.deg})
    xy = stars_mod.star_positions_in(t, w)
    assert np.allclose(xy, [STARS[0], STARS[4]], atol=1e-6)
    assert np.allclose(stars_mod.star_positions_in(Table({"x": [1.0], "y": [2.0]})), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="no WCS"):
        stars_mod.star_positions_in(t, None)


# --------------------------------------------------------------------------
# generate_PSFs makestackpsf


def test_stack_psf_is_a_normalised_plain_stack():
    n, size = 6, 15
    c = size // 2
    truth = moffat_psf((size, size), c, c, fwhm=2.5, beta=3.0)
    truth = truth / truth.sum()
    rng = np.random.default_rng(3)
    fluxes = np.linspace(1e4, 5e4, n)
    data = np.stack([f * truth + 7.0 + rng.normal(0, 0.5, (size, size)) for f in fluxes])
    mask = np.zeros(data.shape, bool)
    mask[0, :3, :3] = True  # a masked corner in one stamp
    data[0, :3, :3] = 1e6  # that would spoil the stack if used
    st = stars_mod.Stamps(data, np.ones_like(data), mask, np.full((n, 2), c, float), np.arange(n),
                          np.zeros((n, 2), int))
    for method in ("median", "mean"):
        psf = stars_mod.stack_psf(st, method=method)
        assert psf.shape == (size, size)
        assert abs(psf.sum() - 1) < 1e-12
        assert np.unravel_index(np.argmax(psf), psf.shape) == (c, c)
        # the Moffat's wings in the 2-px sky border are taken as sky: a few per cent of the peak
        assert np.max(np.abs(psf - truth)) < 0.04 * truth.max()
        assert psf[c, c] > 0.95 * truth[c, c]
    with pytest.raises(ValueError, match="method"):
        stars_mod.stack_psf(st, method="max")


# --------------------------------------------------------------------------
# img_cut spcorrection


def test_spcorrection_centres_the_cut_on_the_corrected_position(field):
    img, w = field
    centre = w.pixel_to_world(100, 100)
    ra, dec = float(centre.ra.deg), float(centre.dec.deg)
    target = {"wcs": w, "ra": ra, "dec": dec, "pixel_scale": None}
    plain = pipeline._corrected_cut(img, 10.0, target, None)
    moved = pipeline._corrected_cut(img, 10.0, target, (2.0, 1.0))  # 2" east, 1" north at 0.5"/px
    assert moved.origin[0] - plain.origin[0] == -4  # east is -x (north up, east left)
    assert moved.origin[1] - plain.origin[1] == 2
    assert (moved.ra, moved.dec) == (ra, dec)
    back = moved.wcs.pixel_to_world(*moved.center).icrs  # the cut's WCS says: this pixel is the nominal target
    assert abs((back.ra.deg - ra) * np.cos(np.radians(dec))) * 3600 < 1e-4
    assert abs(back.dec.deg - dec) * 3600 < 1e-4


# --------------------------------------------------------------------------
# the TOML


def _frame_file(tmp_path, field):
    img, w = field
    hdr = w.to_header()
    hdr["EXPTIME"] = 100.0
    hdr["GAIN"] = 2.0
    path = tmp_path / "g.fits"
    fits.PrimaryHDU(img.astype(np.float32), hdr).writeto(path)
    return path


def _toml(tmp_path, options="", criteria="", band=""):
    text = f"""
[target]
name = "t"
ra = {RA}
dec = {DEC}
r = 12.0

[options]
sky_order = 0
stamp_size = 25
{options}

[criteria]
q_min = 0.7
isolate = 0.2
{criteria}

[bands.g]
file = "g.fits"
fwhm = 3.0
filter = "sloan_g"
zeropoint = 22.5
{band}
"""
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_toml_takes_the_galfits_keys(tmp_path):
    Table({"ra": [RA], "dec": [DEC]}).write(tmp_path / "stars.ecsv")
    cfg = gsprep.pipeline.load_config(_toml(
        tmp_path, options='star_catalog = "stars.ecsv"\ngaia = true\npsf_fit = false\nstack_psf = "mean"',
        criteria="drop_index = [0, 4]\ndrop = [12]\nfwhm_median = 3.2", band="spcorrection = [0.3, -0.2]"))
    assert cfg.star_catalog == os.path.join(str(tmp_path), "stars.ecsv") and cfg.stars_from == "catalog"
    assert cfg.gaia is True and cfg.psf_fit is False and cfg.stack_psf == "mean"
    assert cfg.criteria.drop_index == (0, 4) and cfg.criteria.drop == (12,) and cfg.criteria.fwhm_median == 3.2
    assert cfg.bands["g"].spcorrection == (0.3, -0.2)
    cfg = gsprep.pipeline.load_config(_toml(tmp_path, options="stack_psf = true"))
    assert cfg.stack_psf == "median" and cfg.stars_from == "detected" and cfg.psf_fit is True
    bad = [('stack_psf = "max"', "", "", r"\[options\] stack_psf"),
           ('star_catalog = "nope.ecsv"', "", "", r"\[options\] star_catalog: no such file"),
           ('stars_from = "catalog"', "", "", "needs star_catalog"),
           ("", "", 'spcorrection = [1.0]', r"\[bands.g\] spcorrection must be \[east, north\]"),
           ("", "drop_index = [-2]", "", r"\[criteria\] drop_index")]
    for opt, crit, band, match in bad:
        with pytest.raises((ValueError, TypeError), match=match):
            gsprep.pipeline.load_config(_toml(tmp_path, options=opt, criteria=crit, band=band))


# --------------------------------------------------------------------------
# prepare: notfit, makestackpsf, the star list as catalogue, Gaia


def test_prepare_notfit_writes_stars_and_stack_not_a_psf(tmp_path, field, monkeypatch):
    _frame_file(tmp_path, field)
    _, w = field
    listed = [STARS[2], STARS[7], (5.0, 190.0)]
    sky = w.pixel_to_world([p[0] for p in listed], [p[1] for p in listed])
    Table({"ra": sky.ra.deg, "dec": sky.dec.deg}).write(tmp_path / "stars.ecsv")
    cfg = gsprep.pipeline.load_config(_toml(
        tmp_path, options='star_catalog = "stars.ecsv"\npsf_fit = false\nstack_psf = "median"\nmask_nsigma = 3.0'))

    def no_fit(*a, **k):
        raise AssertionError("psf_fit = false must not fit a PSF")

    monkeypatch.setattr(pipeline, "_psfs", no_fit)
    monkeypatch.setattr(pipeline, "fit_epsf", no_fit)
    out = tmp_path / "out"
    run = gsprep.pipeline.run_target(cfg, out, figures=False)
    assert run.ok, run.errors
    names = sorted(os.listdir(out))
    assert "t_g_psf.fits" not in names
    assert {"t_g.fits", "t_g_stars.fits", "t_g_stackpsf.fits", "t_images.lyric"} <= set(names)
    with fits.open(out / "t_g_stars.fits") as h:
        stars = Table(h["STARS"].data)
        assert len(stars) == 3 and list(stars["found"]) == [True, True, False]
        assert h["STAMPS"].data.shape == (int(np.sum(stars["selected"])), 25, 25)
        assert "no source detected" in stars["reason"][2]
    with fits.open(out / "t_g_stackpsf.fits") as h:
        psf = h[0].data
        assert h[0].header["PSFKIND"] == "STACK" and h[0].header["NSTARS"] == 2
        assert abs(float(psf.sum()) - 1) < 1e-5 and np.unravel_index(np.argmax(psf), psf.shape) == (12, 12)
    lyric = (out / "t_images.lyric").read_text()
    assert "t_g_stackpsf.fits" in lyric


def test_prepare_gaia_matches_the_stars_without_network(tmp_path, field, monkeypatch):
    _frame_file(tmp_path, field)
    _, w = field
    keep = [STARS[3], STARS[8]]
    sky = w.pixel_to_world([p[0] for p in keep], [p[1] for p in keep])
    calls = []

    def fake_gaia(ra, dec, radius, **kw):
        calls.append((ra, dec, radius))
        return Table({"ra": sky.ra.deg, "dec": sky.dec.deg})

    monkeypatch.setattr(stars_mod, "gaia_stars", fake_gaia)
    cfg = gsprep.pipeline.load_config(_toml(tmp_path, options="gaia = true\npsf_fit = false\nmask_nsigma = 3.0"))
    run = gsprep.pipeline.run_target(cfg, tmp_path / "out", figures=False)
    assert run.ok, run.errors
    assert len(calls) == 1
    ra, dec, radius = calls[0]
    assert abs(ra - RA) < 1e-3 and abs(dec - DEC) < 1e-3 and radius > 100 * SCALE * np.sqrt(2)
    stars = run.products["g"].stars
    sel = stars[np.asarray(stars["selected"])]
    assert len(sel) == 2
    assert sorted(np.round(sel["x"]).astype(int)) == sorted(int(p[0]) for p in keep)
    assert any(r.startswith("no reference star within") for r in stars["reason"])


# --------------------------------------------------------------------------
# img_cut cutposition (cut_center) and usemaxpix (recenter); generate_cutmask source_dia (target_radius)


def test_cut_center_moves_the_cut_and_keeps_the_target(field):
    img, w = field
    sky = w.pixel_to_world(*GALAXY)
    target = {"wcs": w, "ra": float(sky.ra.deg), "dec": float(sky.dec.deg), "pixel_scale": None}
    cfg = pipeline.PrepareConfig(name="t", ra=target["ra"], dec=target["dec"], r=10.0, bands={})
    spec = pipeline.BandSpec(file="g.fits", fwhm=3.0, cut_center=(110.0, 95.0))
    cut = pipeline._band_cut(img, cfg, target, spec)
    assert cut.origin == (110 - 20, 95 - 20)  # r = 10" at 0.5"/px: n = 20
    assert np.allclose(cut.center, (GALAXY[0] - 90, GALAXY[1] - 75), atol=1e-6)  # the target, off-centre
    assert (cut.ra, cut.dec) == (target["ra"], target["dec"])
    mask = gsprep.cutout_mask(cut, fwhm=3.0)
    cx, cy = (round(v) for v in cut.center)
    assert mask.mask[cy, cx] == 0  # the target found at its own pixel, not at the cut's centre
    far = pipeline.BandSpec(file="g.fits", fwhm=3.0, cut_center=(160.0, 160.0))
    with pytest.raises(ValueError, match="falls outside"):
        pipeline._band_cut(img, cfg, target, far)
    peak = pipeline._band_cut(img, dataclasses_replace(cfg, recenter="peak"),
                              dict(target, ra=target["ra"] + 1.5 / 3600), pipeline.BandSpec(file="g.fits", fwhm=3.0))
    assert np.hypot(peak.origin[0] + peak.center[0] - GALAXY[0], peak.origin[1] + peak.center[1] - GALAXY[1]) <= 1


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_toml_cut_keys(tmp_path):
    cfg = gsprep.pipeline.load_config(_toml(tmp_path, options='recenter = "peak"\ntarget_radius = 4.0',
                                            band="cut_center = [90, 80.5]"))
    assert cfg.recenter == "peak" and cfg.target_radius == 4.0 and cfg.bands["g"].cut_center == (90.0, 80.5)
    with pytest.raises(ValueError, match=r"\[options\] recenter"):
        gsprep.pipeline.load_config(_toml(tmp_path, options='recenter = "max"'))
    with pytest.raises(ValueError, match=r"\[bands.g\] cut_center must be \[x, y\]"):
        gsprep.pipeline.load_config(_toml(tmp_path, band="cut_center = 3"))


def test_star_catalog_with_stars_from_detected_is_an_error(tmp_path):
    Table({"x": [1.0], "y": [2.0]}).write(tmp_path / "stars.ecsv")
    with pytest.raises(ValueError, match='stars_from = "detected" would ignore it'):
        gsprep.pipeline.load_config(_toml(tmp_path, options='star_catalog = "stars.ecsv"\nstars_from = "detected"'))


def test_prepare_stars_from_starcord_list_is_the_catalogue(tmp_path, field):
    _frame_file(tmp_path, field)
    _, w = field
    listed = [STARS[9], STARS[4]]
    sky = w.pixel_to_world([p[0] for p in listed], [p[1] for p in listed])
    pairs = ", ".join(f"[{a:.8f}, {d:.8f}]" for a, d in zip(sky.ra.deg, sky.dec.deg, strict=True))
    cfg = gsprep.pipeline.load_config(_toml(tmp_path, options='stars_from = "catalog"\npsf_fit = false\nmask_nsigma = 3.0',
                                            criteria=f"starcord_list = [{pairs}]"))
    run = gsprep.pipeline.run_target(cfg, tmp_path / "out", figures=False)
    assert run.ok, run.errors
    stars = run.products["g"].stars
    assert len(stars) == 2 and all(stars["selected"]), list(stars["reason"])
    assert np.allclose(stars["given_x"], [p[0] for p in listed], atol=1e-6)
    assert "reference" not in stars.meta["funnel"]  # the list is the catalogue, not also a match reference
    assert run.products["g"].psf is None and run.products["g"].stamps.data.shape[0] == 2

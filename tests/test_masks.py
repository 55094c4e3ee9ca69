import time

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

import gsprep
from gsprep._bits import BAD, NEIGHBOUR, OFF_FRAME, SATURATED, USER
from gsprep.simulate import moffat_psf, sersic_image

from .conftest import data_path

SHAPE = (201, 201)
C = 100.0
NOISE = 1.0
FWHM = 3.0


def components(close=False):
    """Noiseless target and neighbours with known positions."""
    target = sersic_image(SHAPE, C, C, flux=3e4, r_eff=8, n=1.0, q=0.7, theta=0.3)
    neigh = {
        "star_bright": 2e4 * moffat_psf(SHAPE, 40.3, 150.6, fwhm=FWHM, beta=3.0),
        "star_faint": 600 * moffat_psf(SHAPE, 160.2, 40.7, fwhm=FWHM, beta=3.0),
        "star_mid": 4e3 * moffat_psf(SHAPE, 150.5, 160.1, fwhm=FWHM, beta=3.0),
        "galaxy2": sersic_image(SHAPE, 45.0, 45.0, flux=1.5e4, r_eff=6, n=1.0, q=0.5, theta=1.0),
    }
    if close:
        neigh["touching"] = 8e3 * moffat_psf(SHAPE, C + 13.0, C + 4.0, fwhm=FWHM, beta=3.0)
    return target, neigh


def frame(rng, close=False):
    target, neigh = components(close)
    img = target + sum(neigh.values()) + rng.normal(0, NOISE, SHAPE)
    return img, target, neigh


def test_neighbours_masked_and_target_kept(rng):
    img, _target, neigh = frame(rng)
    m = gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0)
    assert m.target_label > 0 and m.mask.dtype == np.uint8
    assert m.n_neighbours >= 4
    for name, model in neigh.items():
        # every pixel where a neighbour adds more than 1/5 of the noise: masks reach each source's light down
        # to wing_level = 0.1 of the noise, extrapolated from its own isophotes (issue 14 asks for less of the
        # cutout lost, so the farther, fainter wings stay)
        bright = model > 0.2 * NOISE
        # far wings of the bright neighbours that lie on the target's own segment are kept
        bright &= m.labels != m.target_label
        frac = m.mask[bright].mean()
        assert frac == 1.0, (name, frac, bright.sum())
    tgt = m.labels == m.target_label
    assert tgt[int(C), int(C)]
    assert m.mask[tgt].sum() == 0
    assert m.bits[int(150.6), int(40.3)] & NEIGHBOUR
    # growth from each source's own light loses less of the cutout than growth in proportion to its size
    sized = gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0, magnification=2.0)
    assert m.mask.mean() < 0.6 * sized.mask.mean(), (m.mask.mean(), sized.mask.mean())


def test_touching_neighbour_split_off_with_deblend(rng):
    img, _target, neigh = frame(rng, close=True)
    plain = gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0, detection="single")
    # one threshold, no deblending: the touching star is part of the target and stays unmasked
    assert plain.mask[int(C + 4), int(C + 13)] == 0
    core = neigh["touching"] > 0.2 * neigh["touching"].max()
    for m in (gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0, deblend=True, detection="single"),
              gsprep.cutout_mask(img, fwhm=FWHM)):  # the two-pass default splits it off by itself
        assert m.mask[int(C + 4), int(C + 13)] == 1
        assert m.mask[int(C), int(C)] == 0
        assert m.mask[core].all()


def test_bits_record_why(rng):
    img, _, _ = frame(rng)
    img[5, 100] = np.nan
    user = np.zeros(SHAPE, bool)
    user[190:, 190:] = True
    off = np.zeros(SHAPE, bool)
    off[:, :3] = True
    img[off] = np.nan
    m = gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0, bad=user, off_frame=off, saturation=150.0)
    assert m.bits[5, 100] == BAD
    assert m.bits[195, 195] & USER
    assert m.bits[50, 1] == OFF_FRAME
    assert m.bits[int(150.6), int(40.3)] & SATURATED  # bright star core
    np.testing.assert_array_equal(m.mask, (m.bits != 0).astype(np.uint8))


def test_keep_target_false_masks_target(rng):
    img, _, _ = frame(rng)
    m = gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0, keep_target=False)
    assert m.mask[int(C), int(C)] == 1 and m.target_label == 0


def test_no_target_at_centre(rng):
    _, _, neigh = frame(rng)
    img = sum(neigh.values()) + rng.normal(0, NOISE, SHAPE)
    with pytest.raises(gsprep.TargetNotFoundError, match="the target was not detected"):
        gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0)
    with pytest.warns(UserWarning, match="require_target=False"):
        m = gsprep.cutout_mask(img, fwhm=FWHM, nsigma=2.0, require_target=False)
    assert m.target_label == 0 and m.mask[int(150.6), int(40.3)] == 1


def test_bad_input(rng):
    with pytest.raises(ValueError, match="every pixel of the cutout is masked or non-finite"):
        gsprep.cutout_mask(np.full((30, 30), np.nan), fwhm=3.0)
    with pytest.raises(ValueError, match="every pixel of the cutout is masked"):
        gsprep.cutout_mask(np.ones((30, 30)), fwhm=3.0, bad=np.ones((30, 30), bool))
    with pytest.raises(ValueError, match="fwhm must be a finite number > 0"):
        gsprep.cutout_mask(rng.normal(size=(30, 30)), fwhm=0.0)
    with pytest.raises(ValueError, match="fwhm must be a finite number > 0"):
        gsprep.cutout_mask(rng.normal(size=(30, 30)), fwhm=-2.0)
    with pytest.raises(ValueError, match=r"bad must have the image's shape"):
        gsprep.cutout_mask(rng.normal(size=(30, 30)), fwhm=3.0, bad=np.zeros((3, 3)))


def test_ngc1316_real_frame_masks_tycho_stars(tmp_path):
    img = gsprep.read_image(data_path("comp.fits"), hdu=1)
    sky = gsprep.fit_sky(img.data, gsprep.sky_mask(img.data, fwhm=2.0), order=1)
    cut = gsprep.cutout(img.data - sky.background, img.wcs, 50.6738, -37.2083, 1000.0)
    m = gsprep.cutout_mask(cut, fwhm=2.0, nsigma=3.0, deblend=True)
    n = cut.n
    assert m.mask[n, n] == 0 and m.target_label > 0
    tyc = Table.read(data_path("tycho2_comp.ecsv"))
    x, y = cut.wcs.world_to_pixel(SkyCoord(tyc["ra"], tyc["dec"], unit="deg"))  # frame is FK4
    inside = (x >= 0) & (x < cut.data.shape[1]) & (y >= 0) & (y < cut.data.shape[0])
    assert inside.sum() >= 5
    for xi, yi in zip(x[inside], y[inside], strict=True):
        assert m.mask[round(yi), round(xi)] == 1, (xi, yi)
    p = tmp_path / "ngc1316.fits"
    sig = np.full(cut.data.shape, 1.0)
    gsprep.write_cutout(p, cut, m, sig, header=img.header)
    from astropy.io import fits

    with fits.open(p) as h:
        assert h["MASKBITS"].header["BIT_NBR"] == NEIGHBOUR
        np.testing.assert_array_equal(h["MASKBITS"].data, m.bits)
        np.testing.assert_array_equal(h["MASK"].data, m.mask)


def test_m13_crowded_target_elsewhere():
    img = gsprep.read_image(data_path("m13.fits"))
    core = np.unravel_index(np.nanargmax(img.data), img.data.shape)  # (y, x) in the cluster core
    data = img.data - np.nanmedian(img.data)
    t0 = time.perf_counter()
    m = gsprep.cutout_mask(data, fwhm=3.0, nsigma=3.0, center=(250.0, 40.0), target_radius=15)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30  # generous: a crash guard, not a timing test
    assert m.target_label != m.labels[core]
    assert m.mask[core] == 1
    tgt = m.labels == m.target_label
    ys, xs = np.nonzero(tgt)
    assert np.hypot(xs.mean() - 250, ys.mean() - 40) < 15


@pytest.mark.parametrize(("center", "match"), [
    (5, r"center must be a pair of numbers \(x, y\) in pixels, got 5"),
    ((1.0, 2.0, 3.0), r"center must be a pair of numbers \(x, y\)"),
    ("ab", r"center must be a pair of numbers \(x, y\)"),
    ((np.nan, 10.0), r"center must be finite pixel coordinates"),
    ((500.0, 10.0), r"center=\(x=500, y=10\) is outside the image of 41 x 41 pixels"),
    ((10.0, -3.0), r"center=\(x=10, y=-3\) is outside the image of 41 x 41 pixels"),
])
def test_cutout_mask_bad_center_is_one_clear_error(center, match):
    data = np.random.default_rng(3).normal(size=(41, 41))
    with pytest.raises(ValueError, match=match):
        gsprep.cutout_mask(data, fwhm=3.0, center=center)


def test_growth_follows_each_source_light_and_a_trail_stays_narrow(rng):
    """isophote_growth: a bright star is grown further than a faint one; a satellite trail by its width."""
    img = rng.normal(0.0, NOISE, SHAPE)
    img += sersic_image(SHAPE, C, C, flux=3e4, r_eff=8, n=1.0, q=0.7, theta=0.3)
    img += 3e4 * moffat_psf(SHAPE, 40.3, 150.6, fwhm=FWHM, beta=3.0)  # bright
    img += 100 * moffat_psf(SHAPE, 160.2, 130.7, fwhm=FWHM, beta=3.0)  # faint: peak 7 sigma
    img[20:23, 10:190] += 8.0  # a trail 3 px wide, 180 px long
    m = gsprep.cutout_mask(img, fwhm=FWHM)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]

    def ring(x, y, r0, r1):
        d = np.hypot(xx - x, yy - y)
        return (d >= r0) & (d <= r1)

    # the bright star's mask reaches past 8 px all round; the faint one's covers its core and stays within 10 px
    # (its light falls to 0.1 sigma at 5.4 px), on under a third of the area
    assert m.mask[ring(40.3, 150.6, 0, 8)].all()
    assert m.mask[ring(160.2, 130.7, 0, 2)].all() and not m.mask[ring(160.2, 130.7, 10, 15)].any()
    area = [m.mask[ring(x, y, 0, 25)].sum() for x, y in ((40.3, 150.6), (160.2, 130.7))]
    assert area[1] < area[0] / 3, area
    # the trail is masked along its length, its mask at most a few pixels wider than it (grown by its width,
    # not by its length)
    assert m.mask[21, 20:180].all()
    full = np.nonzero(m.mask[:60, 60:140].all(axis=1))[0]
    assert full.min() >= 14 and full.max() <= 28, full
    assert not m.mask[32:40, 60:140].any()

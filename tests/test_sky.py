import numpy as np
import pytest

import gsprep
from gsprep.simulate import add_stars, sersic_image


def cubic_sky(shape):
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    u, v = x / nx - 0.5, y / ny - 0.5
    return 50.0 + 8 * u - 5 * v + 20 * u**3 - 12 * u * v**2 + 9 * v**3 + 4 * u * v


def field(rng, shape=(400, 420), noise=1.0):
    sky = cubic_sky(shape)
    img = sersic_image(shape, 200, 210, flux=2e5, r_eff=12, n=1.5, q=0.7, theta=0.4)
    pos = rng.uniform(15, min(shape) - 15, size=(40, 2))
    img = add_stars(img, pos, rng.uniform(300, 5000, 40), fwhm=3.0)
    return sky, img + sky + rng.normal(0, noise, shape)


def test_cubic_sky_recovered_to_5_percent_of_noise(rng):
    sky, frame = field(rng)
    m = gsprep.sky_mask(frame, fwhm=3.0)
    assert m.mean() < 0.5
    fit = gsprep.fit_sky(frame, m, order=3)
    err = np.abs(fit.background - sky)
    assert err.max() < 0.05 * 1.0, err.max()
    assert fit.rms == pytest.approx(1.0, rel=0.05)
    assert fit.coeffs.shape == (10,) and fit.order == 3
    # without the source mask the galaxy biases the fit far more
    bad = gsprep.fit_sky(frame, None, order=3, nclip=0)
    assert np.abs(bad.background - sky).max() > 3 * err.max()


def test_sigma_clipping_removes_faint_sources(rng):
    shape = (300, 300)
    sky = cubic_sky(shape)
    pos = rng.uniform(5, 295, size=(300, 2))
    faint = add_stars(np.zeros(shape), pos, np.full(300, 150.0), fwhm=2.5, half=6)
    frame = sky + faint + rng.normal(0, 1.0, shape)
    clipped = gsprep.fit_sky(frame, order=3, nclip=5)
    plain = gsprep.fit_sky(frame, order=3, nclip=0)
    e_clip = np.abs(clipped.background - sky).mean()
    e_plain = np.abs(plain.background - sky).mean()
    assert e_clip < 0.5 * e_plain  # measured about 0.3


def test_stack_equals_single_bands(rng):
    s1 = field(rng)[1]
    s2 = 3.0 * field(rng)[1] + 7.0
    m1, m2 = gsprep.sky_mask(s1, fwhm=3.0), gsprep.sky_mask(s2, fwhm=3.0)
    both = gsprep.fit_sky(np.stack([s1, s2]), np.stack([m1, m2]), order=3)
    one = gsprep.fit_sky(s1, m1, order=3)
    two = gsprep.fit_sky(s2, m2, order=3)
    assert both.background.shape == (2,) + s1.shape
    np.testing.assert_allclose(both.background[0], one.background, atol=1e-4)
    np.testing.assert_allclose(both.background[1], two.background, atol=3e-4)
    np.testing.assert_allclose(both.rms, [one.rms, two.rms], rtol=1e-5)


def test_nonfinite_and_masked_pixels_have_no_weight(rng):
    sky = cubic_sky((200, 200))
    frame = sky + rng.normal(0, 1.0, sky.shape)
    ref = gsprep.fit_sky(frame, order=3)
    hit = frame.copy()
    hit[50:80, 50:80] = 1e6
    hit[10, :] = np.nan
    m = np.zeros(sky.shape, bool)
    m[50:80, 50:80] = True
    out = gsprep.fit_sky(hit, m, order=3)
    assert np.abs(out.background - sky).max() < 0.1
    assert np.abs(out.background - ref.background).max() < 0.1


def test_constant_and_median_sky(rng):
    frame = 12.0 + rng.normal(0, 2.0, (100, 120))
    frame[40:50, 40:50] += 500
    c = gsprep.fit_sky(frame, order=0)
    med = gsprep.fit_sky(frame, method="median")
    assert c.background.std() < 1e-5 and c.coeffs.shape == (1,)
    assert c.coeffs[0] == pytest.approx(12.0, abs=0.1)
    assert med.order == 0 and med.method == "median"
    assert med.background[0, 0] == pytest.approx(12.0, abs=0.1)
    assert med.rms == pytest.approx(2.0, rel=0.1)


def test_fit_sky_bad_input():
    with pytest.raises(ValueError, match="too few unmasked finite pixels"):
        gsprep.fit_sky(np.full((20, 20), np.nan))
    with pytest.raises(ValueError, match="order must be an integer"):
        gsprep.fit_sky(np.ones((20, 20)), order=-1)
    with pytest.raises(ValueError, match="mask must have shape"):
        gsprep.fit_sky(np.ones((20, 20)), np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="data must be a 2-D image"):
        gsprep.fit_sky(np.ones(20))
    with pytest.raises(ValueError, match="fwhm must be a finite number > 0"):
        gsprep.sky_mask(np.ones((20, 20)), fwhm=0)


def test_sky_mask_grows_with_source_size(rng):
    frame = rng.normal(0, 1.0, (200, 200))
    frame = add_stars(frame, [(50, 50), (150, 150)], [200.0, 2e5], fwhm=3.0, half=40)
    m = gsprep.sky_mask(frame, fwhm=3.0)
    faint = m[30:71, 30:71].sum()
    bright = m[110:191, 110:191].sum()
    assert faint > 0 and bright > 4 * faint
    assert m[50, 50] and m[150, 150]
    tight = gsprep.sky_mask(frame, fwhm=3.0, max_grow=1)
    assert tight.sum() < m.sum()
    grown = gsprep.sky_mask(frame, fwhm=3.0, addgrow=5)
    assert grown.sum() > m.sum()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"order": None}, TypeError, "order must be an integer between 0 and 12, got None"),
    ({"order": 2.5}, ValueError, "order must be an integer between 0 and 12, got 2.5"),
    ({"order": "3"}, TypeError, "order must be an integer between 0 and 12, got '3'"),
    ({"order": True}, TypeError, "order must be an integer between 0 and 12, got True"),
    ({"order": 13}, ValueError, "order must be an integer between 0 and 12, got 13"),
    ({"nclip": 2.7}, ValueError, "nclip must be an integer >= 0, got 2.7"),
    ({"nclip": -1}, ValueError, "nclip must be an integer >= 0, got -1"),
    ({"nclip": None}, TypeError, "nclip must be an integer >= 0, got None"),
    ({"clip_sigma": "3"}, TypeError, "clip_sigma must be a positive number"),
])
def test_fit_sky_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        gsprep.fit_sky(np.ones((20, 20)), **kwargs)


def test_fit_sky_accepts_whole_floats():
    fit = gsprep.fit_sky(np.ones((20, 20)), order=1.0, nclip=2.0)
    assert fit.order == 1 and isinstance(fit.order, int)

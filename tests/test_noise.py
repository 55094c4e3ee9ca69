import numpy as np
import pytest

import gsprep


def test_sigma_image_equals_formula_count_rate():
    data = np.array([[0.0, 10.0], [-4.0, 250.0]])
    sky = np.array([[1.0, 2.0], [3.0, 4.0]])
    s = gsprep.sigma_image(data, exptime=50.0, gain=2.0, sky=sky, sky_rms=0.3, fac1=1.5, fac2=2.0)
    want = np.sqrt(1.5 * np.abs(data + sky) / (2.0 * 50.0) + 2.0 * 0.3**2)
    np.testing.assert_allclose(s, want, rtol=1e-12)
    assert s[0, 0] == pytest.approx(np.sqrt(1.5 / 100 + 0.18))


def test_sigma_image_counts_ignores_exptime():
    data = np.full((3, 3), 100.0)
    s = gsprep.sigma_image(data, exptime=None, gain=4.0, sky_rms=1.0, unit="counts")
    np.testing.assert_allclose(s, np.sqrt(100 / 4 + 1))
    s2 = gsprep.sigma_image(data, exptime=30.0, gain=4.0, sky_rms=1.0, unit="counts")
    np.testing.assert_allclose(s2, s)


def test_sigma_from_weight():
    w = np.array([[4.0, 0.0], [-1.0, np.nan]])
    s, bad = gsprep.sigma_from_weight(w)
    assert s[0, 0] == 0.5 and np.isinf(s[0, 1]) and np.isinf(s[1, 0]) and np.isinf(s[1, 1])
    assert bad.tolist() == [[False, True], [True, True]]


def test_sigma_image_bad_input():
    d = np.ones((4, 4))
    with pytest.raises(ValueError, match="exptime must be a finite number > 0, got -10"):
        gsprep.sigma_image(d, exptime=-10, sky_rms=1.0)
    with pytest.raises(TypeError, match="exptime must be a positive number"):
        gsprep.sigma_image(d, exptime=None, sky_rms=1.0)
    with pytest.raises(ValueError, match="gain must be a finite number > 0"):
        gsprep.sigma_image(d, exptime=1.0, gain=0.0, sky_rms=1.0)
    with pytest.raises(ValueError, match="sky_rms must be finite and >= 0"):
        gsprep.sigma_image(d, exptime=1.0, sky_rms=-1.0)
    with pytest.raises(ValueError, match="unit must be one of"):
        gsprep.sigma_image(d, exptime=1.0, sky_rms=1.0, unit="Jy")
    with pytest.raises(ValueError, match="does not match data"):
        gsprep.sigma_image(d, exptime=1.0, sky=np.ones((3, 3)), sky_rms=1.0)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sky": np.nan}, ValueError, r"sky must be finite \(the sky that was subtracted.*got nan"),
    ({"sky": np.array([[0.0, np.inf], [0.0, 0.0]])}, ValueError, "sky must be finite.* it is not at 1 of 4"),
    ({"sky_rms": np.nan}, ValueError, "sky_rms must be finite and >= 0, got nan"),
    ({"sky_rms": "0.1"}, TypeError, "sky_rms must be a real number or array"),
    ({"sky": "1"}, TypeError, "sky must be a real number or array"),
    ({"sky_rms": 0.0}, ValueError, r"sigma would be 0 at 2 pixel\(s\) \(data \+ sky = 0 there"),
    ({"sky_rms": 1.0, "fac2": 0.0}, ValueError, r"sigma would be 0 at 2 pixel\(s\)"),
])
def test_sigma_image_never_returns_nan_or_zero_silently(kwargs, error, match):
    d = np.array([[0.0, 4.0], [0.0, 9.0]])
    with pytest.raises(error, match=match):
        gsprep.sigma_image(d, exptime=1.0, **{"sky_rms": 1.0, **kwargs})


def test_sigma_image_zero_rms_is_fine_where_data_carry_noise():
    s = gsprep.sigma_image(np.array([[4.0, 9.0]]), exptime=1.0, sky_rms=0.0)
    np.testing.assert_allclose(s, [[2.0, 3.0]])


def test_docstring_examples_run():
    import doctest

    import gsprep.noise

    res = doctest.testmod(gsprep.noise, optionflags=doctest.NORMALIZE_WHITESPACE, extraglobs={"np": np})
    assert res.attempted >= 1 and res.failed == 0

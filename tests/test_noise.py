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

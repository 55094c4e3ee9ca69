"""Skies a polynomial cannot follow: per-region and mesh skies, and the residual check (issue 13, item 4)."""

import warnings

import numpy as np
import pytest

from gsprep.pipeline import load_config
from gsprep.simulate import demo_frame
from gsprep.sky import SkyResidualWarning, fit_sky, pixel_noise, sky_mask, sky_residual_check

from .test_pipeline import write_config

N = 300


@pytest.fixture(scope="module")
def stepped():
    """A demo frame (noise 0.3 per pixel) plus two readout halves with their own sky ramps."""
    frame, _ = demo_frame(fwhm=3.0, shape=(N, N), n_stars=30, seed=2)
    y, x = np.mgrid[:N, :N] / N
    step = np.where(x < 0.5, 30 + 80 * y, -20 + 150 * (1 - y) + 60 * x)
    data = frame + step
    return data, sky_mask(data, fwhm=3.0)


def test_pixel_noise_measures_the_noise_under_any_smooth_structure():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:200, :200]
    img = 50 * np.sin(x / 15.0) + 0.01 * y**2 + rng.normal(0, 2.0, (200, 200))
    assert pixel_noise(img) == pytest.approx(2.0, rel=0.05)


def test_a_polynomial_on_a_stepped_sky_warns(stepped):
    data, m = stepped
    sky = fit_sky(data, m, order=2)
    with pytest.warns(SkyResidualWarning, match=r"is \d+\.\dx the pixel-to-pixel noise"):
        rms, pp = sky_residual_check(data, sky, m)
    assert rms > 10 * pp


def test_a_sky_per_readout_half_follows_the_step(stepped):
    data, m = stepped
    halves = [(0, N // 2, 0, N), (N // 2, N, 0, N)]
    sky = fit_sky(data, m, order=2, regions=halves)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkyResidualWarning)
        rms, pp = sky_residual_check(data, sky, m)
    assert rms < 1.5 * pp  # the residual is the pixel noise
    assert sky.method == "poly/regions"


def test_mesh_sky_follows_what_a_low_order_polynomial_cannot():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:N, :N]
    sky_true = 100 + 8 * np.sin(x / 40.0) * np.cos(y / 55.0)  # scattered-light ripples
    data = sky_true + rng.normal(0, 1.0, (N, N))
    poly = fit_sky(data, None, order=2)
    mesh = fit_sky(data, None, method="mesh", box=24)
    # measured: 1.29 (mesh) against 3.63 (order-2 polynomial) in sky units, noise 1
    assert np.std(mesh.background - sky_true) < 0.4 * np.std(poly.background - sky_true)
    assert mesh.coeffs.size == 0 and mesh.method == "mesh"


@pytest.mark.parametrize(("regions", "match"), [
    ([(0, 100, 0, N)], "leave .* pixels of the frame without a sky"),
    ([(0, 400, 0, N)], r"regions\[0\] .* is not a box inside"),
    ([(0, 1, 2)], r"regions\[0\] must be 4 integers"),
])
def test_bad_regions_are_refused(stepped, regions, match):
    data, m = stepped
    with pytest.raises(ValueError, match=match):
        fit_sky(data, m, regions=regions)


def test_sky_options_in_the_config(tmp_path):
    cfg = load_config(write_config(tmp_path, options='sky_method = "mesh"\nsky_box = 48\n'
                                                     "sky_regions = [[0, 150, 0, 300], [150, 300, 0, 300]]\n"))
    assert cfg.sky_method == "mesh" and cfg.sky_box == 48
    assert cfg.sky_regions == ((0, 150, 0, 300), (150, 300, 0, 300))
    with pytest.raises(ValueError, match=r"config: \[options\] sky_regions must be a list of"):
        load_config(write_config(tmp_path, options="sky_regions = [1, 2]\n"))
    with pytest.raises(ValueError, match=r"config: \[options\] sky_method must be one of"):
        load_config(write_config(tmp_path, options='sky_method = "spline"\n'))


def test_prepare_with_its_default_sky_warns_on_a_stepped_frame(tmp_path, monkeypatch):
    """The check runs on the path a user gets: prepare with default options on a frame with readout halves."""
    import gsprep
    import gsprep.pipeline
    from gsprep.pipeline import prepare_target

    from .test_pipeline import write_frames

    monkeypatch.setattr(gsprep.pipeline, "_psfs", lambda stamps, k, degree=0: {})  # the sky is what is tested
    write_frames(tmp_path, bands=(("g", 2.6),))
    cfg = load_config(write_config(tmp_path, bands=(("g", 2.6),)))
    img = gsprep.read_image(cfg.bands["g"].file)
    y, x = np.mgrid[: img.data.shape[0], : img.data.shape[1]]
    stepped_img = gsprep.io.Image(**{**img.__dict__, "data": img.data + np.where(x < 150, 0.0, 40.0)})
    with pytest.warns(SkyResidualWarning, match="band g: the sky residual"):
        prepare_target({"g": stepped_img}, cfg.ra, cfg.dec, cfg)
    with warnings.catch_warnings():  # and the same frame without the step: no warning
        warnings.simplefilter("error", SkyResidualWarning)
        prepare_target({"g": img}, cfg.ra, cfg.dec, cfg)

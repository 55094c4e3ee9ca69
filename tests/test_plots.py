"""Figures: a colorbar with a unit on every image panel, N/E arrows and a scale bar from the cutout's WCS,
the sky residual shown as it is, the stars figure's labels, and ``gsprep psf`` writing its figures."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import gsprep
from gsprep.cli import build_parser, main
from gsprep.plots import (
    fig_cutout,
    fig_psf,
    fig_psfs,
    fig_sky,
    fig_stars,
    north_east_angles,
)
from gsprep.simulate import demo_frame

S = 0.4 / 3600  # 0.4 arcsec pixels, degrees


def rot(deg):
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def make_wcs(cd, ctype=("RA---TAN", "DEC--TAN"), crval=(150.0, 2.0), shape=(61, 61)):
    w = WCS(naxis=2)
    w.wcs.ctype = list(ctype)
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    w.wcs.cd = cd
    w.pixel_shape = (shape[1], shape[0])
    return w


def angle_diff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


# (CD matrix, expected North, expected East): angles counter-clockwise from +x, origin="lower".
# North up / East left is the usual sky; "cd @ rot(t)" turns the image's content by -t, so N and E turn by -t.
WCS_CASES = {
    "usual": (S * np.diag([-1.0, 1.0]), 90.0, 180.0),
    "rotated 30": (S * np.diag([-1.0, 1.0]) @ rot(30), 60.0, 150.0),
    "rotated -120": (S * np.diag([-1.0, 1.0]) @ rot(-120), 210.0, 300.0),
    "flipped (East right)": (S * np.eye(2), 90.0, 0.0),
    "flipped, rotated 30": (S * np.eye(2) @ rot(30), 60.0, -30.0),
    "North down": (S * np.diag([-1.0, -1.0]), -90.0, 180.0),
}


@pytest.mark.parametrize("case", list(WCS_CASES))
def test_north_east_angles(case):
    cd, north, east = WCS_CASES[case]
    n, e = north_east_angles(make_wcs(cd))
    assert angle_diff(n, north) < 0.01 and angle_diff(e, east) < 0.01, (n, e)


def test_north_east_angles_dec_first_axis_order_and_errors():
    # axis 1 is Dec (North = +x), axis 2 is RA whose intermediate coordinate grows with -y (East down)
    w = make_wcs(S * np.diag([1.0, -1.0]), ctype=("DEC--TAN", "RA---TAN"), crval=(2.0, 150.0))
    n, e = north_east_angles(w)
    assert angle_diff(n, 0.0) < 0.01 and angle_diff(e, -90.0) < 0.01, (n, e)
    # near the pole the steps still give the right directions
    n, e = north_east_angles(make_wcs(S * np.diag([-1.0, 1.0]), crval=(10.0, 89.99)), 30.0, 30.0)
    assert angle_diff(n, 90.0) < 0.5 and angle_diff(e, 180.0) < 0.5, (n, e)
    with pytest.raises(ValueError, match="wcs: a celestial WCS"):
        north_east_angles(None)


def _colorbars(fig):
    return [im.colorbar for ax in fig.axes for im in ax.images if im.colorbar is not None]


def assert_unit_colorbars(fig, units=None):
    """Every image on every axes is explained by a colorbar (same norm and colormap) whose label has [unit]."""
    cbars = _colorbars(fig)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert image_axes
    labels = []
    for ax in image_axes:
        for im in ax.images:
            match = [cb for cb in cbars if cb.mappable.norm is im.norm and cb.mappable.cmap.name == im.cmap.name]
            assert match, f"an image in axes {ax.get_title()!r} has no colorbar"
            label = match[0].ax.get_ylabel()
            assert re.search(r"\[[^\]]+\]", label), f"colorbar label {label!r} has no [unit]"
            labels.append(label)
    for unit in units or ():
        assert any(f"[{unit}]" in lab for lab in labels), (unit, labels)
    return labels


def frame_and_sky(shape=(96, 128), rms=1.0, seed=0):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    sky = 50.0 + 0.02 * x
    frame = sky + 0.8 * rms * (x / nx - 0.5) + rng.normal(0, rms, shape)  # a left-over gradient of +-0.4 rms
    frame += 300 * np.exp(-((x - 40) ** 2 + (y - 50) ** 2) / 18.0)
    return frame, sky


def test_fig_sky_residual_panel_is_frame_minus_sky_stretched_about_zero():
    frame, sky = frame_and_sky()
    fig = fig_sky(frame, sky, rms=1.0, unit="counts")
    panels = [ax for ax in fig.axes if ax.images]  # frame, sky model, frame - sky, binned frame - sky
    assert len(panels) == 4 and panels[2].get_title().startswith("frame - sky (")
    resid = panels[2].images[0]
    np.testing.assert_array_equal(resid.get_array(), frame - sky)
    assert resid.norm.vmin == -5.0 and resid.norm.vmax == 5.0  # symmetric about 0, in units of rms=1
    # the frame panel is the frame, not the residual (the issue: the two looked identical)
    np.testing.assert_array_equal(panels[0].images[0].get_array(), frame)
    # the binned panel shows the left-over gradient, far above its own noise (~0.03 here)
    binned = np.asarray(panels[3].images[0].get_array())
    assert binned.shape == (96 // 4, 128 // 4)
    assert np.isfinite(binned).mean() > 0.8  # only the blocks on the bright source are left out
    assert np.nanmean(binned[:, -4:]) - np.nanmean(binned[:, :4]) > 0.5  # true difference 0.8 * 28/32 = 0.7
    assert panels[3].images[0].norm.vmin == -panels[3].images[0].norm.vmax
    assert_unit_colorbars(fig, units=["counts"])


def test_fig_sky_noise_estimated_when_not_given_and_mask_outlined():
    frame, sky = frame_and_sky(rms=2.0)
    mask = np.zeros(frame.shape, bool)
    mask[40:60, 30:50] = True
    fig = fig_sky(frame, sky, mask)
    resid = next(ax for ax in fig.axes if ax.get_title().startswith("frame - sky (")).images[0]
    assert resid.norm.vmax == pytest.approx(10.0, rel=0.1)  # 5 x the MAD noise of 2
    assert resid.norm.vmin == -resid.norm.vmax
    assert_unit_colorbars(fig, units=["image units"])


def _cut(rotation, with_wcs=True):
    w = make_wcs(S * np.diag([-1.0, 1.0]) @ rot(rotation), shape=(201, 201))
    y, x = np.mgrid[:201, :201]
    data = 100 * np.exp(-((x - 100) ** 2 + (y - 100) ** 2) / 30.0) + np.random.default_rng(1).normal(0, 1, x.shape)
    cut = gsprep.cutout(data, w, 150.0, 2.0, 16.0)
    if not with_wcs:
        cut = SimpleNamespace(data=cut.data, center=cut.center, wcs=None, pixel_scale=cut.pixel_scale)
    return cut


def _arrow(ax, name):
    arrows = [t for t in ax.texts if t.get_gid() == f"compass-{name}"]
    assert len(arrows) == 1
    (x1, y1), (x0, y0) = arrows[0].xy, arrows[0].xyann
    return np.degrees(np.arctan2(y1 - y0, x1 - x0))


@pytest.mark.parametrize("rotation", [0.0, 30.0, 135.0])
def test_fig_cutout_arrows_follow_the_wcs(rotation):
    cut = _cut(rotation)
    fig = fig_cutout(cut, np.zeros(cut.data.shape, bool), unit="cR")
    ax = fig.axes[0]
    assert angle_diff(_arrow(ax, "N"), 90.0 - rotation) < 0.1
    assert angle_diff(_arrow(ax, "E"), 180.0 - rotation) < 0.1
    # the scale bar: a round number of arcsec, its length in pixels = arcsec / pixel scale
    bar = [line for line in ax.lines if line.get_gid() == "scale-bar"]
    assert len(bar) == 1
    length = np.ptp(bar[0].get_xdata())
    arcsec = round(length * cut.pixel_scale, 6)
    assert arcsec in (1, 2, 5, 10, 20, 50) and 0.1 < length / cut.data.shape[1] < 0.3
    assert any(t.get_text() == f'{arcsec:g}"' for t in ax.texts)
    assert_unit_colorbars(fig, units=["counts/s"])


def test_fig_cutout_without_wcs_says_so():
    cut = _cut(0.0, with_wcs=False)
    fig = fig_cutout(cut, np.zeros(cut.data.shape, bool))
    ax = fig.axes[0]
    assert not [t for t in ax.texts if (t.get_gid() or "").startswith("compass")]
    assert any("no WCS" in t.get_text() for t in ax.texts)
    assert_unit_colorbars(fig, units=["image units"])


def fake_fit(n=5, size=15, k=1, seed=0):
    """Stamps and a result-like record: Gaussian stars at known positions, star 2 flagged as a chi2 outlier."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size * k, :size * k]
    c = (size * k - 1) / 2
    psf = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * (1.2 * k) ** 2))
    psf /= psf.sum()
    centers = np.full((n, 2), (size - 1) / 2) + rng.uniform(-0.3, 0.3, (n, 2))
    fluxes = np.linspace(1e3, 5e3, n)
    sky = np.full(n, 2.0)
    flags = np.zeros(n, int)
    flags[2] = 1
    chi2 = np.array([1.0, 1.2, 9.0, 0.9, 1.1])[:n]
    result = SimpleNamespace(psf=psf, centers=centers, fluxes=fluxes, sky=sky, chi2=chi2, flags=flags,
                             oversampling=k, converged=True, n_iter=3, heldout_chi2=1.1, residual_flux=0.001,
                             fwhm=2.8, ellipticity=0.01, reg_kind="smooth", reg_strength=0.01, cv_scores=None)
    model = gsprep.psf_model_stamps(result, size=size)
    sigma = np.full(model.shape, 1.5)
    data = model + rng.normal(0, 1.5, model.shape)
    mask = np.zeros(model.shape, bool)
    mask[0, :3, :3] = True
    stamps = SimpleNamespace(data=data, sigma=sigma, mask=mask, ids=np.arange(10, 10 + n))
    return stamps, result


def test_fig_stars_labels_and_colorbars():
    stamps, result = fake_fit()
    fig = fig_stars(stamps, result, title="t")
    labels = {t.get_text(): t.get_color() for ax in fig.axes for t in ax.texts if "chi2" in t.get_text()}
    assert len(labels) == 5
    worst = [lab for lab in labels if lab.startswith("id 12")]
    assert worst == ["id 12   chi2 9.00   chi2 outlier"] and labels[worst[0]] == "red"
    assert labels["id 10   chi2 1.00"] == "darkgreen"
    # worst first: the first data panel is star 12's
    first = next(ax for ax in fig.axes if ax.texts and "chi2" in ax.texts[0].get_text())
    assert first.texts[0].get_text().startswith("id 12")
    assert "4 stars fitted, 1 flagged" in fig._suptitle.get_text()
    labs = assert_unit_colorbars(fig, units=["sigma"])
    assert any("[fraction of star flux per pixel]" in lab for lab in labs)
    # the data panel of a star is (data - sky) / flux; the residual hides masked pixels
    panels = [ax for ax in fig.axes if ax.images]  # data, model, residual of each star in display order
    j = list(np.argsort(-result.chi2, kind="stable")).index(0)  # where star 0 (id 10) is shown
    np.testing.assert_allclose(panels[3 * j].images[0].get_array(), (stamps.data[0] - 2.0) / 1e3)
    assert np.isnan(np.asarray(panels[3 * j + 2].images[0].get_array())[:3, :3]).all()


def test_fig_stars_more_stars_than_panels():
    stamps, result = fake_fit()
    fig = fig_stars(stamps, result, max_stars=3)
    shown = sorted(t.get_text().split()[1] for ax in fig.axes for t in ax.texts if "chi2" in t.get_text())
    assert shown == ["12", "13", "14"]  # the worst (12, chi2 9), the best (13, chi2 0.9) and the middle (14)
    assert "3 of 5 shown" in fig._suptitle.get_text()


def test_fig_psf_and_psfs_colorbars_in_flux_fraction():
    _, result = fake_fit(k=2)
    fig = fig_psf(result)
    labs = assert_unit_colorbars(fig)
    assert labs == ["PSF [fraction of flux per sub-pixel]"]
    _, r1 = fake_fit(k=1)
    fig = fig_psfs({"g": result, "r": r1})
    labs = assert_unit_colorbars(fig)
    assert sorted(labs) == ["PSF [fraction of flux per pixel]", "PSF [fraction of flux per sub-pixel]"]


def test_assert_unit_colorbars_can_fail():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    im = ax.imshow(np.zeros((3, 3)))
    with pytest.raises(AssertionError, match="has no colorbar"):
        assert_unit_colorbars(fig)
    fig.colorbar(im, ax=ax).set_label("flux")
    with pytest.raises(AssertionError, match="no \\[unit\\]"):
        assert_unit_colorbars(fig)


def test_figures_save_png(tmp_path):
    frame, sky = frame_and_sky()
    path = tmp_path / "sky.png"
    fig_sky(frame, sky, save=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sky.png"]  # written atomically: no temporary left


def test_psf_command_writes_figures(tmp_path, capsys):
    data, header = demo_frame(fwhm=2.6, seed=0, shape=(300, 300), n_stars=30)
    frame = tmp_path / "f_g.fits"
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(frame)
    out = tmp_path / "g_psf.fits"
    assert main(["psf", str(frame), "--fwhm", "2.6", "--size", "21", "--out", str(out)]) == 0
    for name in ("sky", "funnel", "stars", "psf"):
        png = tmp_path / f"g_psf_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
    assert "g_psf_{sky,funnel,stars,psf}.png" in capsys.readouterr().out
    # a figure already there is refused before any work, naming the file and the flags
    (tmp_path / "h_sky.png").write_bytes(b"x")
    assert main(["psf", str(frame), "--fwhm", "2.6", "--size", "21", "--out", str(tmp_path / "h.fits")]) == 2
    err = capsys.readouterr().err
    assert "h_sky.png" in err and "--overwrite" in err and "--no-figures" in err
    assert not (tmp_path / "h.fits").exists() and (tmp_path / "h_sky.png").read_bytes() == b"x"
    args = build_parser().parse_args(["psf", str(frame), "--fwhm", "2.6", "--out", "x.fits", "--no-figures"])
    assert args.no_figures is True

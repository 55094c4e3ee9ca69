import dataclasses
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import gsprep
from gsprep.psf import fit_stars

S = 15  # stamp size shared by the tests (one compilation)
N = 24
K = 2


def gauss_int(shape, x0, y0, s, q=1.0, ov=8):
    ny, nx = shape
    off = (np.arange(ov) + 0.5) / ov - 0.5
    xs = (np.arange(nx)[:, None] + off).ravel() - x0
    ys = (np.arange(ny)[:, None] + off).ravel() - y0
    xx, yy = np.meshgrid(xs, ys)
    g = np.exp(-0.5 * (xx**2 / s**2 + yy**2 / (s * q) ** 2)) / (2 * np.pi * s * s * q)
    return g.reshape(ny, ov, nx, ov).mean((1, 3))


def known_shape(shape, x, y, scale=1.0):
    """Not a Moffat: an elliptical Gaussian core, a broad halo, and an off-centre bump."""
    return (0.6 * gauss_int(shape, x, y, 1.0 * scale, 0.8) + 0.3 * gauss_int(shape, x, y, 2.2 * scale)
            + 0.1 * gauss_int(shape, x + 1.2 * scale, y, 1.1 * scale))


def truth(k=K):
    kk = k * S
    c = (kk - 1) / 2.0
    t = known_shape((kk, kk), c, c, scale=k)
    t /= t.sum()
    cx = (t.sum(0) * np.arange(kk)).sum() - c  # the bump moves the centroid: gsprep pins the centroid
    from scipy import ndimage

    return ndimage.shift(t, (0, -cx), order=5, mode="constant"), cx / k


def stars(rng, n=N, noise=0.0, sky=0.0):
    c = S // 2
    xy = c + rng.uniform(-0.5, 0.5, (n, 2))
    flux = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n))
    true = np.stack([f * known_shape((S, S), x, y) for (x, y), f in zip(xy, flux, strict=True)])
    sigma = np.sqrt(10.0**2 + true)
    data = true + sky + noise * rng.normal(0, 1, true.shape) * sigma
    return data, sigma, xy, flux


def fit(data, sigma, masks=None, **kw):
    opts = dict(oversampling=K, a_sky=1.0)
    opts.update(kw)
    return gsprep.fit_epsf(data, sigma, masks, **opts)


def test_noiseless_known_shape_and_centres(rng):
    data, sigma, xy, flux = stars(rng)
    res = fit(data, sigma)
    assert res.psf.shape == (K * S, K * S)
    assert res.psf.sum() == pytest.approx(1.0, abs=1e-6)
    t, shift = truth()
    err = (res.psf - t) / t.max()
    assert np.sqrt(np.mean(err**2)) < 1e-3
    assert np.abs(err).max() < 5e-3  # the sub-pixel frequencies no star samples come from the regulariser
    # centres: truth positions moved by the PSF's centroid offset (the PSF is centroid-pinned)
    d = res.centers - xy - np.array([shift, 0.0])
    assert np.abs(d).max() < 0.02
    np.testing.assert_allclose(res.fluxes, flux, rtol=5e-3)
    assert res.native_psf.shape == (S, S) and res.native_psf.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(res.flags == 0) and np.isfinite(res.loss_history).all()


def test_masked_pixels_do_not_change_the_answer(rng):
    data, sigma, _, _ = stars(rng)
    masks = rng.uniform(size=data.shape) < 0.1
    ref = fit(data, sigma, masks, regularization=("smooth", 0.01))  # the same regularisation for both
    hit = data.copy()
    hit[masks] = 1e6  # garbage under the mask
    res = fit(hit, sigma, masks, regularization=("smooth", 0.01))
    assert np.abs(res.psf - ref.psf).max() < 1e-5 * ref.psf.max()
    nan = data.copy()
    nan[0, 0, 0] = np.nan  # non-finite is excluded too
    both = masks.copy()
    both[0, 0, 0] = True
    a = fit(nan, sigma, masks, regularization=("smooth", 0.01))
    b = fit(data, sigma, both, regularization=("smooth", 0.01))
    assert np.abs(a.psf - b.psf).max() < 1e-5 * b.psf.max()
    # and losing 10% of the pixels of noiseless stars barely moves the PSF
    full = fit(data, sigma, regularization=("smooth", 0.01))
    assert np.abs(full.psf - ref.psf).max() < 5e-3 * ref.psf.max()


def test_batched_bands_equal_single_bands(rng):
    d1, s1, _, _ = stars(rng, noise=1.0, sky=3.0)
    d2, s2, _, _ = stars(rng, noise=1.0, sky=-2.0)
    # band 2 has fewer stars: pad with fully masked stamps
    m = np.zeros((2, N, S, S), bool)
    m[1, -4:] = True
    kw = dict(oversampling=K)  # default priors: the configuration users run
    both = gsprep.fit_epsf(np.stack([d1, d2]), np.stack([s1, s2]), m, **kw)
    one = gsprep.fit_epsf(d1, s1, **kw)
    two = gsprep.fit_epsf(d2, s2, m[1], **kw)
    assert both.psf.shape == (2, K * S, K * S)
    # equal up to float32 rounding (vmap reorders sums); far below the PSF's own noise
    np.testing.assert_allclose(both.psf[0], one.psf, atol=1e-4 * one.psf.max())
    np.testing.assert_allclose(both.psf[1], two.psf, atol=1e-4 * two.psf.max())
    assert np.all(both.flags[1, -4:] == 2) and np.all(both.flags[1, :-4] & 2 == 0)
    # one band of the stack, with its own report (bands may stop after different numbers of steps)
    b1 = both.band(1, N - 4)
    assert b1.fluxes.shape == (N - 4,) and len(b1.loss_history) == b1.n_iter == both.n_iter[1]
    assert b1.heldout_chi2 == pytest.approx(two.heldout_chi2, rel=1e-3) and b1.reg_kind == two.reg_kind
    assert b1.fwhm == pytest.approx(two.fwhm, rel=1e-3) and np.isfinite(b1.fwhm)


def test_star_count_padding_does_not_change_the_answer(rng, monkeypatch):
    import gsprep.psf.fit as epsf

    assert [epsf.bucket(n) for n in (1, 8, 9, 13, 17, 24, 25, 49, 100)] == [8, 8, 12, 16, 24, 24, 32, 64, 128]
    data, sigma, _, _ = stars(rng, n=N - 3, noise=1.0)  # 21 stars: fitted padded to 24
    padded = gsprep.fit_epsf(data, sigma, oversampling=K)
    monkeypatch.setattr(epsf, "bucket", lambda n: n)
    exact = gsprep.fit_epsf(data, sigma, oversampling=K)
    assert padded.psf.shape == exact.psf.shape and padded.fluxes.shape == (N - 3,)
    np.testing.assert_allclose(padded.psf, exact.psf, atol=1e-4 * exact.psf.max())
    np.testing.assert_allclose(padded.centers, exact.centers, atol=1e-3)
    np.testing.assert_array_equal(padded.flags, exact.flags)


def test_cosmic_ray_does_not_bend_the_psf(rng):
    data, sigma, _, _ = stars(rng, noise=1.0)
    again = data + rng.normal(0, 1, data.shape) * sigma  # a second noise draw: the PSF's own noise
    kw = dict(oversampling=K)  # default priors and robust fitting
    clean = gsprep.fit_epsf(data, sigma, **kw)
    other = gsprep.fit_epsf(again, sigma * np.sqrt(2), **kw)
    noise = np.sqrt(np.mean((other.psf - clean.psf) ** 2))
    hit = data.copy()
    c = S // 2
    hit[3, c + 2, c - 1] += 5e4  # a cosmic ray next to the core of one star
    hit[3, c + 2, c] += 2e4
    res = gsprep.fit_epsf(hit, sigma, **kw)
    assert np.sqrt(np.mean((res.psf - clean.psf) ** 2)) < 0.5 * noise
    with warnings.catch_warnings():  # without clipping the cosmic ray, the fit may not settle either
        warnings.simplefilter("ignore", gsprep.PSFConvergenceWarning)
        plain = gsprep.fit_epsf(hit, sigma, robust=False, **kw)
    assert np.sqrt(np.mean((plain.psf - clean.psf) ** 2)) > noise


def test_all_masked_stamp_is_flagged_rest_fitted(rng):
    data, sigma, _, _ = stars(rng)
    m = np.zeros(data.shape, bool)
    m[5] = True
    res = fit(data, sigma, m)
    assert res.flags[5] == 2 and np.isnan(res.chi2[5])
    assert np.all(res.flags[np.arange(N) != 5] & 2 == 0)
    t, _ = truth()
    assert np.abs(res.psf - t).max() < 5e-3 * t.max()


def test_single_star_warns_and_works(rng):
    data, sigma, _, _ = stars(rng, n=1, noise=0.0)
    with pytest.warns(UserWarning, match="a single star constrains the PSF poorly"):
        res = gsprep.fit_epsf(data, sigma, oversampling=1)
    assert res.psf.shape == (S, S) and res.psf.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite(res.psf).all()


def test_bad_input(rng):
    data, sigma, _, _ = stars(rng, n=3)
    with pytest.raises(ValueError, match="stamps and sigmas must have the same shape"):
        gsprep.fit_epsf(data, sigma[:, :-1, :-1])
    with pytest.raises(ValueError, match="odd size"):
        gsprep.fit_epsf(data[:, :-1, :-1], sigma[:, :-1, :-1])
    bad = sigma.copy()
    bad[0, 3, 3] = 0.0
    with pytest.raises(ValueError, match="sigmas must be > 0 at every unmasked pixel"):
        gsprep.fit_epsf(data, bad)
    bad[0, 3, 3] = -1.0
    with pytest.raises(ValueError, match="sigmas must be > 0"):
        gsprep.fit_epsf(data, bad)
    m = np.zeros(data.shape, bool)
    m[0, 3, 3] = True  # masked: a zero sigma there is fine (only checked, not fitted)
    bad[0, 3, 3] = 0.0
    ok = gsprep.fit_epsf(data, bad, m, regularization=("smooth", 0.01))
    assert np.isfinite(ok.psf).all() and ok.psf.sum() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="every stamp is fully masked"):
        gsprep.fit_epsf(data, sigma, np.ones(data.shape, bool))
    with pytest.raises(ValueError, match="oversampling must be an integer between 1 and 16"):
        gsprep.fit_epsf(data, sigma, oversampling=0)
    with pytest.raises(ValueError, match="method must be"):
        gsprep.fit_epsf(data, sigma, method="starred")
    with pytest.raises(ValueError, match="psf_size must be an odd integer"):
        gsprep.fit_epsf(data, sigma, psf_size=4)


def test_photutils_method_in_gsprep_convention(rng):
    data, sigma, _, _ = stars(rng, noise=1.0)
    res = gsprep.fit_epsf(data, sigma, oversampling=K, method="photutils")
    assert res.psf.shape == (K * S, K * S)
    assert res.psf.sum() == pytest.approx(1.0, abs=1e-6) and res.psf.min() >= 0
    assert res.loss_history.size == 0 and res.n_iter == 0  # no Gauss-Newton history to report
    t, _ = truth()
    peak = np.unravel_index(np.argmax(res.psf), res.psf.shape)
    assert abs(peak[0] - (K * S - 1) / 2) <= 1.5 and abs(peak[1] - (K * S - 1) / 2) <= 2.5
    # EPSFBuilder on 24 stars (the comparison method, not the default): measured 15% of the peak at worst
    tn = t.reshape(S, K, S, K).sum((1, 3))
    assert np.abs(res.native_psf - tn).max() < 0.2 * tn.max()


def test_to_epsf_convention_sums_blocks():
    p = np.zeros((9, 9))
    p[4, 4] = 1.0
    e = gsprep.to_epsf_convention(p, 3)
    assert e.sum() == pytest.approx(9.0)
    assert e[3:6, 3:6].min() == 1.0 and e[2, 4] == 0.0


def test_fit_stars_with_known_psf(rng):
    data, sigma, xy, flux = stars(rng, noise=0.0)
    t, shift = truth()
    c, f, s = fit_stars(t, data, sigma, oversampling=K)
    assert np.abs(c - xy - np.array([shift, 0])).max() < 0.02
    np.testing.assert_allclose(f, flux, rtol=5e-3)


def test_write_read_psf_roundtrip(tmp_path, rng):
    data, sigma, _, _ = stars(rng, noise=1.0)
    res = fit(data, sigma)
    p = tmp_path / "psf.fits"
    cat = Table({"id": np.arange(N) + 100, "selected": np.ones(N, bool)})
    gsprep.write_psf(p, res, stars=cat)
    with fits.open(p) as h:
        hdr = h[0].header
        assert hdr["OVERSAMP"] == K and hdr["PSFCONV"] == "SUBPIXEL-FLUX"
        assert hdr["NSTARS"] == int((res.flags == 0).sum())
        assert 1.5 < hdr["FWHM"] < 4.0
        assert h[0].data.dtype.kind == "f" and abs(h[0].data.sum() - 1) < 1e-5
        assert list(h["STARS"].data["id"][:2]) == [100, 101]
    back = gsprep.read_psf(p)
    np.testing.assert_allclose(back.psf, res.psf, atol=1e-7)
    np.testing.assert_allclose(back.fluxes, res.fluxes, rtol=1e-6)
    assert back.oversampling == K
    with pytest.raises(FileExistsError):
        gsprep.write_psf(p, res)
    with pytest.raises(ValueError, match="must sum to 1"):
        gsprep.write_psf(tmp_path / "c.fits", dataclasses.replace(res, psf=res.psf * 25))
    with pytest.raises(ValueError, match="odd native size"):
        gsprep.write_psf(tmp_path / "d.fits", dataclasses.replace(res, psf=np.ones((K * 4, K * 4)) / (K * 4) ** 2))
    assert not (tmp_path / "c.fits").exists() and not (tmp_path / "d.fits").exists()
    assert back.converged == res.converged and back.heldout_chi2 == pytest.approx(res.heldout_chi2, rel=1e-5)
    assert back.fwhm == pytest.approx(res.fwhm, rel=1e-5) and back.reg_kind == res.reg_kind
    with pytest.raises(ValueError, match="one band"):
        gsprep.write_psf(tmp_path / "b.fits", gsprep.EPSFResult(np.ones((2, 4, 4)), np.zeros((1, 2)), np.ones(1),
                                                              np.zeros(1), np.ones(1), np.zeros(1), np.zeros(1, int)))
    assert not (tmp_path / "b.fits").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.PrimaryHDU(np.ones((3, 3))).writeto(tmp_path / "x.fits")
    with pytest.raises(ValueError, match="not a gsprep PSF file"):
        gsprep.read_psf(tmp_path / "x.fits")

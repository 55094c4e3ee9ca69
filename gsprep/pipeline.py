"""One target, every band: the stages composed, and the products written for GalfitS.

``prepare_target`` is pure (images in, products out); ``write_products``
writes per band the cutout file, the PSF file, figures and a GalfitS image
block; ``load_config`` reads the TOML file ``gsprep prepare`` takes.  The
configuration lives in :mod:`gsprep.config` and the writing in
:mod:`gsprep.products`; their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ._bits import BAD, USER
from .cutouts import Cutout, cutout
from .io import AssumptionWarning, Image, read_image, read_map
from .masks import Mask, TargetNotFoundError, cutout_mask
from .noise import exposure_bad, sigma_from_map, sigma_image
from .psf import EPSFResult, fit_epsf
from .sky import SkyFit, fit_sky, sky_mask, sky_residual_check
from .stars import Stamps, extract_stamps, find_stars, select_stars

# re-exported: the configuration and the writing have modules of their own
from .config import BandSpec, PrepareConfig, _in_section, _split_ref, load_config  # noqa: F401
from .products import check_out_dir, galfits_block, product_paths, write_products  # noqa: F401

__all__ = ["BandSpec", "PrepareConfig", "BandProducts", "TargetRun", "load_config", "read_bands", "prepare_band",
           "prepare_target", "read_band_maps", "BandMaps", "write_products", "run_target", "galfits_block",
           "product_paths", "check_out_dir",
           "frame_sky", "frame_sigma", "frame_psf_stars"]


@dataclass(frozen=True)
class BandMaps:
    """A band's noise map and bad-pixel maps, frame-sized (from :func:`read_band_maps`).

    ``sigma``: the sigma image from the noise map (NaN where ``bad``), or
    None (then the sigma image is computed); ``bad``: no valid noise,
    DQ-bad or no valid exposure (mask bit ``BAD``); ``user``: the user mask
    (mask bit ``USER``); ``exposure``: the exposure map (seconds per pixel;
    the computed sigma image's ``t(x, y)``), or None.
    """

    sigma: np.ndarray | None
    bad: np.ndarray
    user: np.ndarray
    exposure: np.ndarray | None = None


@dataclass(frozen=True)
class BandProducts:
    """What ``prepare_band`` returns for one band (``error`` set when the band was skipped)."""

    band: str
    sky: SkyFit | None = None
    cutout: Cutout | None = None
    sigma: np.ndarray | None = None
    mask: Mask | None = None
    stars: Table | None = None
    stamps: Stamps | None = None
    psf: EPSFResult | None = None
    error: str | None = None
    stack: np.ndarray | None = None  # the plain stacked PSF (config.stack_psf, GalfitS makestackpsf)


def _band_map(spec, key, image):
    """``(data, label, key)`` of the map ``key`` ("noise", "dq", "user_mask", "exposure") of a band, or None.

    Its shape is checked; a ``user_mask`` that is a DS9 region file is made a
    0/1 map of the frame (sky regions placed with the frame's WCS).
    """
    ref = getattr(spec, key)
    hdu = getattr(spec, f"{key}_hdu", None)
    if ref is None and hdu is None:
        return None
    path, ext = _split_ref(ref) if ref is not None else (spec.file, hdu)
    which = key if ref is not None else f"{key}_hdu"
    label = f"{path}[{ext}]"
    try:
        if key == "user_mask" and ref is not None:
            from .usermask import is_region_file, region_mask

            if is_region_file(path):
                mask = region_mask(path, image.data.shape, wcs=image.wcs)
                return mask.astype(float), path, which
        data = read_map(path, ext)
    except (OSError, ValueError) as exc:
        msg = f"{which}: {exc}"
        raise ValueError(msg) from None
    if data.shape != image.data.shape:
        msg = (f"{which}: the map {label} has shape {data.shape} but the frame {spec.file}[{spec.hdu}] is "
               f"{image.data.shape}; it must cover the frame pixel for pixel")
        raise ValueError(msg)
    return data, label, which


def _band_maps(spec, image):
    """The band's :class:`BandMaps`, or None when it has no noise, DQ or user-mask key (errors unprefixed)."""
    noise = _band_map(spec, "noise", image)
    kind, no_data = spec.noise_kind, None
    if spec.preset is not None:  # a preset's error recipe (SDSS frames), its pixels without data (HST WHT = 0)
        from .presets import preset_bad, preset_noise

        if noise is None:
            noise, kind = preset_noise(spec, image), "rms"
        no_data = preset_bad(spec, image)
    dq = _band_map(spec, "dq", image)
    user = _band_map(spec, "user_mask", image)
    expo = _band_map(spec, "exposure", image)
    if noise is None and dq is None and user is None and no_data is None and expo is None:
        return None
    shape = image.data.shape
    sigma, bad = None, np.zeros(shape, bool)
    if noise is not None:
        try:
            sigma, bad = sigma_from_map(noise[0], kind)
        except ValueError as exc:
            msg = f"{noise[2]} ({noise[1]}, noise_kind = {kind!r}): {exc}"
            raise ValueError(msg) from None
    if dq is not None:
        values = dq[0]
        finite = np.isfinite(values)
        ints = np.where(finite, values, 0).astype(np.int64)
        flags = 0
        for b in spec.dq_bad or ():
            flags |= b
        dq_bad = ~finite | ((ints & flags) != 0 if spec.dq_bad else ints != 0)
        if dq_bad.all():
            which = f"dq_bad = {list(spec.dq_bad)}" if spec.dq_bad else "any nonzero DQ (the default)"
            msg = (f"{dq[2]}: every pixel of the DQ map {dq[1]} is bad by {which}; give dq_bad = [bit values] "
                   "that mark really bad pixels, or check the map")
            raise ValueError(msg)
        bad = bad | dq_bad
    if no_data is not None:
        bad = bad | no_data
    exposure = None
    if expo is not None:
        no_exp = exposure_bad(expo[0])
        if no_exp.all():
            msg = (f"{expo[2]}: the exposure map {expo[1]} has no pixel with a positive, finite exposure time; "
                   "check the map and its HDU")
            raise ValueError(msg)
        bad = bad | no_exp
        exposure = np.where(no_exp, float(np.median(expo[0][~no_exp])), expo[0])  # filler at masked pixels
    user_mask = np.zeros(shape, bool) if user is None else ~(user[0] == 0)  # NaN counts as masked
    if (bad | user_mask | ~np.isfinite(image.data)).all():
        msg = "noise, dq, exposure and user_mask leave no good pixel in the frame"
        raise ValueError(msg)
    if sigma is not None:
        sigma = np.where(bad, np.nan, sigma)
    return BandMaps(sigma=sigma, bad=bad, user=user_mask, exposure=exposure)


def read_band_maps(config, images):
    """Read and check every band's noise, DQ, exposure and user-mask maps; band -> :class:`BandMaps` or None.

    Bands missing from ``images`` (unreadable frames) are skipped.  Any
    problem (missing file or HDU, a shape that is not the frame's, a
    negative variance, a DQ map with every pixel bad, an exposure map with
    no positive pixel, a DS9 region file that does not parse) is one
    ``ValueError`` ``config: [bands.NAME] KEY: ...``, raised before any work.
    """
    out = {}
    for band, image in images.items():
        if band not in config.bands or not isinstance(image, Image):
            continue
        out[band] = _in_section(f"bands.{band}", lambda band=band, image=image: _band_maps(config.bands[band], image))
    return out


def _sub(arr, cut):
    """The part of a frame-sized array under a cutout (NaN off the frame)."""
    n = cut.data.shape[-1]
    out = np.full((n, n), np.nan)
    x0, y0 = cut.origin
    ny, nx = arr.shape
    sy = slice(max(y0, 0), min(y0 + n, ny))
    sx = slice(max(x0, 0), min(x0 + n, nx))
    out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = arr[sy, sx]
    return out


def _band_inputs(image, spec, band):
    """Checked exposure time and gain of one band."""
    if not isinstance(image, Image):
        msg = f"image must be a gsprep Image (from read_image), got {type(image).__name__}"
        raise TypeError(msg)
    from .presets import has_noise_map

    exptime = spec.exptime or image.exptime
    gain = spec.gain or image.gain
    noise_map = has_noise_map(spec)  # the sigma image is the map's: no gain or exposure time needed
    has_exposure_map = spec.exposure is not None or spec.exposure_hdu is not None
    if gain is None:
        gain = 1.0
        if not noise_map:
            warnings.warn(f"band {band}: no GAIN in the header of {spec.file} and no gain in [bands.{band}]: 1 e-/ADU "
                          f"assumed for the sigma image's source Poisson noise; give gain = E_PER_ADU in [bands.{band}]",
                          AssumptionWarning, stacklevel=3)
    if spec.unit == "cR" and exptime is None and not noise_map and not has_exposure_map:
        msg = (f"band {band}: no EXPTIME in the header of its frame and count-rate data need one; give "
               f'exptime = SECONDS in [bands.{band}] of the config (or unit = "counts" for data in counts)')
        raise ValueError(msg)
    return exptime, gain


def _pixel_target(ra, dec, config):
    """``(x, y)`` when the target is in pixels (``ra = dec = None``: taken from ``config``), else None."""
    if ra is not None or dec is not None:
        return None
    if config.x is None or config.y is None:
        msg = "no target: give ra, dec (ICRS degrees) or set x, y (0-based pixels) in the config's [target]"
        raise ValueError(msg)
    return config.x, config.y


def _cut_target(image, spec, band, ra, dec, pixel, use_wcs=True, config=None):
    """The target and scale ``cutout`` takes for one band (checked before any work on it)."""
    if (image.wcs is None and config is not None and config.psf
            and getattr(config.criteria, "starcord_list", None) is not None):
        msg = (f"band {band}: its frame has no WCS, so the PSF stars cannot be matched to [criteria] "
               "starcord_list (sky positions); remove starcord_list or give a frame with a WCS")
        raise ValueError(msg)
    if pixel is None:
        if image.wcs is None:
            msg = (f"band {band}: its frame has no WCS, so the target cannot be placed by ra, dec; give x, y "
                   f"(0-based pixels) in [target] and pixel_scale (arcsec/pixel) in [bands.{band}] of the config")
            raise ValueError(msg)
        return {"wcs": image.wcs, "ra": ra, "dec": dec, "pixel_scale": spec.pixel_scale}
    wcs = image.wcs if use_wcs else None
    scale = spec.pixel_scale
    if scale is None and wcs is None:
        scale = image.pixel_scale
    if wcs is None and scale is None:
        msg = (f"band {band}: its frame has no WCS, so the half-size r (arcsec) needs a pixel scale; give "
               f"pixel_scale = ARCSEC_PER_PIXEL in [bands.{band}] of the config")
        raise ValueError(msg)
    return {"wcs": wcs, "x": pixel[0], "y": pixel[1], "pixel_scale": scale}


def _band_sky_mask(image, config, spec):
    return sky_mask(image.data, fwhm=spec.fwhm, nsigma=config.sky_nsigma, max_grow=config.max_grow)


# The frame-level stages, shared by ``prepare`` (band by band or stacked), ``gsprep psf`` and the batch:
# one path from a frame to its sky, sigma image and PSF stars.

def frame_sky(image, *, fwhm, order, nsigma=3.0, max_grow=100.0, method="poly", box=64, regions=None,
              label="frame", bad=None):
    """The sky of a whole frame: sources kept out (:func:`gsprep.sky_mask`), then :func:`gsprep.fit_sky`.

    ``bad`` (frame-sized bool, optional): pixels kept out of the fit too
    (DQ-bad, no valid noise, user-masked).

    Warns (:class:`gsprep.sky.SkyResidualWarning`) when the residual is far
    above the pixel-to-pixel noise.  Returns ``(SkyFit, keep_out)``.
    """
    keep_out = sky_mask(image.data, fwhm=fwhm, nsigma=nsigma, max_grow=max_grow)
    if bad is not None:
        keep_out = keep_out | bad
    sky = fit_sky(image.data, keep_out, order=order, method=method, box=box, regions=regions, label=label)
    sky_residual_check(image.data, sky, keep_out, label=label)
    return sky, keep_out


def frame_sigma(clean, sky, *, exptime, gain, unit):
    """Sigma image of a sky-subtracted frame (data units); ``exptime`` a number or an exposure map (s per pixel).

    ``sky.rms`` is the measured background noise (the sky's own Poisson
    noise included), so the sky is not added to the source term again.
    """
    return sigma_image(clean, exptime=exptime, gain=gain, sky=0.0, sky_rms=sky.rms, unit=unit)


def frame_psf_stars(image, clean, sigma, sky, *, fwhm, nsigma, npixels, stamp_size, criteria, reference=None,
                    positions=None):
    """PSF stars of a frame: found, selected (with reasons) and cut into stamps; ``(stars, stamps)``.

    The frame's header and the sky that was removed go to
    :func:`gsprep.find_stars`, whose saturation level is in the frame's
    units before sky subtraction.  ``positions`` (``(n, 2)`` frame pixels,
    optional): the user's star list, which replaces the detected catalogue
    (``find_stars(positions=...)``).
    """
    cat, seg = find_stars(clean, fwhm=fwhm, nsigma=nsigma, npixels=npixels, wcs=image.wcs, size=stamp_size,
                          return_segmentation=True, header=image.header, background=sky.background,
                          positions=positions)
    stars = select_stars(cat, criteria, reference=reference)
    return stars, extract_stamps(clean, sigma, stars, stamp_size, segmentation=seg)


def _fill_sigma(sig, where, good):
    """``sig`` with ``where`` set to 1e4 x the largest sigma at ``good`` pixels (finite, never 0: GalfitS divides)."""
    ok = good & np.isfinite(sig) & (sig > 0)
    fill = 1e4 * float(np.max(sig[ok])) if ok.any() else 1e30
    return np.where(where, fill, sig)


def _excluded(maps):
    """Frame pixels kept out of the sky fit: no valid noise, DQ-bad, user-masked (None without maps)."""
    return None if maps is None else maps.bad | maps.user


def _sigma_full(clean, sky, spec, exptime, gain, maps):
    """The frame-sized sigma image of a sky-subtracted frame (the noise map's when given; NaN where ``maps.bad``)."""
    if maps is not None and maps.sigma is not None:
        sig_full = maps.sigma
    else:
        if maps is not None and maps.exposure is not None:  # t(x, y) instead of EXPTIME
            exptime = maps.exposure
        sig_full = frame_sigma(clean, sky, exptime=exptime, gain=gain, unit=spec.unit)
    if maps is not None:
        sig_full = np.where(maps.bad, np.nan, sig_full)
    return sig_full


def _band_psf_stars(image, clean, sig_full, sky, config, spec):
    criteria, positions, reference = config.criteria, None, None
    if getattr(config, "stars_from", "detected") == "catalog":  # the user's list is the catalogue (GalfitS)
        from .stars import read_star_catalog, star_positions_in

        if getattr(config, "star_catalog", None) is not None:
            table = read_star_catalog(config.star_catalog)
        else:
            sc = np.asarray(criteria.starcord_list, dtype=float)
            table = Table({"ra": sc[:, 0], "dec": sc[:, 1]})
            criteria = dataclasses.replace(criteria, starcord_list=None)  # the list itself, not a match reference
        positions = star_positions_in(table, image.wcs)
    if getattr(config, "gaia", False):
        reference = _gaia_reference(image)
    return frame_psf_stars(image, clean, sig_full, sky, fwhm=spec.fwhm, nsigma=config.star_nsigma,
                           npixels=config.star_npixels, stamp_size=config.stamp_size, criteria=criteria,
                           reference=reference, positions=positions)


def _gaia_reference(image):
    """Gaia DR3 stars over a frame (``gaia = true``): a cone about its centre reaching its corners."""
    if image.wcs is None:
        msg = "gaia = true needs frames with a WCS (the stars are matched on the sky)"
        raise ValueError(msg)
    from . import stars as stars_mod

    ny, nx = image.data.shape[-2:]
    centre = image.wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0).icrs
    corners = image.wcs.pixel_to_world(np.array([0, nx - 1, 0, nx - 1]), np.array([0, 0, ny - 1, ny - 1])).icrs
    radius = 1.02 * float(np.max(centre.separation(corners).arcsec))
    return stars_mod.gaia_stars(float(centre.ra.deg), float(centre.dec.deg), radius)


# The frame-level products of one band, target-independent: what ``prepare_target`` computes for a band before
# (and apart from) its target, so that a batch computes them once per frame (``gsprep.framecache``).

def band_frame_sky(image, config, spec, maps=None, *, band="band"):
    """A band's sky exactly as ``prepare_target`` fits it on the CPU (one band); ``ValueError`` when it cannot be."""
    keep_out = _band_sky_mask(image, config, spec)
    if maps is not None:
        keep_out = keep_out | _excluded(maps)
    fit = _skies({band: image.data}, {band: keep_out}, config.sky_order, stack=False, method=config.sky_method,
                 box=config.sky_box, regions=config.sky_regions)[band]
    if isinstance(fit, Exception):
        raise fit
    return fit


def band_frame_stars(image, config, spec, sky, *, exptime, gain, maps=None):
    """A band's PSF stars ``(stars, stamps)`` exactly as ``prepare_target`` finds them, its sky known."""
    clean = image.data - sky.background
    sig_full = _sigma_full(clean, sky, spec, exptime, gain, maps)
    if maps is not None:
        sig_full = _fill_sigma(sig_full, maps.bad, ~maps.bad)
    return _band_psf_stars(image, clean, sig_full, sky, config, spec)


def band_psfs(stamps, oversampling, degree=0):
    """PSF fits of the bands ``stamps`` (band -> Stamps, in band order) as ``prepare_target`` makes them."""
    return _psfs(stamps, oversampling, degree)


def _psf_at_target(res, cut):
    """The PSF for a target: a spatially varying result evaluated at the target's frame pixel, else ``res``."""
    if isinstance(res, Exception) or cut is None or not callable(getattr(res, "psf_at", None)):
        return res
    if getattr(res, "spatial", None) is None or int(np.max(getattr(res, "degree", 0) or 0)) <= 0:
        return res
    x = float(cut.origin[0]) + float(cut.center[0])
    y = float(cut.origin[1]) + float(cut.center[1])
    return dataclasses.replace(res, psf=np.asarray(res.psf_at(x, y)))


def _band_cut(clean, config, target, spec):
    """A band's cutout: GalfitS ``img_cut``'s ``usemaxpix`` (``config.recenter``), ``spcorrection`` and
    ``cutposition`` (``spec.cut_center``: the cut centred on that frame pixel, the target kept where it is)."""
    recenter = getattr(config, "recenter", None)
    target = dict(target, recenter=recenter) if recenter is not None else target
    cut = _corrected_cut(clean, config.r, target, getattr(spec, "spcorrection", None))
    centre = getattr(spec, "cut_center", None)
    if centre is None:
        return cut
    box = cutout(clean, wcs=target.get("wcs"), x=float(centre[0]), y=float(centre[1]), r=config.r,
                 pixel_scale=target.get("pixel_scale"))
    cx = cut.origin[0] + cut.center[0] - box.origin[0]  # the target's pixel in the new cut
    cy = cut.origin[1] + cut.center[1] - box.origin[1]
    size = box.data.shape[-1]
    if not (0 <= cx <= size - 1 and 0 <= cy <= size - 1):
        msg = (f"cut_center ({centre[0]:g}, {centre[1]:g}): the target (frame pixel x={cut.origin[0] + cut.center[0]:.1f}, "
               f"y={cut.origin[1] + cut.center[1]:.1f}) falls outside the {size} x {size} cut centred there")
        raise ValueError(msg)
    wcs = box.wcs
    if wcs is not None and cut.wcs is not None and getattr(spec, "spcorrection", None) is not None:
        import copy

        wcs = copy.deepcopy(wcs)  # the same correction as the target's cut: shift by its CRVAL change
        wcs.wcs.crval = np.asarray(wcs.wcs.crval, float) + (np.asarray(cut.wcs.wcs.crval, float)
                                                            - np.asarray(target["wcs"].wcs.crval, float))
        wcs.wcs.set()
    return dataclasses.replace(box, wcs=wcs, center=(float(cx), float(cy)), ra=cut.ra, dec=cut.dec)


def _corrected_cut(clean, r, target, correction):
    """The cutout; with ``correction = (east, north)`` arcsec (GalfitS ``spcorrection``) the cut is centred on
    the corrected position and its WCS shifted so that pixel carries the nominal ``(ra, dec)``."""
    if correction is None or target.get("ra") is None or target.get("wcs") is None:
        return cutout(clean, r=r, **target)
    import copy

    ra, dec = float(target["ra"]), float(target["dec"])
    shifted = dict(target, ra=ra + correction[0] / 3600.0 / np.cos(np.radians(dec)), dec=dec + correction[1] / 3600.0)
    cut = cutout(clean, r=r, **shifted)
    if cut.wcs is None:
        return cut
    w = copy.deepcopy(cut.wcs)
    for _ in range(2):  # shift CRVAL until the cut's target pixel reads the nominal position
        here = w.pixel_to_world(*cut.center).icrs
        dra = ((ra - float(here.ra.deg) + 180.0) % 360.0) - 180.0
        crval = np.array(w.wcs.crval, dtype=float)
        crval[w.wcs.lng] += dra
        crval[w.wcs.lat] += dec - float(here.dec.deg)
        w.wcs.crval = crval
        w.wcs.set()
    return dataclasses.replace(cut, wcs=w, ra=ra, dec=dec)


def _cut_window(frame, config, target, spec, sky, exptime, gain):
    """Cutout and sigma of a band whose frame is read by window (``frame.window(ys, xs)``), its sky known.

    The cut's geometry does not depend on the pixels (no ``recenter``), so it
    is taken on a stand-in of the frame's shape; then only the frame pixels
    under the cut are read, sky-subtracted and given their sigma, with the
    same element-wise arithmetic as on the whole frame: the same cutout and
    sigma image as ``_band_cut`` and ``_sigma_full`` (no noise map).
    """
    ny, nx = frame.shape
    cut = _band_cut(np.zeros((ny, nx), np.float32), config, target, spec)
    n = cut.data.shape[-1]
    x0, y0 = cut.origin
    ys, xs = slice(max(y0, 0), min(y0 + n, ny)), slice(max(x0, 0), min(x0 + n, nx))
    clean = frame.window(ys, xs) - sky.background[ys, xs]
    sig = frame_sigma(clean, sky, exptime=exptime, gain=gain, unit=spec.unit)

    def place(values):
        out = np.full((n, n), np.nan)
        out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = values
        return out

    return dataclasses.replace(cut, data=place(clean)), place(sig)


def _band_after_sky(image, target, config, spec, sky, exptime, gain, band, maps=None, frames=None):
    """Cutout, sigma, mask and PSF stamps of one band, its sky known (no PSF yet); ``target`` from ``_cut_target``.

    ``maps`` (:class:`BandMaps`): the noise map replaces the computed sigma
    image; its invalid pixels and DQ-bad ones get mask bit ``BAD``, the user
    mask bit ``USER``; masked ``BAD`` pixels are written with a large finite
    sigma.  ``frames``: precomputed frame products (see ``prepare_target``),
    whose ``stars(band)`` replaces the star search.
    """
    section = getattr(image.data, "window", None)  # a frame read by window (the batch's frame cache)
    if (section is not None and frames is not None and maps is None and getattr(config, "recenter", None) is None
            and np.all(np.asarray(sky.rms) > 0)):
        cut, sig = _cut_window(image.data, config, target, spec, sky, exptime, gain)
        clean = sig_full = None  # not needed: the stars come from the frame cache
    else:
        if section is not None:
            image = dataclasses.replace(image, data=section(slice(None), slice(None)))
        clean = image.data - sky.background
        cut = _band_cut(clean, config, target, spec)
        sig_full = _sigma_full(clean, sky, spec, exptime, gain, maps)
        sig = _sub(sig_full, cut)
    bad_cut = user_cut = np.zeros(cut.data.shape[-2:], bool)
    if maps is not None:
        bad_cut = _sub(maps.bad.astype(float), cut) > 0  # NaN (off the frame) is False
        user_cut = _sub(maps.user.astype(float), cut) > 0
    try:
        mask = cutout_mask(cut, fwhm=spec.fwhm, nsigma=config.mask_nsigma, npixels=config.mask_npixels,
                           deblend=config.deblend, max_grow=config.max_grow, addgrow=config.addgrow,
                           magnification=config.magnification, wing_level=config.wing_level,
                           detection=config.mask_detection,
                           target_radius=getattr(config, "target_radius", None),
                           bad=~(sig > 0) | user_cut, require_target=config.require_target)
    except TargetNotFoundError:
        nsig = "default" if config.mask_nsigma is None else f"{config.mask_nsigma:g}"
        msg = (f"the target was not detected at the centre of the cutout (mask_nsigma={nsig}, "
               f"mask_npixels={config.mask_npixels or 'default'}); lower mask_nsigma or mask_npixels in [options] of the "
               "config, or set require_target = false there to mask every detected source and go on")
        raise TargetNotFoundError(msg) from None
    if maps is not None:
        bits = mask.bits
        bits[bad_cut] |= BAD
        bits[bad_cut & ~user_cut] &= ~USER  # masked for want of noise / by DQ, not by the user
        bits[user_cut] |= USER
        sig = _fill_sigma(sig, bad_cut, mask.mask == 0)
        sig_full = _fill_sigma(sig_full, maps.bad, ~maps.bad)
    stars = stamps = None
    if config.psf and frames is not None:  # precomputed (batch frame cache): the same stars, read back
        stars, stamps = frames.stars(band)
    elif config.psf:
        stars, stamps = _band_psf_stars(image, clean, sig_full, sky, config, spec)
    return BandProducts(band=band, sky=sky, cutout=cut, sigma=sig, mask=mask, stars=stars, stamps=stamps)


def prepare_band(image, ra, dec, config, spec, *, band="band", maps=None):
    """Run every stage on one band and return its products (pure: nothing is written).

    Sky (source mask + polynomial), cutout of the sky-subtracted frame, sigma
    image, mask, PSF stars (find, select, stamps) and the PSF.  With
    ``ra = dec = None`` the target is ``config.x, config.y`` (0-based
    pixels; a frame without a WCS needs ``spec.pixel_scale``).  ``maps``:
    the band's :class:`BandMaps` (default: read from ``spec``'s noise, dq
    and user_mask keys).
    """
    exptime, gain = _band_inputs(image, spec, band)
    if maps is None:
        maps = _in_section(f"bands.{band}", lambda: _band_maps(spec, image))
    target = _cut_target(image, spec, band, ra, dec, _pixel_target(ra, dec, config), config=config)
    sky, _ = frame_sky(image, fwhm=spec.fwhm, order=config.sky_order, nsigma=config.sky_nsigma,
                       max_grow=config.max_grow, method=config.sky_method, box=config.sky_box,
                       regions=config.sky_regions, label=f"band {band}", bad=_excluded(maps))
    p = _band_after_sky(image, target, config, spec, sky, exptime, gain, band, maps)
    if p.stamps is None:
        return p
    p = _with_stack(p, config)
    if not getattr(config, "psf_fit", True):  # GalfitS notfit: stars and stamps only
        return p
    res = fit_epsf(p.stamps, oversampling=config.oversampling, degree=config.psf_degree)
    return dataclasses.replace(p, psf=_psf_at_target(res, p.cutout))


def _skies(frames, masks, order, stack=True, **kw):
    """Sky fits of several bands: one ``fit_sky`` call per frame shape (band -> SkyFit or error).

    A mesh or per-region sky (``kw``) is fitted band by band.  Each band's
    residual is checked against its pixel-to-pixel noise.
    """
    stack = stack and kw.get("method", "poly") == "poly" and kw.get("regions") is None
    out = _skies_fit(frames, masks, order, stack, **kw)
    for b, f in out.items():
        if not isinstance(f, Exception):
            sky_residual_check(frames[b], f, masks[b], label=f"band {b}")
    return out


def _skies_fit(frames, masks, order, stack, **kw):
    groups = {}
    for band, data in frames.items():
        groups.setdefault(data.shape if stack else band, []).append(band)
    out = {}
    for bands in groups.values():
        if len(bands) > 1:
            try:
                fit = fit_sky(np.stack([frames[b] for b in bands]), np.stack([masks[b] for b in bands]), order=order)
            except ValueError:  # one band cannot be fitted: find it below, band by band
                pass
            else:
                for i, b in enumerate(bands):
                    out[b] = SkyFit(fit.background[i], fit.coeffs[i], fit.order, float(fit.rms[i]), fit.method)
                continue
        for b in bands:
            try:
                out[b] = fit_sky(frames[b], masks[b], order=order, label=f"band {b}", **kw)
            except ValueError as exc:
                out[b] = exc
    return out


def _psfs(stamps, oversampling, degree=0):
    """PSF fits of several bands in one ``fit_epsf`` call (band -> EPSFResult or error).

    Bands with fewer stars are padded with fully masked stamps, which the
    fit ignores; each band's result is cut back to its own stars.
    """
    out = {}
    if len(stamps) > 1 and len({st.data.shape[1:] for st in stamps.values()}) == 1:
        n = max(len(st.data) for st in stamps.values())

        def pad(a, fill):
            return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], fill, a.dtype)])

        stack = {key: np.stack([pad(getattr(st, key), fill) for st in stamps.values()])
                 for key, fill in (("data", 0.0), ("sigma", 1.0), ("mask", True))}
        centre = (stack["data"].shape[-1] - 1) / 2.0
        centers = np.stack([pad(np.asarray(st.positions, float), centre) for st in stamps.values()])
        origins = np.stack([pad(np.asarray(st.origins, float), 0.0) for st in stamps.values()])
        try:
            fit = fit_epsf(stack["data"], stack["sigma"], stack["mask"], centers=centers, oversampling=oversampling,
                           degree=degree, origins=origins)
        except ValueError:  # a band with no usable stamp: find it below, band by band
            pass
        else:
            for i, (b, st) in enumerate(stamps.items()):
                out[b] = fit.band(i, len(st.data))
            return out
    for b, st in stamps.items():
        try:
            out[b] = fit_epsf(st, oversampling=oversampling, degree=degree)
        except ValueError as exc:
            out[b] = exc
    return out


def prepare_target(images, ra, dec, config, *, progress=None, stack_bands="auto", maps=None, frames=None):
    """Prepare one target in every band.

    Parameters
    ----------
    images : dict of str -> Image
    ra, dec : float or None
        ICRS degrees; ``None, None``: the target is ``config.x, config.y``
        (0-based pixels).  Then frames without a WCS need their band's
        ``pixel_scale``, and when any frame has no WCS every band is cut by
        pixels and written with a stand-in WCS (a warning says so).
    config : PrepareConfig
    progress : callable, optional
        Called with a short message before each stage.
    stack_bands : {"auto", True, False}
        True: fit the sky of every band in one compiled ``fit_sky`` call (per
        frame shape) and every band's PSF in one ``fit_epsf`` call.  False:
        band by band (``prepare_band``).  ``"auto"`` (default): PSFs in one
        call; skies in one call on a GPU/TPU, band by band on the CPU, where
        one ``fit_sky`` call over B frames ran about 2x slower than B calls
        (``benchmarks/bench_bands.py``).  The products are the same either
        way, to float32 rounding (about 1e-4 of the PSF peak).
    maps : dict of str -> BandMaps or None, optional
        From :func:`read_band_maps` (default: read here, before any work;
        a bad map raises ``ValueError`` ``config: [bands.NAME] ...``).
    frames : optional
        Precomputed frame-level products (the batch's frame cache,
        :class:`gsprep.framecache.CachedFrames`): ``frames.sky(band)``,
        ``frames.stars(band)`` and ``frames.psfs(stamps)`` stand in for the
        sky fit, the star search and the PSF fit, which give the same
        products (``ValueError`` where the computation would raise); not
        with ``stack_bands=False``.  The sky is then each band's own fit, as
        ``"auto"`` fits it on the CPU.

    Returns
    -------
    dict of str -> BandProducts
        A band that fails (target off its frame, no PSF star, ...) has
        ``error`` set and the other bands are still prepared.
    """
    def say(msg):
        if progress:
            progress(msg)

    errors = (ValueError, TypeError)
    out = {}
    if stack_bands not in ("auto", True, False):
        msg = f"stack_bands must be 'auto', True or False, got {stack_bands!r}"
        raise ValueError(msg)
    if frames is not None and stack_bands is False:
        msg = "frames (precomputed frame products) need stack_bands 'auto' or True"
        raise ValueError(msg)
    from .presets import apply_presets

    config = apply_presets(config)  # bands with a preset not yet filled in from their files (run_target has)
    pixel = _pixel_target(ra, dec, config)
    if maps is None:
        maps = read_band_maps(config, images)
    no_wcs = [b for b, im in images.items() if isinstance(im, Image) and im.wcs is None]
    use_wcs = not no_wcs
    if pixel is not None and no_wcs and len(no_wcs) < len(images):
        warnings.warn(f"band(s) {', '.join(no_wcs)} have no WCS: every band is cut by pixels (x, y) and written "
                      "with a stand-in WCS, so that the .lyric's one sky position fits them all", stacklevel=2)
    if stack_bands is False:
        for band, image in images.items():
            say(f"{band}: sky, cutout, sigma, mask, stars, PSF")
            try:
                if not use_wcs and image.wcs is not None:  # mixed frames: cut by pixels, as the others
                    image = dataclasses.replace(image, wcs=None)
                out[band] = prepare_band(image, ra, dec, config, config.bands[band], band=band,
                                         maps=maps.get(band))
            except errors as exc:
                out[band] = BandProducts(band=band, error=str(exc))
        return out
    inputs, keep_out, targets = {}, {}, {}
    for band, image in images.items():
        try:
            inputs[band] = _band_inputs(image, config.bands[band], band)
            targets[band] = _cut_target(image, config.bands[band], band, ra, dec, pixel, use_wcs, config)
            if frames is not None:  # the sky comes from the frame cache
                continue
            keep_out[band] = _band_sky_mask(image, config, config.bands[band])
            if maps.get(band) is not None:
                keep_out[band] = keep_out[band] | _excluded(maps[band])
        except errors as exc:
            out[band] = BandProducts(band=band, error=str(exc))
            inputs.pop(band, None)
    say(f"sky: {', '.join(inputs)}")
    if stack_bands == "auto":
        import jax

        stack_sky = jax.default_backend() != "cpu"
    else:
        stack_sky = bool(stack_bands)
    if frames is not None:
        skies = {b: _or_error(frames.sky, b) for b in inputs}
    else:
        skies = _skies({b: images[b].data for b in inputs}, keep_out, config.sky_order, stack=stack_sky,
                       method=config.sky_method, box=config.sky_box, regions=config.sky_regions)
    partial = {}
    for band in inputs:
        if isinstance(skies[band], Exception):
            out[band] = BandProducts(band=band, error=str(skies[band]))
            continue
        say(f"{band}: cutout, sigma, mask, stars")
        try:
            partial[band] = _band_after_sky(images[band], targets[band], config, config.bands[band], skies[band],
                                            *inputs[band], band, maps.get(band), frames)
        except errors as exc:
            out[band] = BandProducts(band=band, error=str(exc))
    for b in list(partial):
        try:
            partial[b] = _with_stack(partial[b], config)
        except errors as exc:
            out[b] = BandProducts(band=b, error=str(exc))
            del partial[b]
    with_stamps = {b: p.stamps for b, p in partial.items() if p.stamps is not None}
    if not getattr(config, "psf_fit", True):  # GalfitS notfit: stars and stamps only, no PSF fit
        with_stamps = {}
    if with_stamps:
        say(f"PSF: {', '.join(with_stamps)}")
    if with_stamps:
        psfs = frames.psfs(with_stamps) if frames is not None else _psfs(with_stamps, config.oversampling, config.psf_degree)
    else:
        psfs = {}
    for band in images:  # keep the caller's band order
        if band in partial:
            res = psfs.get(band)
            if isinstance(res, Exception):
                out[band] = BandProducts(band=band, error=str(res))
            else:
                out[band] = dataclasses.replace(partial[band], psf=_psf_at_target(res, partial[band].cutout))
    return {b: out[b] for b in images}


def _with_stack(p, config):
    """``p`` with its plain stacked PSF (``config.stack_psf``: "median" or "mean"; GalfitS makestackpsf)."""
    method = getattr(config, "stack_psf", None)
    if method is None or p.stamps is None:
        return p
    from .stars import stack_psf

    return dataclasses.replace(p, stack=stack_psf(p.stamps, method=method))


def _or_error(fn, band):
    try:
        return fn(band)
    except (ValueError, TypeError) as exc:
        return exc


def read_bands(config):
    """Open every band's frame; returns ``(images, errors)``, dicts keyed by band.

    A frame that cannot be read (missing, corrupt, wrong HDU) lands in
    ``errors`` with its message instead of stopping the other bands.
    """
    from .presets import PresetWarning, resolve_band

    images, errors = {}, {}
    for band, spec in config.bands.items():
        try:
            with warnings.catch_warnings():  # said where the band is prepared (prepare_target, run_target)
                warnings.simplefilter("ignore", PresetWarning)
                spec = resolve_band(spec, band)  # a preset not yet filled in (run_target has): its HDU and unit
            images[band] = read_image(spec.file, spec.hdu, unit=spec.unit, band=band)
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            errors[band] = f"{spec.file}: {exc}" if os.fspath(spec.file) not in str(exc) else str(exc)
    return images, errors


@dataclass(frozen=True)
class TargetRun:
    """What ``run_target`` did: the products, the files written per band, and per-band errors."""

    products: dict
    written: dict
    errors: dict

    @property
    def ok(self):
        """True when every band was prepared and written."""
        return not self.errors


def run_target(config, out_dir, *, figures=True, progress=None, overwrite=False, frames=None):
    """Read every band's frame, prepare the target and write its products to ``out_dir``.

    This is ``gsprep prepare`` as a function (``gsprep batch`` runs it once
    per target).  Bands that fail (unreadable frame, target off the frame, no
    PSF star, ...) are listed in ``errors`` (band -> message, in config
    order) and the other bands are still written.  An ``out_dir`` that
    already holds this target's products is refused before any work unless
    ``overwrite``.  ``frames``: precomputed frame-level products (see
    :func:`prepare_target`; ``gsprep batch`` passes its frame cache); when
    they hold a band's sky and stars, and no figure or sky-subtracted frame
    is asked for, ``frames.read_bands`` reads only the frame pixels under
    the target's cut (same products).
    """
    check_out_dir(config, out_dir, figures=figures, overwrite=overwrite)
    from .presets import apply_presets

    config = apply_presets(config)  # each band's preset filled in from its file (an error stops here)
    if frames is not None and hasattr(frames, "read_bands"):  # figures and the sky-subtracted frame need whole frames
        windows = not figures and not getattr(config, "write_sky_subtracted", False)
        images, read_errors = frames.read_bands(config, windows=windows)
    else:
        images, read_errors = read_bands(config)
    maps = read_band_maps(config, images)  # a bad noise / DQ / mask map stops here, before any work
    products = (prepare_target(images, config.ra, config.dec, config, progress=progress, maps=maps, frames=frames)
                if images else {})
    written = write_products(products, config, images, out_dir, figures=figures, overwrite=overwrite)
    errors = {}
    for band in config.bands:
        if band in read_errors:
            errors[band] = read_errors[band]
        elif isinstance(written.get(band), str):
            errors[band] = written[band]
    return TargetRun(products=products, written=written, errors=errors)

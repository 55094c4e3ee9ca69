"""What ``gsprep prepare`` writes: per band the cutout file, the PSF file and figures, and the ``.lyric``."""

from __future__ import annotations

import os
import warnings

import numpy as np

from .galfits import galfits_filter, header_zeropoint, image_block, lyric_text
from .io import atomic_write, write_cutout, write_psf
from .wcs import STANDIN_CRVAL, StandInWCSWarning

__all__ = ["check_out_dir", "galfits_block", "product_paths", "write_products", "write_sky_subtracted",
           "write_stack_psf", "write_star_stamps"]


def galfits_block(letter, band, cut_file, psf_file, oversampling, r, zeropoint=None, unit="cR"):
    """The ``Ia1)`` ... ``Ia15)`` image lines of one band (see :func:`gsprep.galfits.image_block`).

    ``psf_file`` None: no PSF line.  The PSF named is the native-pixel one
    (``Ia5) 1``; HDU 2 ``NATIVE`` of an oversampled PSF file).
    """
    from .galfits import galfits_filter, image_block

    ref = None if psf_file is None else (psf_file, 2 if oversampling > 1 else 0)
    name, _ = galfits_filter(band)
    return image_block(letter, band, cut_file=cut_file, psf_ref=ref, psf_sampling=1, r=r, filter_name=name,
                       zeropoint=zeropoint, unit=unit)


def product_paths(config, out_dir, *, figures=True):
    """Every file ``write_products`` may write for ``config`` in ``out_dir`` (whether or not it exists)."""
    stem = os.path.join(out_dir, config.name)
    paths = [f"{stem}_images.lyric"]
    if figures:
        paths.append(f"{stem}_psfs.png")
    for band in config.bands:
        paths += [f"{stem}_{band}.fits", f"{stem}_{band}_psf.fits"]
        if getattr(config, "stack_psf", None) is not None:
            paths.append(f"{stem}_{band}_stackpsf.fits")
        if not getattr(config, "psf_fit", True):
            paths.append(f"{stem}_{band}_stars.fits")
        if getattr(config, "write_sky_subtracted", False):
            paths.append(f"{stem}_{band}_skysub.fits")
        if figures:
            paths += [f"{stem}_{band}_{fig}.png" for fig in ("sky", "cutout", "funnel", "stars", "psf")]
    return paths


def check_out_dir(config, out_dir, *, figures=True, overwrite=False):
    """Refuse, before any work, an ``out_dir`` that already holds products of this target (unless ``overwrite``)."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        msg = f"out: {out_dir!r} exists and is not a folder"
        raise NotADirectoryError(msg)
    if overwrite:
        return
    there = [os.path.basename(p) for p in product_paths(config, out_dir, figures=figures) if os.path.exists(p)]
    if there:
        more = f" and {len(there) - 3} more" if len(there) > 3 else ""
        msg = (f"out: {out_dir!r} already holds products of {config.name} ({', '.join(there[:3])}{more}); "
               "pass overwrite=True to replace them")
        raise FileExistsError(msg)


_STRUCTURAL = ("XTENSION", "SIMPLE", "EXTEND", "PCOUNT", "GCOUNT", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3",
               "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZTILE1", "ZTILE2",
               "ZCMPTYPE", "ZQUANTIZ")


def write_sky_subtracted(path, image, sky, *, overwrite=False):
    """Write the frame minus its fitted sky (GalfitS's ``sky_subtraction(..., filepath=)``), atomically.

    One primary HDU, float32: ``image.data - sky.background`` with the
    frame's own header (its WCS kept, whatever the convention) plus the
    provenance cards ``SKYSUB``, ``SKYORD`` (polynomial order), ``SKYMETH``
    (``poly``, ``median``, ``mesh``, ``poly/regions``) and, for a
    per-region sky, ``SKYREG`` (the boxes ``x0:x1,y0:y1``, 0-based, end
    excluded).
    """
    from astropy.io import fits

    header = image.header.copy() if image.header is not None else fits.Header()
    for key in _STRUCTURAL:
        header.remove(key, ignore_missing=True, remove_all=True)
    for key in [k for k in header if k.startswith(("ZNAXIS", "ZTILE", "ZNAME", "ZVAL"))]:
        header.remove(key, ignore_missing=True, remove_all=True)
    header["SKYSUB"] = (True, "gsprep: frame minus its fitted sky")
    header["SKYORD"] = (int(sky.order), "sky polynomial order")
    header["SKYMETH"] = (str(sky.method), "sky method")
    boxes = getattr(sky, "regions", None)
    if boxes:
        header["SKYREG"] = (" ".join(f"{b[0]}:{b[1]},{b[2]}:{b[3]}" for b in boxes), "sky regions x0:x1,y0:y1")
    data = (np.asarray(image.data, float) - np.asarray(sky.background, float)).astype(np.float32)
    with atomic_write(path, overwrite=overwrite) as tmp:
        fits.PrimaryHDU(data, header).writeto(tmp, overwrite=True, output_verify="silentfix")
    return path


def write_stack_psf(path, psf, *, nstars, method="median", overwrite=False):
    """Write a plain stacked PSF (GalfitS ``makestackpsf``; :func:`gsprep.stars.stack_psf`), atomically.

    One primary HDU, float32, sum 1, native pixels (``OVERSAMP = 1``), with
    ``PSFKIND = 'STACK'``, ``STACKMTH`` (median or mean) and ``NSTARS``.
    """
    from astropy.io import fits

    hdr = fits.Header()
    hdr["PSFKIND"] = ("STACK", "plain normalised stack of the star stamps")
    hdr["STACKMTH"] = (str(method), "how the stamps were combined")
    hdr["NSTARS"] = (int(nstars), "stamps stacked")
    hdr["OVERSAMP"] = (1, "native pixels")
    with atomic_write(path, overwrite=overwrite) as tmp:
        fits.PrimaryHDU(np.asarray(psf, np.float32), hdr).writeto(tmp, overwrite=True)
    return path


def write_star_stamps(path, stars, stamps, *, overwrite=False):
    """Write the PSF stars and their stamps without a PSF (GalfitS ``notfit``), atomically.

    HDU 1 ``STARS``: every candidate with ``selected`` and ``reason``;
    HDU 2-4 ``STAMPS``, ``SIGMA``, ``MASK`` (1 = excluded): ``(n, size,
    size)`` cubes of the selected stars, in ``STARS`` order of the selected
    rows; HDU 5 ``POSITION``: each stamp's star ``x, y`` (0-based, in the
    stamp), its ``id`` and the frame pixel of its stamp's ``(0, 0)``.
    """
    from astropy.io import fits
    from astropy.table import Table

    tab = Table(stars, copy=True)
    tab.meta = {}
    for name in tab.colnames:
        if tab[name].dtype.kind == "O":
            tab[name] = tab[name].astype(str)
    pos = Table({"id": np.asarray(stamps.ids, int), "x": stamps.positions[:, 0], "y": stamps.positions[:, 1],
                 "x0": np.asarray(stamps.origins)[:, 0], "y0": np.asarray(stamps.origins)[:, 1]})
    hdus = [fits.PrimaryHDU(), fits.table_to_hdu(tab), fits.ImageHDU(np.asarray(stamps.data, np.float32), name="STAMPS"),
            fits.ImageHDU(np.asarray(stamps.sigma, np.float32), name="SIGMA"),
            fits.ImageHDU(np.asarray(stamps.mask, np.uint8), name="MASK"), fits.table_to_hdu(pos)]
    hdus[1].name, hdus[5].name = "STARS", "POSITION"
    with atomic_write(path, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return path


def _sigma_form(spec):
    """The SIGFORM header value: the computed formula, or the noise map's kind."""
    if spec.noise is None and spec.noise_hdu is None:
        return "sqrt(|d+s|/(g t)+rms^2)"
    return {"rms": "noise map: rms", "variance": "noise map: sqrt(var)"}.get(spec.noise_kind,
                                                                            f"noise map: 1/sqrt({spec.noise_kind})")


def write_products(products, config, images, out_dir, *, figures=True, overwrite=False):
    """Write per band the cutout file, PSF file, figures, and the GalfitS image blocks.

    Returns a dict band -> list of written paths (or the band's error), and
    writes ``<name>_images.lyric`` with the image blocks of the bands that
    were prepared.  Existing products are kept (``FileExistsError``) unless
    ``overwrite``.
    """
    check_out_dir(config, out_dir, figures=figures, overwrite=overwrite)
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    blocks = {}
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    for band, p in products.items():
        if p.error:
            written[band] = p.error
            continue
        files = []
        spec = config.bands[band]
        cut_file = os.path.join(out_dir, f"{config.name}_{band}.fits")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StandInWCSWarning)  # said once for every band, below
            write_cutout(cut_file, p.cutout, p.mask, p.sigma, header=images[band].header, overwrite=overwrite,
                         provenance={"SKYORD": (p.sky.order, "sky polynomial order"),
                                     "SIGFORM": (_sigma_form(spec), "sigma image formula"),
                                     "MASKNSIG": (config.mask_nsigma, "mask detection threshold"),
                                     "BAND": band})
        files.append(cut_file)
        if getattr(config, "write_sky_subtracted", False):  # GalfitS's sky_subtraction(..., filepath=)
            files.append(write_sky_subtracted(os.path.join(out_dir, f"{config.name}_{band}_skysub.fits"),
                                              images[band], p.sky, overwrite=overwrite))
        psf_file = os.path.join(out_dir, f"{config.name}_{band}_psf.fits")
        psf_ref = None
        if p.psf is not None:
            sel = p.stars[np.asarray(p.stars["selected"], bool)]
            at = None
            if p.cutout is not None:  # the PSF at the target (a spatially varying PSF is evaluated there)
                at = (float(p.cutout.origin[0]) + float(p.cutout.center[0]),
                      float(p.cutout.origin[1]) + float(p.cutout.center[1]))
            write_psf(psf_file, p.psf, stars=sel["id", "x", "y"], overwrite=overwrite, at=at)
            files.append(psf_file)
            k = int(p.psf.oversampling)
            # GalfitS: the native-pixel PSF by default (HDU 2 NATIVE), the centred oversampled one (HDU 3 FINE)
            # on request; with k = 1 the primary HDU is both
            if k == 1:
                psf_ref, sampling = (os.path.basename(psf_file), 0), 1
            elif config.lyric_psf == "oversampled":
                psf_ref, sampling = (os.path.basename(psf_file), 3), k
            else:
                psf_ref, sampling = (os.path.basename(psf_file), 2), 1
        if getattr(p, "stack", None) is not None:  # GalfitS makestackpsf: the plain stack, its own file
            stack_file = os.path.join(out_dir, f"{config.name}_{band}_stackpsf.fits")
            files.append(write_stack_psf(stack_file, p.stack, nstars=len(p.stamps.data), method=config.stack_psf,
                                         overwrite=overwrite))
            if psf_ref is None:  # no fitted PSF (psf_fit = false): the .lyric names the stack
                psf_ref, sampling = (os.path.basename(stack_file), 0), 1
        if not getattr(config, "psf_fit", True) and p.stamps is not None:  # GalfitS notfit: stars and stamps
            files.append(write_star_stamps(os.path.join(out_dir, f"{config.name}_{band}_stars.fits"), p.stars,
                                           p.stamps, overwrite=overwrite))
        header = images[band].header
        filt, filt_how = galfits_filter(band, header, spec.filter)
        if filt is None:
            warnings.warn(f"band {band!r}: no GalfitS filter name (set filter = \"...\" in [bands.{band}], "
                          "e.g. \"sloan_g\"); its image block has Ia2) "
                          f"{band} and Ia15) 0 (no SED)", stacklevel=2)
        zp, zp_from = spec.zeropoint, "config"
        if zp is None:
            zp, key = header_zeropoint(header)
            zp_from = f"header {key}"
        letter = next(letters)
        blocks[letter] = image_block(letter, band, cut_file=os.path.basename(cut_file), psf_ref=psf_ref,
                                     psf_sampling=sampling if psf_ref else 1, r=config.r, filter_name=filt,
                                     zeropoint=zp, unit=spec.unit, filter_from=filt_how, zeropoint_from=zp_from)
        if figures:
            files += _figures(p, images[band], out_dir, f"{config.name}_{band}")
        written[band] = files
    if figures and any(p.psf is not None for p in products.values() if not p.error):
        from .plots import fig_psfs

        path = os.path.join(out_dir, f"{config.name}_psfs.png")
        fig_psfs({b: p.psf for b, p in products.items() if not p.error and p.psf is not None}, save=path)
    done = {b: p for b, p in products.items() if not p.error}
    standin = [b for b, p in done.items() if p.cutout.wcs is None]
    if standin:
        warnings.warn(f"band(s) {', '.join(standin)}: no WCS; the cutout files carry a stand-in TAN WCS (WCSFAKE = T) "
                      f"with the target at RA, Dec = {STANDIN_CRVAL} (the .lyric's R2): sky positions are not real",
                      StandInWCSWarning, stacklevel=2)
    if blocks:
        lyric = os.path.join(out_dir, f"{config.name}_images.lyric")
        scales = {round(float(p.cutout.pixel_scale), 6) for p in done.values()}
        if standin:
            ra, dec = STANDIN_CRVAL
        elif config.ra is not None:
            ra, dec = config.ra, config.dec
        else:  # target in pixels, every frame with a WCS: its sky position from the first band's WCS
            first = next(iter(done.values())).cutout
            ra, dec = first.ra, first.dec
        text = lyric_text(config.name, ra, dec, blocks, redshift=config.redshift, same_pixels=len(scales) == 1,
                          standin=bool(standin))
        with atomic_write(lyric, overwrite=overwrite) as tmp, open(tmp, "w") as f:
            f.write(text)
    return written


def _figures(p, image, out_dir, stem):
    from .plots import fig_cutout, fig_funnel, fig_psf, fig_psf_field, fig_sky, fig_stars

    paths = []

    def save(fn, name, *args, **kw):
        path = os.path.join(out_dir, f"{stem}_{name}.png")
        fn(*args, save=path, **kw)
        paths.append(path)

    save(fig_sky, "sky", image.data, p.sky.background, rms=float(np.mean(p.sky.rms)), unit=image.unit,
         title=f"{stem}: sky subtraction")
    save(fig_cutout, "cutout", p.cutout, p.mask, unit=image.unit, title=f"{stem}: cutout and mask")
    if p.psf is not None:
        save(fig_funnel, "funnel", p.stars, title=f"{stem}: PSF star selection")
        save(fig_stars, "stars", p.stamps, p.psf, title=f"{stem}: PSF stars, model, residual")
        save(fig_psf, "psf", p.psf, title=f"{stem}: PSF")
        if getattr(p.psf, "spatial", None) is not None:
            save(fig_psf_field, "psf_field", p.psf, title=f"{stem}: PSF across the frame")
    return paths

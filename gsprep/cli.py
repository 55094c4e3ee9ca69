"""The ``gsprep`` command line: ``prepare``, ``psf``, ``batch`` and ``demo``.

Errors are printed as one line (``gsprep: error: ...``) unless ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import __version__


def _say(args, msg):
    if not getattr(args, "quiet", False):
        print(msg, flush=True)


def cmd_prepare(args):
    from .pipeline import load_config, run_target

    config = load_config(args.config)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.config)), f"{config.name}-gsprep")
    t0 = time.perf_counter()
    run = run_target(config, out, figures=not args.no_figures, progress=lambda m: _say(args, m),
                     overwrite=args.overwrite)
    for band in config.bands:
        if band in run.errors:
            _say(args, f"{band}: skipped: {run.errors[band]}")
        else:
            p = run.products[band]
            npsf = int((p.psf.flags == 0).sum()) if p.psf is not None else 0
            _say(args, f"{band}: cutout {p.cutout.data.shape[-1]} px, {p.mask.mask.mean():.0%} masked, "
                       f"{p.mask.n_neighbours} neighbours, PSF from {npsf} stars")
    if len(run.errors) == len(config.bands):
        print(f"gsprep: error: every band failed ({len(config.bands)} of {len(config.bands)}); "
              f"nothing written to {out}", file=sys.stderr, flush=True)
        return 1
    failed = f" ({len(run.errors)} of {len(config.bands)} bands failed)" if run.errors else ""
    _say(args, f"wrote {out} in {time.perf_counter() - t0:.1f} s{failed}")
    return 0


def _check_psf_args(args):
    """Every ``gsprep psf`` option checked before any work; errors name the flag."""
    from ._checks import check_integer, check_number, check_positive

    check_positive("--fwhm", args.fwhm)
    check_integer("--size", args.size, lower=3, odd=True)
    check_integer("--oversampling", args.oversampling, lower=1, upper=16)
    if args.degree != "auto":
        try:
            args.degree = int(args.degree)
        except ValueError:
            args.degree = -1
        if not 0 <= args.degree <= 3:
            msg = f"--degree must be 0, 1, 2, 3 or auto, got {args.degree!r}"
            raise ValueError(msg)
    if args.at is not None and not all(np.isfinite(args.at)):
        msg = f"--at must be two finite numbers X Y (0-based frame pixels), got {args.at}"
        raise ValueError(msg)
    check_positive("--nsigma", args.nsigma)
    check_integer("--npixels", args.npixels, lower=1)
    check_number("--q-min", args.q_min, lower=0.0, upper=1.0)
    check_number("--isolate", args.isolate, lower=0.0)
    check_integer("--sky-order", args.sky_order, lower=0, upper=12)
    check_integer("--sky-box", args.sky_box, lower=4)
    check_positive("--match-radius", args.match_radius, allow_none=True)
    check_positive("--saturation", args.saturation, allow_none=True)
    check_positive("--exptime", args.exptime, allow_none=True)
    check_positive("--gain", args.gain, allow_none=True)
    if args.preset is not None:
        from .presets import check_preset

        try:
            check_preset(args.preset)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
    _check_map_flags(args)
    if args.stars and args.gaia:
        msg = "give --stars FILE or --gaia, not both"
        raise ValueError(msg)
    for name, path in (("IMAGE", args.image), ("--stars", args.stars)):
        if path and not os.path.isfile(path):
            msg = f"{name}: no such file {path!r}"
            raise FileNotFoundError(msg)
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        msg = f"--out: folder {folder!r} does not exist"
        raise FileNotFoundError(msg)
    if os.path.exists(args.out) and not args.overwrite:
        msg = f"--out: {args.out!r} exists; add --overwrite to replace it"
        raise FileExistsError(msg)


# gsprep psf's map flags -> the BandSpec keys they fill
_MAP_FLAGS = {"noise": "--noise", "dq": "--dq", "user_mask": "--user-mask", "exposure": "--exposure"}


def _check_map_flags(args):
    """``--noise``/``--noise-kind``, ``--dq``/``--dq-bad``, ``--user-mask``, ``--exposure`` checked (files exist)."""
    from .config import _split_ref

    if args.noise is not None and args.noise_kind is None:
        msg = "--noise needs --noise-kind rms, variance, ivar or weight (what the map's pixels hold)"
        raise ValueError(msg)
    if args.noise_kind is not None and args.noise is None and args.preset is None:
        msg = "--noise-kind is set but there is no noise map: give --noise FILE[EXT]"
        raise ValueError(msg)
    if args.dq_bad is not None:
        if args.dq is None and args.preset is None:
            msg = "--dq-bad is set but there is no DQ map: give --dq FILE[EXT]"
            raise ValueError(msg)
        try:
            bits = tuple(int(b) for b in str(args.dq_bad).replace(" ", "").split(","))
        except ValueError:
            bits = ()
        if not bits or any(b <= 0 for b in bits):
            msg = (f"--dq-bad must be DQ bit values separated by commas (positive integers, e.g. 1,4,16), "
                   f"got {args.dq_bad!r}")
            raise ValueError(msg)
        args.dq_bad = bits
    for key, flag in _MAP_FLAGS.items():
        ref = getattr(args, key)
        if ref is None:
            continue
        path, ext = _split_ref(ref)
        if not path or ext == "":
            msg = f"{flag} must be FILE or FILE[EXT] (EXT an HDU index or EXTNAME), got {ref!r}"
            raise ValueError(msg)
        if not os.path.isfile(path):
            msg = f"{flag}: no such file {path!r}"
            raise FileNotFoundError(msg)


def _map_error(exc, args):
    """A map error of ``_band_maps`` (``noise: ...``, ``user_mask: ...``) restated with the flag's name."""
    import re

    text = str(exc)
    m = re.match(r"^(noise|dq|user_mask|exposure)\b", text)
    if m and getattr(args, m[1]) is not None:
        text = _MAP_FLAGS[m[1]] + text[m.end():]
        text = text.replace("noise_kind = ", "--noise-kind ").replace("dq_bad = ", "--dq-bad ")
    return type(exc)(text)


def cmd_psf(args):
    from astropy.table import Table

    from .io import read_image, write_psf
    from .pipeline import frame_psf_stars, frame_sigma, frame_sky
    from .psf import fit_epsf
    from .stars import StarCriteria

    _check_psf_args(args)
    stem = os.path.splitext(args.out)[0]
    figures = {} if args.no_figures else {n: f"{stem}_{n}.png" for n in ("sky", "funnel", "stars", "psf")}
    there = [path for path in figures.values() if os.path.exists(path)]
    if there and not args.overwrite:
        msg = f"--out: figure {there[0]!r} exists; add --overwrite to replace it (or --no-figures)"
        raise FileExistsError(msg)
    spec = maps = None
    given = {key: getattr(args, key) for key in _MAP_FLAGS}
    given.update(noise_kind=args.noise_kind, dq_bad=args.dq_bad)
    if args.preset or any(v is not None for v in given.values()):
        # the maps given and the preset's layout: HDU, unit, noise and DQ maps, exposure time, gain (the flags win)
        from .config import BandSpec
        from .pipeline import _band_maps
        from .presets import resolve_band

        spec = BandSpec(file=args.image, fwhm=args.fwhm, hdu=args.hdu, unit=args.unit, exptime=args.exptime,
                        gain=args.gain, preset=args.preset, **given)
        if args.preset:
            spec = resolve_band(spec, band=os.path.basename(args.image))
        else:
            import dataclasses

            spec = dataclasses.replace(spec, hdu=0 if args.hdu is None else args.hdu, unit=args.unit or "cR")
    hdu = spec.hdu if spec else (0 if args.hdu is None else args.hdu)
    unit = spec.unit if spec else (args.unit or "cR")
    img = read_image(args.image, hdu, unit=unit)
    if spec:
        try:
            maps = _band_maps(spec, img)
        except (OSError, ValueError) as exc:
            raise _map_error(exc, args) from None
    noise_map = maps is not None and maps.sigma is not None
    exposure_map = maps is not None and maps.exposure is not None
    exptime = args.exptime or (spec and spec.exptime) or img.exptime
    if unit == "cR" and exptime is None and not noise_map and not exposure_map:
        msg = (f"{args.image}: no EXPTIME in the header and count-rate data need one; give --exptime SECONDS "
               "(or --unit counts for data in counts)")
        raise ValueError(msg)
    if img.wcs is None and (args.stars or args.gaia):
        msg = f"{args.image}: the frame has no celestial WCS, so --stars/--gaia cannot be matched to it"
        raise ValueError(msg)
    _say(args, f"{args.image}: sky")
    # the same frame-level stages as gsprep prepare
    sky, keep_out = frame_sky(img, fwhm=args.fwhm, order=args.sky_order, method=args.sky_method, box=args.sky_box,
                              label=args.image, bad=None if maps is None else maps.bad | maps.user)
    clean = img.data - sky.background
    if noise_map:
        sigma = maps.sigma
    else:
        gain = args.gain or (spec and spec.gain) or img.gain
        if gain is None:
            import warnings

            from .io import AssumptionWarning

            warnings.warn(f"{args.image}: no GAIN in the header and no --gain: 1 e-/ADU assumed for the sigma "
                          "image's source Poisson noise; give --gain E_PER_ADU", AssumptionWarning, stacklevel=2)
            gain = 1.0
        sigma = frame_sigma(clean, sky, exptime=maps.exposure if exposure_map else exptime, gain=gain, unit=unit)
    if maps is not None:  # no valid noise, DQ-bad, no exposure, user-masked: kept out of the stars' fits
        from .pipeline import _fill_sigma

        out = maps.bad | maps.user
        sigma = _fill_sigma(np.where(out, np.nan, sigma), out, ~out)
    reference = None
    if args.stars:
        reference = Table.read(args.stars)
    elif args.gaia:
        from .stars import gaia_stars

        ny, nx = img.data.shape
        c = img.wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2).icrs
        radius = 0.75 * np.hypot(nx, ny) * img.pixel_scale
        reference = gaia_stars(c.ra.deg, c.dec.deg, radius)
    crit = StarCriteria(size=args.size, q_min=args.q_min, isolate=args.isolate,
                        gaia_radius=args.match_radius, saturation=args.saturation)
    sel, stamps = frame_psf_stars(img, clean, sigma, sky, fwhm=args.fwhm, nsigma=args.nsigma, npixels=args.npixels,
                                  stamp_size=args.size, criteria=crit, reference=reference)
    _say(args, "stars: " + ", ".join(f"{k} {v}" for k, v in sel.meta["funnel"].items()))
    _say(args, f"fitting the PSF to {len(stamps.ids)} stars (oversampling {args.oversampling})")
    res = fit_epsf(stamps, oversampling=args.oversampling, degree=args.degree)
    if args.degree != 0:
        _say(args, f"PSF variation across the frame: degree {res.degree}"
             + (" (chosen by held-out stars)" if args.degree == "auto" else ""))
    picked = sel[np.asarray(sel["selected"], bool)]
    write_psf(args.out, res, stars=picked["id", "x", "y"], overwrite=args.overwrite,
              at=None if args.at is None else tuple(args.at))
    from .plots import quality_lines

    _say(args, f"wrote {args.out}: " + "; ".join(quality_lines(res)))
    if figures:
        from .plots import fig_funnel, fig_psf, fig_sky, fig_stars

        name = os.path.basename(stem)
        fig_sky(img.data, sky.background, keep_out, rms=sky.rms, unit=unit, title=f"{name}: sky subtraction",
                save=figures["sky"])
        fig_funnel(sel, title=f"{name}: PSF star selection", save=figures["funnel"])
        fig_stars(stamps, res, title=f"{name}: PSF stars", save=figures["stars"])
        fig_psf(res, title=f"{name}: PSF", save=figures["psf"])
        if res.spatial is not None:
            from .plots import fig_psf_field

            figures["psf_field"] = f"{stem}_psf_field.png"
            fig_psf_field(res, title=f"{name}: PSF across the frame", save=figures["psf_field"])
        _say(args, f"wrote {stem}_{{{','.join(figures)}}}.png")
    return 0


def cmd_batch(args):
    from .batch import BatchProgress, dashboard_link, run_batch

    bar = BatchProgress(sys.stdout) if not args.quiet else None
    _say(args, f"gsprep batch: {args.targets} -> {args.out}"
               + (f" on {args.scheduler}" if args.scheduler else f" ({args.workers or 'auto'} local workers)"))

    def connected(client):
        link = dashboard_link(client, local=not args.scheduler)
        _say(args, f"gsprep batch: Dask dashboard at {link}" if link else
             "gsprep batch: no Dask dashboard (the local cluster serves one when bokeh is installed)")

    import logging

    try:
        res = run_batch(args.targets, args.config, args.out, scheduler=args.scheduler, workers=args.workers,
                        figures=not args.no_figures, retry_failed=not args.skip_failed,
                        progress=bar.target if bar else None, frame_progress=bar.frame if bar else None,
                        on_client=connected, dashboard=True,
                        dask_logs=logging.WARNING if args.debug else logging.CRITICAL)
    finally:
        if bar:
            bar.close()
    rate = f", {res.targets_per_minute:.1f} targets/min" if res.ran else ""
    print(f"gsprep batch: {res.total} targets: {res.done} done, {res.failed} failed; ran {res.ran} "
          f"in {res.elapsed_s:.0f} s{rate}; {res.skipped} already finished; manifest {res.manifest}", flush=True)
    return 0 if res.failed == 0 else 1


DEMO_BANDS = {"g": 2.4, "r": 3.0, "i": 3.8}  # PSF FWHM, pixels


def cmd_demo(args):
    from astropy.io import fits

    from .pipeline import load_config, prepare_target, write_products
    from .io import read_image
    from .simulate import demo_frame, moffat_psf

    out = args.out
    os.makedirs(os.path.join(out, "frames"), exist_ok=True)
    _say(args, f"gsprep demo: generating {len(DEMO_BANDS)} bands in {out}/frames")
    lines = ['[target]', 'name = "demo"', "ra = 150.1", "dec = 2.2", "r = 40.0", "",
             "[options]", "oversampling = 2", "stamp_size = 25", "sky_order = 2", ""]
    for i, (band, fwhm) in enumerate(DEMO_BANDS.items()):
        data, header = demo_frame(fwhm=fwhm, seed=i)
        path = os.path.join(out, "frames", f"demo_{band}.fits")
        fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(path, overwrite=True)
        lines += [f"[bands.{band}]", f'file = "frames/demo_{band}.fits"', f"fwhm = {fwhm}", "zeropoint = 25.0",
                  f'filter = "sloan_{band}"', ""]
    cfg_path = os.path.join(out, "demo.toml")
    with open(cfg_path, "w") as f:
        f.write("\n".join(lines))
    config = load_config(cfg_path)
    images = {b: read_image(s.file, s.hdu, band=b) for b, s in config.bands.items()}
    t0 = time.perf_counter()
    products = prepare_target(images, config.ra, config.dec, config, progress=lambda m: _say(args, m))
    write_products(products, config, images, out, figures=not args.no_figures, overwrite=True)
    print(f"{'band':<5} {'FWHM':>5} {'cutout':>7} {'masked':>7} {'PSF stars':>9} {'PSF rms err':>12} {'PSF max err':>12}")
    for band, p in products.items():
        if p.error:
            print(f"{band:<5} skipped: {p.error}")
            continue
        k = p.psf.oversampling
        kk = p.psf.psf.shape[0]
        truth = moffat_psf((kk, kk), (kk - 1) / 2, (kk - 1) / 2, fwhm=DEMO_BANDS[band] * k, beta=3.0, oversample=4)
        truth /= truth.sum()
        yy, xx = np.mgrid[:kk, :kk]
        inside = np.hypot(xx - (kk - 1) / 2, yy - (kk - 1) / 2) <= 3 * DEMO_BANDS[band] * k
        err = (p.psf.psf - truth)[inside] / truth.max()
        print(f"{band:<5} {DEMO_BANDS[band]:5.1f} {p.cutout.data.shape[-1]:>5}px {p.mask.mask.mean():7.0%} "
              f"{int((p.psf.flags == 0).sum()):>9} {100 * np.sqrt(np.mean(err**2)):11.3f}% {100 * np.abs(err).max():11.3f}%")
    print(f"(PSF errors: fraction of the true PSF's peak within 3 FWHM)  products in {out}/ "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


def _common():
    """Flags every subcommand takes after its name too (``gsprep psf ... --debug``)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks and every warning")
    c.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress lines")
    c.add_argument("--no-compile-cache", action="store_true", default=argparse.SUPPRESS,
                   help="do not use JAX's persistent compilation cache (default: ~/.cache/gsprep/jax, "
                        "or $GSPREP_COMPILE_CACHE; 0 turns it off)")
    return c


def build_parser():
    p = argparse.ArgumentParser(
        prog="gsprep",
        description="Prepare astronomical images (sky, cutouts, sigma, masks, PSFs) for GalfitS.",
    )
    p.add_argument("--version", action="version", version=f"gsprep {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and every warning")
    sub = p.add_subparsers(dest="command", title="commands")
    common = [_common()]

    pr = sub.add_parser("prepare", parents=common, help="prepare one target in every band of a TOML config")
    pr.add_argument("config", help="TOML file (see docs/guide.md)")
    pr.add_argument("--out", help="output folder (default: <name>-gsprep next to the config)")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace products already in the output folder (default: refuse)")
    pr.add_argument("--no-figures", action="store_true", help="do not write the PNG figures (default: write them)")
    pr.set_defaults(func=cmd_prepare)

    ps = sub.add_parser("psf", parents=common, help="build an empirical PSF from the stars of one frame")
    ps.add_argument("image", help="FITS frame")
    ps.add_argument("--fwhm", type=float, required=True, help="PSF FWHM guess, pixels (required)")
    ps.add_argument("--out", required=True, help="PSF FITS file to write (required)")
    ps.add_argument("--hdu", type=int, default=None,
                    help="HDU index of the image (default: 0) or, with --preset, the preset's")
    ps.add_argument("--unit", default=None, choices=["cR", "counts"],
                    help="data unit: count rate (counts/s) or counts (default: cR) or, with --preset, the preset's")
    ps.add_argument("--preset", default=None,
                    help="survey file layout: jwst_i2d, hst_drz, hst_drc, legacy, sdss_frame, 2mass or mef, or auto "
                         "(detected from the headers, said in one line); its "
                         "noise and DQ maps, exposure time, gain and units are used (the flags above win; default: none, the frame read as given)")
    ps.add_argument("--exptime", type=float, default=None,
                    help="exposure time, s (default: EXPTIME from the header; needed for --unit cR)")
    ps.add_argument("--gain", type=float, default=None,
                    help="e-/ADU (default: GAIN from the header, else 1 with a warning)")
    ps.add_argument("--noise", metavar="FILE[EXT]", default=None,
                    help="noise map replacing the computed sigma image (EXT an HDU index or EXTNAME; needs "
                         "--noise-kind; default: none, sigma computed, or the preset's)")
    ps.add_argument("--noise-kind", choices=("rms", "variance", "ivar", "weight"), default=None,
                    help="what --noise's pixels hold: rms (sigma), variance, ivar (1/variance) or weight (drizzle "
                         "IVM weight) (default: none; required with --noise)")
    ps.add_argument("--dq", metavar="FILE[EXT]", default=None,
                    help="DQ / bad-pixel map: its bad pixels are kept out of the sky fit and the stars "
                         "(default: none, or the preset's)")
    ps.add_argument("--dq-bad", metavar="BITS", default=None,
                    help="DQ bit values that mark a bad pixel, separated by commas, e.g. 1,4,16 (default: any "
                         "nonzero DQ is bad, or the preset's bits)")
    ps.add_argument("--user-mask", metavar="FILE", default=None,
                    help="user mask kept out of the sky fit and the stars: a FITS map (FILE[EXT], nonzero = masked) "
                         "or a DS9 region file (.reg; image or sky coordinates) (default: none)")
    ps.add_argument("--exposure", metavar="FILE[EXT]", default=None,
                    help="exposure map, s per pixel, used for the sigma image's source term instead of the "
                         "exposure time; pixels with exposure <= 0 are bad (default: none, the exposure time)")
    ps.add_argument("--stars", help="reference catalogue (ECSV/FITS with ra, dec in degrees) to match the stars to "
                                    "(default: none, stars chosen by shape alone)")
    ps.add_argument("--gaia", action="store_true",
                    help="match the stars to Gaia DR3 (network, cached; default: no match)")
    ps.add_argument("--match-radius", type=float, default=None,
                    help="reference match radius, arcsec (default: 1.5 x FWHM)")
    ps.add_argument("--size", type=int, default=25, help="stamp size, pixels, odd (default: %(default)s)")
    ps.add_argument("--oversampling", type=int, default=2,
                    help="PSF sub-pixels per native pixel, 1-16 (default: %(default)s)")
    ps.add_argument("--degree", default="auto",
                    help="how the PSF varies across the frame: polynomial degree 0-3 in the star's position, or "
                         "auto = chosen by held-out stars among the degrees the star count supports "
                         "(default: %(default)s)")
    ps.add_argument("--at", type=float, nargs=2, metavar=("X", "Y"), default=None,
                    help="write the PSF at this frame pixel (0-based) (default: the centre of the stars; the "
                         "spatial model is written with it either way)")
    ps.add_argument("--nsigma", type=float, default=5.0,
                    help="star detection threshold, x background rms (default: %(default)s)")
    ps.add_argument("--npixels", type=int, default=10,
                    help="minimum connected pixels of a star, pixels (default: %(default)s)")
    ps.add_argument("--q-min", type=float, default=0.8,
                    help="minimum axis ratio b/a of a PSF star, 0-1 (default: %(default)s)")
    ps.add_argument("--saturation", type=float, default=None,
                    help="saturation (or linearity) level in the frame's units before sky subtraction; stars whose "
                         "core reaches it are rejected (default: SATURATE/SATLEVEL/MAXLIN... from the header; "
                         "flat-topped stars are rejected either way)")
    ps.add_argument("--isolate", type=float, default=0.1,
                    help="largest fraction of a stamp's source flux from other sources, 0-1 (default: %(default)s)")
    ps.add_argument("--sky-order", type=int, default=2,
                    help="polynomial order of the sky fit, 0 = constant (default: %(default)s)")
    ps.add_argument("--sky-method", choices=("poly", "mesh"), default="poly",
                    help="sky model: a polynomial, or photutils' Background2D mesh (default: %(default)s)")
    ps.add_argument("--sky-box", type=int, default=64,
                    help="mesh box size, pixels, with --sky-method mesh (default: %(default)s)")
    ps.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    ps.add_argument("--no-figures", action="store_true", help="do not write the PNG figures (default: write them)")
    ps.set_defaults(func=cmd_psf)

    bt = sub.add_parser("batch", parents=common,
                        help="prepare many targets on Dask (resumable; see docs/guide.md)")
    bt.add_argument("targets", help="targets table (CSV/ECSV) with name, ra, dec [, r, file_<band>]")
    bt.add_argument("--config", required=True, help="bands TOML; band files may be templates like frames/{name}_g.fits")
    bt.add_argument("--out", required=True, help="output folder: <name>/ per target and manifest.csv")
    bt.add_argument("--scheduler", help="address of a running Dask scheduler (default: a local cluster)")
    bt.add_argument("--workers", type=int, help="local worker processes (default: cores, at most 4)")
    bt.add_argument("--skip-failed", action="store_true",
                    help="do not retry targets that failed before (default: retry them)")
    bt.add_argument("--no-figures", action="store_true", help="do not write the PNG figures (default: write them)")
    bt.set_defaults(func=cmd_batch)

    dm = sub.add_parser("demo", parents=common, help="run the whole pipeline on a generated 3-band field")
    dm.add_argument("--out", default="gsprep-demo", help="output folder (default: %(default)s)")
    dm.add_argument("--no-figures", action="store_true", help="do not write the PNG figures (default: write them)")
    dm.set_defaults(func=cmd_demo)
    return p


# Python advice in library messages, restated for the command line (pattern -> replacement)
_CLI_WORDS = (
    (r"pass overwrite=True", "add --overwrite"),
    (r"gsprep\.crossmatch / select_stars\(reference=\.\.\.\)", "gsprep psf --stars FILE"),
    (r"\bworkers must be\b", "--workers must be"),
    (r"^out_dir: ", "--out: "),
)

# warnings about the frames' headers: summed up in one line (each in full with --debug)
_HEADER_WARNINGS = ("HeaderWarning", "FITSFixedWarning", "VerifyWarning")


def _cli_message(text):
    import re

    for pattern, repl in _CLI_WORDS:
        text = re.sub(pattern, repl, text)
    return " ".join(str(text).split())


class _Warnings:
    """Show warnings as one line each (``gsprep: warning: ...``); header fixes only counted unless ``debug``."""

    def __init__(self, debug):
        self.debug = debug
        self.header = []
        self.seen = set()

    def show(self, message, category, filename, lineno, file=None, line=None):
        if self.debug:
            print(f"gsprep: warning: {category.__name__}: {message} ({filename}:{lineno})", file=sys.stderr,
                  flush=True)
            return
        text = _cli_message(str(message))
        if category.__name__ in _HEADER_WARNINGS:
            self.header.append(text)
        elif text not in self.seen:
            self.seen.add(text)
            print(f"gsprep: warning: {text}", file=sys.stderr, flush=True)

    def summary(self):
        if self.header and not self.debug:
            n = len(self.header)
            print(f"gsprep: note: astropy fixed or flagged the headers of the frames ({n} warning{'s' * (n > 1)}); "
                  "--debug shows them", file=sys.stderr, flush=True)


def main(argv=None):
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    if args.command is None:
        parser.print_help()
        return 0
    shown = _Warnings(args.debug)
    if not getattr(args, "no_compile_cache", False):
        from ._jaxcache import default_cache_dir, use_compile_cache

        use_compile_cache(default_cache_dir())
    try:
        with warnings.catch_warnings():
            # a command line shows every warning once, as one line (deprecations only with --debug)
            warnings.simplefilter("default")
            if not args.debug:
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            warnings.showwarning = shown.show
            return args.func(args)
    except KeyboardInterrupt:
        if args.command == "batch":
            msg = "gsprep: interrupted; finished targets are kept: run the same command again to resume"
        else:
            msg = "gsprep: interrupted; nothing half-written was left"
        print(msg, file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # one clear line, not a traceback, unless --debug
        if args.debug:
            raise
        print(f"gsprep: error: {_cli_message(str(exc))}", file=sys.stderr)
        return 2
    finally:
        shown.summary()


if __name__ == "__main__":
    sys.exit(main())

"""gsprep: prepare astronomical images for multi-band galaxy fitting with GalfitS.

Pure functions on arrays: sky subtraction, cutouts, sigma images, masks, the
GalfitS cutout file, PSF stars and an empirical PSF fitted in JAX.
Conventions: 0-based (x, y) pixels, RA/Dec in ICRS degrees, cut sizes in
arcsec, masks 1 = excluded, PSFs sum to 1.

The public names are loaded on first use (PEP 562), so ``import gsprep`` and
``gsprep --help`` do not import JAX, Dask or photutils until a stage needs them.
The function :func:`cutout` lives in the module ``gsprep.cutouts`` (plural), so
that ``gsprep.cutout`` is always the function whatever was imported before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the submodule that defines it (loaded on first access)
_LAZY = {
    "MASK_BITS": "_bits",
    "BatchResult": "batch",
    "read_manifest": "batch",
    "read_targets": "batch",
    "run_batch": "batch",
    "Cutout": "cutouts",
    "cutout": "cutouts",
    "Segmentation": "detection",
    "detect": "detection",
    "Image": "io",
    "read_image": "io",
    "read_psf": "io",
    "write_cutout": "io",
    "write_psf": "io",
    "Mask": "masks",
    "TargetNotFoundError": "masks",
    "cutout_mask": "masks",
    "sigma_from_weight": "noise",
    "sigma_image": "noise",
    "BandProducts": "pipeline",
    "PrepareConfig": "pipeline",
    "TargetRun": "pipeline",
    "load_config": "pipeline",
    "prepare_target": "pipeline",
    "run_target": "pipeline",
    "EPSFResult": "results",
    "PSFConvergenceWarning": "results",
    "PSFExtrapolationWarning": "results",
    "fit_epsf": "psf",
    "psf_model_stamps": "psf",
    "psf_shape": "results",
    "to_epsf_convention": "psf",
    "SkyFit": "sky",
    "fit_sky": "sky",
    "sky_mask": "sky",
    "NoStarsError": "stars",
    "StarCriteria": "stars",
    "Stamps": "stars",
    "crossmatch": "stars",
    "extract_stamps": "stars",
    "find_stars": "stars",
    "gaia_stars": "stars",
    "select_stars": "stars",
}

# submodules reachable as attributes (``gsprep.sky``) without importing them first
_SUBMODULES = frozenset({
    "batch", "cli", "cutouts", "detection", "epsf", "io", "masks", "noise", "pipeline", "plots", "psf", "results",
    "simulate", "sky", "stars",
})

if TYPE_CHECKING:  # what the lazy loader gives, spelled out for type checkers and IDEs
    from ._bits import MASK_BITS
    from .batch import BatchResult, read_manifest, read_targets, run_batch
    from .cutouts import Cutout, cutout
    from .detection import Segmentation, detect
    from .io import Image, read_image, read_psf, write_cutout, write_psf
    from .masks import Mask, TargetNotFoundError, cutout_mask
    from .noise import sigma_from_weight, sigma_image
    from .pipeline import (
        BandProducts,
        PrepareConfig,
        TargetRun,
        load_config,
        prepare_target,
        run_target,
    )
    from .psf import (
        EPSFResult,
        PSFConvergenceWarning,
        fit_epsf,
        psf_model_stamps,
        psf_shape,
        to_epsf_convention,
    )
    from .sky import SkyFit, fit_sky, sky_mask
    from .stars import (
        NoStarsError,
        Stamps,
        StarCriteria,
        crossmatch,
        extract_stamps,
        find_stars,
        gaia_stars,
        select_stars,
    )


def __getattr__(name):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)

__all__ = [
    "__version__",
    "BandProducts",
    "PrepareConfig",
    "load_config",
    "prepare_target",
    "run_target",
    "TargetRun",
    "run_batch",
    "read_targets",
    "read_manifest",
    "BatchResult",
    "Cutout",
    "EPSFResult",
    "fit_epsf",
    "read_psf",
    "to_epsf_convention",
    "psf_model_stamps",
    "psf_shape",
    "PSFConvergenceWarning",
    "PSFExtrapolationWarning",
    "write_psf",
    "MASK_BITS",
    "Mask",
    "TargetNotFoundError",
    "cutout_mask",
    "Image",
    "Segmentation",
    "SkyFit",
    "NoStarsError",
    "StarCriteria",
    "Stamps",
    "crossmatch",
    "extract_stamps",
    "find_stars",
    "gaia_stars",
    "select_stars",
    "cutout",
    "detect",
    "fit_sky",
    "read_image",
    "sigma_from_weight",
    "sigma_image",
    "sky_mask",
    "write_cutout",
]

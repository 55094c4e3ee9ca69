"""gsprep: prepare astronomical images for multi-band galaxy fitting with GalfitS.

Pure functions on arrays: sky subtraction, cutouts, sigma images, masks, the
GalfitS cutout file, PSF stars and an empirical PSF fitted in JAX.
Conventions: 0-based (x, y) pixels, RA/Dec in ICRS degrees, cut sizes in
arcsec, masks 1 = excluded, PSFs sum to 1.
"""

__version__ = "0.1.0"

from .cutout import Cutout, cutout
from .detection import Segmentation, detect
from ._bits import MASK_BITS
from .psf import EPSFResult, PSFConvergenceWarning, fit_epsf, psf_model_stamps, psf_shape, to_epsf_convention
from .io import Image, read_image, read_psf, write_cutout, write_psf
from .masks import Mask, TargetNotFoundError, cutout_mask
from .noise import sigma_from_weight, sigma_image
from .pipeline import BandProducts, PrepareConfig, TargetRun, load_config, prepare_target, run_target
from .batch import BatchResult, read_manifest, read_targets, run_batch
from .sky import SkyFit, fit_sky, sky_mask
from .stars import (
    NoStarsError,
    StarCriteria,
    Stamps,
    crossmatch,
    extract_stamps,
    find_stars,
    gaia_stars,
    select_stars,
)

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

"""Former home of the PSF fit; it lives in :mod:`gsprep.psf` now.  Kept so old imports keep working."""

from .psf import *  # noqa: F401,F403
from .psf import __all__  # noqa: F401

"""The empirical PSF: a jit-compiled joint fit of one PSF and every star's centre, flux and local sky.

* :mod:`.model`: the PSF on a fine grid, shifted (band-limited, no wrap-around)
  and binned onto each star; shape measurements.
* :mod:`.solver`: damped Gauss-Newton steps on a typed state.
* :mod:`.robust`: outlying pixels and stars left out.
* :mod:`.validation`: the regularisation chosen by held-out stars, and the
  quality report.
* :mod:`.photutils_bridge`: photutils' EPSFBuilder on the same stamps.
* :mod:`.fit`: :func:`fit_epsf`, read top to bottom.

Convention: gsprep's oversampled PSF is the flux in each sub-pixel (summing
each ``k x k`` block gives the native-pixel PSF).  photutils' ePSF instead
samples the pixel-integrated PSF at ``1/k`` pixel steps;
:func:`to_epsf_convention` converts gsprep's PSF to that convention exactly.
"""

from ..results import FLAG_BITS, EPSFResult, PSFConvergenceWarning, PSFExtrapolationWarning
from .fit import fit_epsf, fit_stars, oracle_psf
from .model import psf_model_stamps, psf_shape, to_epsf_convention
from .photutils_bridge import photutils_epsf_raw

__all__ = [
    "EPSFResult",
    "FLAG_BITS",
    "PSFConvergenceWarning",
    "PSFExtrapolationWarning",
    "fit_epsf",
    "fit_stars",
    "oracle_psf",
    "photutils_epsf_raw",
    "psf_model_stamps",
    "psf_shape",
    "to_epsf_convention",
]

"""JAX's persistent compilation cache for gsprep's commands (the first PSF fit of a process compiles for seconds)."""

from __future__ import annotations

import os

__all__ = ["default_cache_dir", "use_compile_cache"]


def default_cache_dir():
    """``$GSPREP_COMPILE_CACHE`` if set (``0``/``off`` disables), else ``$XDG_CACHE_HOME/gsprep/jax`` (``~/.cache``)."""
    env = os.environ.get("GSPREP_COMPILE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no", "false") else env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gsprep", "jax")


def use_compile_cache(folder):
    """Point JAX's persistent compilation cache at ``folder`` (``None``: leave JAX as it is).

    Compiled fits are then reused by later processes: a second ``gsprep psf``
    skips the compilation.  A folder that cannot be created is ignored (the
    cache is only a speed-up).
    """
    if not folder:
        return None
    import jax

    if jax.config.jax_compilation_cache_dir == folder:
        return folder
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return folder

"""The command line's house-keeping (issue 12): fast start, help texts, --debug anywhere, gsprep.cutout."""

import argparse
import inspect
import os
import re
import subprocess
import sys

import pytest

import gsprep
from gsprep.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax", "dask", "distributed", "photutils", "equinox", "matplotlib", "scipy")


def _python(code, *args):
    """Run ``code`` in a fresh interpreter (nothing imported before it); returns the finished process."""
    env = {**os.environ, "GSPREP_COMPILE_CACHE": "0"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=300)


_REPORT_HEAVY = f"import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"


def test_import_gsprep_imports_no_stage():
    p = _python("import gsprep; " + _REPORT_HEAVY)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_io_depends_downward_only():
    """Reading and writing products (PSF files included) needs neither the PSF fit nor JAX (issue 12)."""
    code = ("import sys, os, tempfile, numpy as np, gsprep.io as io\n"
            "from gsprep.results import EPSFResult\n"
            "p = np.zeros((9, 9)); p[4, 4] = 1.0\n"
            "r = EPSFResult(p, np.zeros((1, 2)), np.ones(1), np.zeros(1), np.ones(1), np.zeros(0), np.zeros(1, int))\n"
            "f = os.path.join(tempfile.mkdtemp(), 'psf.fits')\n"
            "io.write_psf(f, r); back = io.read_psf(f); assert abs(back.psf.sum() - 1) < 1e-6\n"
            "print(sorted(m for m in sys.modules if m.startswith(('gsprep.psf', 'jax'))))")
    p = _python(code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["psf", "--help"], ["batch", "--help"], ["--version"]])
def test_help_imports_no_stage(argv):
    code = ("import sys\nfrom gsprep.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n" + _REPORT_HEAVY)
    p = _python(code, *argv)
    assert p.returncode == 0, p.stderr
    assert "gsprep" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "[]"


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare on one line


@pytest.mark.parametrize(("flag", "default"), [("--oversampling", "2"), ("--size", "25"), ("--sky-order", "2"),
                                               ("--nsigma", "5.0"), ("--q-min", "0.8"), ("--hdu", "0")])
def test_psf_help_shows_defaults(capsys, flag, default):
    out = _help(capsys, "psf")
    m = re.search(re.escape(flag) + r" [A-Z_]+ (.*?)(?= --[a-z]|$)", out)
    assert m, out
    assert f"(default: {default})" in m.group(1), m.group(1)


def _subparsers():
    p = build_parser()
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", ["prepare", "psf", "batch", "demo"])
def test_every_option_has_help_and_default(command):
    for action in _subparsers()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {name}: no help text"
        if action.option_strings and not action.required and action.default not in (False, argparse.SUPPRESS):
            assert "default" in action.help, f"{command} {name}: the default is not shown"


PSF_BAD = ["psf", "no-such-frame.fits", "--fwhm", "3", "--out", "psf.fits", "--oversampling", "0",
           "--no-compile-cache"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command(where):
    argv = ["--debug", *PSF_BAD] if where == "before" else [*PSF_BAD, "--debug"]
    p = _python("import sys; from gsprep.cli import main; sys.exit(main(sys.argv[1:]))", *argv)
    assert p.returncode != 0
    assert "unrecognized arguments" not in p.stderr
    assert "Traceback (most recent call last)" in p.stderr
    assert "--oversampling" in p.stderr.strip().splitlines()[-1]


def test_bad_option_without_debug_is_one_line():
    p = _python("import sys; from gsprep.cli import main; sys.exit(main(sys.argv[1:]))", *PSF_BAD)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("gsprep: error: --oversampling")


@pytest.mark.parametrize("argv", [["psf", "f.fits", "--fwhm", "3", "--out", "o.fits", "--quiet", "--debug"],
                                  ["prepare", "c.toml", "--debug", "--quiet"],
                                  ["batch", "t.csv", "--config", "c.toml", "--out", "d", "--debug", "--quiet"],
                                  ["demo", "--quiet", "--debug"]])
def test_global_flags_after_every_command(argv):
    args = build_parser().parse_args(argv)
    assert args.debug is True
    assert args.quiet is True


def test_debug_before_the_command_is_not_reset_by_it():
    args = build_parser().parse_args(["--debug", "demo"])
    assert args.debug is True
    assert getattr(args, "quiet", False) is False


_ALL_SUBMODULES = """
import importlib, inspect, pkgutil, sys
import gsprep
names = sorted(m.name for m in pkgutil.walk_packages(gsprep.__path__, "gsprep."))
for name in names if sys.argv[1] == "forward" else names[::-1]:
    importlib.import_module(name)
assert inspect.isfunction(gsprep.cutout), gsprep.cutout
from gsprep import cutout
assert cutout is gsprep.cutout and cutout.__module__ == "gsprep.cutouts", cutout
print(len(names))
"""


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_cutout_is_the_function_after_every_submodule(order):
    p = _python(_ALL_SUBMODULES, order)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) > 10  # every stage and gsprep.psf's modules were imported


@pytest.mark.parametrize("first", ["gsprep.masks", "gsprep.pipeline", "gsprep.io", "gsprep.cli"])
def test_cutout_after_a_stage_that_uses_it(first):
    # the stage imports the module that defines cutout before gsprep.cutout is ever looked up
    p = _python(f"import inspect, importlib; importlib.import_module({first!r}); import gsprep\n"
                "f = gsprep.cutout; importlib.import_module(f.__module__)\n"
                "assert gsprep.cutout is f and inspect.isfunction(f), gsprep.cutout")
    assert p.returncode == 0, p.stderr


def test_no_module_named_like_the_function():
    import importlib.util

    assert importlib.util.find_spec("gsprep.cutout") is None  # the module is gsprep.cutouts
    assert importlib.util.find_spec("gsprep.cutouts") is not None


@pytest.mark.parametrize("name", gsprep.__all__)
def test_every_public_name_resolves(name):
    obj = getattr(gsprep, name)
    assert not inspect.ismodule(obj), name
    assert name in dir(gsprep)
    if name != "__version__" and name != "MASK_BITS":
        assert obj.__module__.startswith("gsprep."), (name, obj.__module__)


def test_star_import_and_unknown_names():
    p = _python("from gsprep import *; import gsprep\n"
                "missing = [n for n in gsprep.__all__ if n not in globals()]\nassert not missing, missing")
    assert p.returncode == 0, p.stderr
    assert not hasattr(gsprep, "no_such_name")
    with pytest.raises(AttributeError, match="no_such_name"):
        gsprep.no_such_name  # noqa: B018
    assert inspect.ismodule(gsprep.sky) and gsprep.sky.fit_sky is gsprep.fit_sky  # submodules as attributes

"""The ``gsprep`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser():
    p = argparse.ArgumentParser(
        prog="gsprep",
        description="Prepare astronomical images (sky, cutouts, sigma, masks, PSFs) for GalfitS.",
    )
    p.add_argument("--version", action="version", version=f"gsprep {__version__}")
    p.add_subparsers(dest="command", title="commands")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

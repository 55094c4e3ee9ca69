"""Write docs/api.md from the docstrings of gsprep's public names: ``python docs/make_api.py``."""

import inspect
import os

import gsprep

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    lines = ["# gsprep API reference", "", "Generated from the docstrings by `python docs/make_api.py`.", ""]
    for name in sorted(n for n in gsprep.__all__ if not n.startswith("_")):
        obj = getattr(gsprep, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        lines += [f"## `{name}{sig}`", "", "```text", inspect.getdoc(obj) or "(no docstring)", "```", ""]
    with open(os.path.join(HERE, "api.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()

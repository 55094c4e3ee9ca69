"""The ```python blocks of README.md (and of any docs/*.md) run as written.

The blocks of one file share a namespace and run in order, as a reader would
run them, in a fresh empty working folder.  A block whose first line is a
comment starting with ``# not run by the tests:`` (followed by the reason,
e.g. it needs the network) is skipped; the comment is visible to readers.
"""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_MARK = "# not run by the tests:"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(path):
    """``(first line number, source)`` of every ```python block in a Markdown file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


DOCS = [p for p in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
        if python_blocks(p)]


def test_blocks_are_found():
    # the extraction itself: the README has python blocks, so a broken pattern cannot pass silently
    assert os.path.join(ROOT, "README.md") in DOCS
    assert len(python_blocks(os.path.join(ROOT, "README.md"))) >= 2


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    ran = 0
    for line, source in python_blocks(path):
        if source.lstrip().startswith(SKIP_MARK):
            continue
        # line numbers in tracebacks are the Markdown file's own
        code = compile("\n" * (line - 1) + source, os.path.relpath(path, ROOT), "exec")
        exec(code, namespace)
        ran += 1
    assert ran, f"every python block of {path} is marked '{SKIP_MARK}'"

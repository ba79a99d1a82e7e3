"""Sphinx configuration of the fedjax_seq documentation (MyST Markdown pages).

Build (from the repository root, after `pip install -e ".[docs]"`):

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(DOCS, "_ext"))
sys.path.insert(0, os.path.dirname(DOCS))  # fedjax_seq, also without an installed package

import fedjax_seq  # pylint: disable=wrong-import-position

project = "fedjax_seq"
release = version = fedjax_seq.__version__
copyright = "the fedjax_seq authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "config_fields",
    "plain_docstrings",
    "repository_files",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

# MyST: GitHub-style anchors for headings down to ###, so that `page.md#section` links
# work on the site as they do where the repository is browsed.
myst_heading_anchors = 3

# The address of the repository's files (e.g. https://github.com/OWNER/REPO/blob/main):
# links from the pages to files outside docs/ then point there; empty, they are downloads.
repository_url = os.environ.get("FEDJAX_SEQ_REPOSITORY_URL", "")

# API reference: every public member of each module, its docstring shown as the plain
# text it is (docs/_ext/plain_docstrings.py).
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# Config field reference (docs/_ext/config_fields.py): meanings for fields whose
# assignment in fedjax_seq/api.py:default_config() has no comment. Empty: every field has
# one; the build refuses an entry for a field api.py comments, so each meaning has one source.
config_fields_supplement = {}

html_theme = "alabaster"
html_title = "fedjax_seq"
html_theme_options = {
    "description": "FedSeq and its baselines in JAX",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path = []

"""Sphinx extension: links to repository files outside docs/, and the API reference's coverage.

The pages link to files such as `../benchmarks/RESULTS.md` or `../configs/paper.py`
with relative links, which work where the repository is browsed (a forge renders
docs/*.md). In the built site:

- with `repository_url` set in conf.py (the address of the repository's files, e.g.
  `https://github.com/OWNER/REPO/blob/main`), every such link points there;
- without it, a link to a Markdown file outside docs/ becomes a download of the file,
  as MyST already makes other non-page files, so the site stands on its own.

Every module of the `fedjax_seq` package must be documented by an `automodule`
directive on some page (in an `{eval-rst}` block, since autodoc writes reStructuredText):
a module nobody lists is a warning (an error under -W).
"""

from __future__ import annotations

import os
import pkgutil
import re

AUTOMODULE = re.compile(r"^\.\. automodule::\s+(\S+)\s*$", re.M)  # inside ```{eval-rst}


def _outside_links(app, doctree) -> None:
  """doctree-read: links to repository files outside the source directory."""
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  from sphinx import addnodes  # pylint: disable=import-outside-toplevel

  srcdir = os.path.abspath(app.srcdir)
  root = os.path.dirname(srcdir)
  docdir = os.path.dirname(app.env.doc2path(app.env.current_document.docname))
  base = app.config.repository_url.rstrip("/")

  def outside(path: str) -> str | None:
    """The path relative to the repository root, for an existing file outside docs/."""
    path = os.path.abspath(path)
    if path.startswith(srcdir + os.sep) or not path.startswith(root + os.sep):
      return None
    return os.path.relpath(path, root) if os.path.isfile(path) else None

  for node in list(doctree.findall(addnodes.pending_xref)):
    if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
      continue
    target = node["reftarget"]
    if not os.path.isabs(target):
      target = os.path.join(docdir, target)
    rel = outside(target + ".md") or outside(target)
    if rel is None:
      continue
    if base:
      anchor = f"#{node['reftargetid']}" if node.get("reftargetid") else ""
      new = nodes.reference("", "", refuri=f"{base}/{rel}{anchor}", internal=False)
    else:
      new = addnodes.download_reference(
          "", "", reftarget=os.path.relpath(os.path.join(root, rel), docdir), refexplicit=True,
          refdoc=node["refdoc"], refdomain="", reftype="download")
    new += node.children
    node.replace_self(new)

  if base:
    for node in list(doctree.findall(addnodes.download_reference)):
      if "://" in node["reftarget"]:
        continue
      rel = outside(os.path.join(docdir, node["reftarget"]))
      if rel is not None:
        new = nodes.reference("", "", refuri=f"{base}/{rel}", internal=False)
        new += node.children
        node.replace_self(new)


def _check_api_coverage(app, env) -> None:
  """env-check-consistency: every module of the package has an automodule on some page."""
  from sphinx.util import logging  # pylint: disable=import-outside-toplevel
  import fedjax_seq  # pylint: disable=import-outside-toplevel

  documented = set()
  for docname in env.found_docs:
    with open(env.doc2path(docname), encoding="utf-8") as f:
      documented.update(AUTOMODULE.findall(f.read()))
  modules = {"fedjax_seq"} | {m.name for m in pkgutil.walk_packages(fedjax_seq.__path__,
                                                                      "fedjax_seq.")
                              if not m.name.rsplit(".", 1)[1].startswith("_")}
  for name in sorted(modules - documented):
    logging.getLogger(__name__).warning(
        "module %s is not in the API reference: add an automodule directive for it "
        "to a page under docs/api/", name)


def setup(app):
  app.add_config_value("repository_url", "", "env")
  app.connect("doctree-read", _outside_links, priority=400)  # before downloads are collected
  app.connect("env-check-consistency", _check_api_coverage)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

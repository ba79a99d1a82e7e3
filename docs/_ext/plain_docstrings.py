"""Sphinx extension: the package's docstrings shown as the plain text they are.

The docstrings of `fedjax_seq` are written for `help()` and the source, not in
reStructuredText: indented continuation lines, `**kwargs`, code examples without
`::`. Parsed as reStructuredText they would render wrongly and warn. So each
docstring is shown as written: its first paragraph (the summary) as a paragraph,
`backticked` spans as code, and the rest as a preformatted block, indentation kept.
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\*_|`<>\[\]:])")


def _escape(text: str) -> str:
  return _SPECIAL.sub(r"\\\1", text)


def _summary(text: str) -> str:
  """One paragraph of reStructuredText: `spans` as inline literals, the rest escaped."""
  pieces = text.split("`")
  if len(pieces) % 2 == 0:  # an unpaired backtick: no literals
    return _escape(text)
  out = ""
  for i, piece in enumerate(pieces):
    if i % 2 == 0:
      # "\ " (an escaped space) renders as nothing: it ends a literal that a word follows
      out += ("\\ " if out.endswith("``") and piece[:1].isalnum() else "") + _escape(piece)
    elif piece and piece == piece.strip():
      out += ("\\ " if out[-1:].isalnum() else "") + f"``{piece}``"
    else:
      out += _escape(piece)
  return out


def _plain(app, what, name, obj, options, lines: list[str]) -> None:
  """autodoc-process-docstring: rewrite `lines` in place."""
  del app, what, name, obj, options
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    return
  first = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
  summary = " ".join(line.strip() for line in lines[:first])
  rest = lines[first:]
  while rest and not rest[0].strip():
    rest.pop(0)
  out = [_summary(summary)]
  if rest:
    out += ["", "::", ""] + ["   " + line if line.strip() else "" for line in rest]
  lines[:] = out


def setup(app):
  app.connect("autodoc-process-docstring", _plain)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

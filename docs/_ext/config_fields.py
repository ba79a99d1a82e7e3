"""Sphinx extension: the config field reference, generated from `fedjax_seq.api.default_config`.

`default_config()` is the one source of the config's fields. It sets every field as

    c.SECTION.FIELD = VALUE  # what the field means

and creates one section per registry entry in loops (`config.algorithm.NAME` from
`fedjax_seq.algorithms.registry.ALGORITHMS`, `config.model.NAME` from
`fedjax_seq.registry.MODELS`, `config.data.NAME` from `fedjax_seq.registry.DATASETS`).
This extension builds the reference table from it at doc-build time:

- the field paths and their defaults come from calling `default_config()`;
- each field's meaning is the comment on its assignment, read from the source of
  `default_config` with `ast` (which line assigns which field) and `tokenize` (the
  comments on those lines);
- a field of a registry section is described from its registry entry;
- a field that is neither commented nor in a registry section stops the build
  (`ExtensionError`), so the reference cannot fall behind the code.

`conf.py` may name meanings for fields whose assignment has no comment yet
(`config_fields_supplement`); an entry there for a field that has a comment, or that
does not exist, stops the build too, so each meaning has exactly one source.

The page writes ```` ```{config-fields} ```` where the tables go: one section per
config section, in the order `default_config` creates them, each followed by one
section for its registry entries' settings (`config.algorithm.NAME`, ...).

Nothing here imports Sphinx at module level: `fields()` and `sections()` are plain
functions (the tests read the generated rows through them).
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from typing import Any, Callable, NamedTuple


class Field(NamedTuple):
  path: str      # e.g. "client.lr", "algorithm.fedprox.mu"
  default: Any   # the value default_config() gives it
  meaning: str   # its comment in api.py, or its registry entry's description
  registered: tuple[str, ...] = ()  # for a field naming a registry entry: the registered names


class Section(NamedTuple):
  name: str      # "" for the top-level fields, else e.g. "client", or "algorithm.NAME" (registry)
  meaning: str   # the comment on the section's assignment, or what the registry sections are
  fields: list[Field]


class DriftError(Exception):
  """default_config() and its comments disagree (a field without a meaning, ...)."""


def _registries() -> dict[str, tuple[str, Callable[[], tuple[str, ...]]]]:
  """Config section -> (what its per-entry subsections are, the registered names)."""
  from fedjax_seq import registry as seams  # pylint: disable=import-outside-toplevel
  from fedjax_seq.algorithms import registry  # pylint: disable=import-outside-toplevel
  return {
      "algorithm": ("algorithm", lambda: tuple(registry.ALGORITHMS)),
      "model": ("model", seams.MODELS.names),
      "data": ("dataset", seams.DATASETS.names),
  }


def _named_fields() -> dict[str, Callable[[], tuple[str, ...]]]:
  """Fields whose value is a registered name -> the registered names (listed in the table)."""
  from fedjax_seq import registry as seams  # pylint: disable=import-outside-toplevel
  from fedjax_seq.algorithms import registry  # pylint: disable=import-outside-toplevel
  return {
      "algorithm.name": lambda: tuple(registry.ALGORITHMS),
      "model.name": seams.MODELS.names,
      "fedseq.evaluator_model": seams.MODELS.names,
      "data.name": seams.DATASETS.names,
      "fedseq.grouping": seams.GROUPINGS.names,
      "fedseq.measure": seams.MEASURES.names,
      "fedseq.representation": seams.REPRESENTATIONS.names,
  }


def assignment_comments(function: Callable[..., Any]) -> tuple[dict[str, str], dict[str, int]]:
  """({dotted path: trailing comment}, {dotted path: line}) of `function`'s `c.A.B = ...` lines.

  `c` is the name the function returns. A comment counts when it ends a line of
  the assignment statement (not a comment on a line of its own).
  """
  source = textwrap.dedent(inspect.getsource(function))
  definition = ast.parse(source).body[0]
  returned = [n.value.id for n in ast.walk(definition)
              if isinstance(n, ast.Return) and isinstance(n.value, ast.Name)]
  if len(set(returned)) != 1:
    raise DriftError(f"{function.__qualname__} must return one config variable, got {returned}")
  root = returned[0]

  trailing = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT and token.line[:token.start[1]].strip():
      trailing[token.start[0]] = token.string.lstrip("#").strip()

  comments, lines = {}, {}
  for node in ast.walk(definition):
    if not isinstance(node, ast.Assign):
      continue
    for target in node.targets:
      parts = []
      while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
      if not parts or not isinstance(target, ast.Name) or target.id != root:
        continue  # not c.A.B (e.g. c.algorithm[name] = ..., made from a registry)
      path = ".".join(reversed(parts))
      if path in lines:
        raise DriftError(f"config field {path} is assigned twice in {function.__qualname__} "
                         f"(lines {lines[path]} and {node.lineno})")
      lines[path] = node.lineno
      text = " ".join(trailing[n] for n in range(node.lineno, node.end_lineno + 1)
                      if n in trailing)
      if text:
        comments[path] = text
  return comments, lines


def _leaves(config, prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted path, value) of every field of a ConfigDict, sections flattened."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  out = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out += _leaves(value, path + ".")
    else:
      out.append((path, value))
  return out


def sections(supplement: dict[str, str] | None = None) -> list[Section]:
  """The reference, section by section, in the order default_config() creates them.

  Raises DriftError where a field has no meaning (no comment, no registry section,
  no supplement) or where `supplement` names a field that has a comment or no field.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  from fedjax_seq import api  # pylint: disable=import-outside-toplevel

  supplement = dict(supplement or {})
  config = api.default_config()
  comments, lines = assignment_comments(api.default_config)
  registries, named = _registries(), _named_fields()

  for path in supplement:
    if path in comments:
      raise DriftError(f"config_fields_supplement names {path}, which api.py now comments "
                       f"({comments[path]!r}): remove it from docs/conf.py")
  leaf_paths = {path for path, _ in _leaves(config)}
  for path in supplement:
    if path not in leaf_paths:
      raise DriftError(f"config_fields_supplement names {path}, which is not a config field: "
                       "remove it from docs/conf.py")
  for path in named:
    if path not in leaf_paths:
      raise DriftError(f"docs/_ext/config_fields.py lists {path} as naming a registry entry, "
                       "but it is not a config field")

  def describe(path: str, value: Any) -> Field:
    registered = named[path]() if path in named else ()
    if path in comments:
      return Field(path, value, comments[path], registered)
    if path in supplement:
      return Field(path, value, supplement[path], registered)
    raise DriftError(f"config field {path} (default {value!r}) has no comment in "
                     "fedjax_seq/api.py:default_config(): write one on its assignment, "
                     f"`c.{path} = {value!r}  # what it means`")

  top = Section("", "", [])
  out = [top]
  keys = sorted(config.keys(), key=lambda k: lines.get(k, float("inf")))
  for key in keys:
    value = config[key]
    if not isinstance(value, ml_collections.ConfigDict):
      if key not in lines:
        raise DriftError(f"config field {key} is not assigned as c.{key} = ... in default_config")
      top.fields.append(describe(key, value))
      continue
    own, sub = Section(key, comments.get(key, ""), []), []
    kind, names = registries.get(key, ("", lambda: ()))
    registered = names()
    for name in sorted(value.keys(), key=lambda k: lines.get(f"{key}.{k}", float("inf"))):
      item, path = value[name], f"{key}.{name}"
      if isinstance(item, ml_collections.ConfigDict) and path not in lines and name in registered:
        sub.append((registered.index(name), [
            Field(f"{path}.{field}", v, f"hyperparameter of {kind} `{name}`")
            for field, v in _leaves(item)]))
      elif isinstance(item, ml_collections.ConfigDict):
        raise DriftError(f"config section {path} is neither assigned in default_config nor made "
                         f"from a registry; docs/_ext/config_fields.py cannot describe it")
      else:
        if path not in lines:
          raise DriftError(f"config field {path} is not assigned as c.{path} = ... "
                           "in default_config")
        own.fields.append(describe(path, item))
    out.append(own)
    if sub:  # one section for all entries' settings, in registration order
      out.append(Section(f"{key}.NAME", f"each registered {kind}'s own settings (its registry "
                         f"entry's hyperparameters), read only by that {kind}",
                         [f for _, rows in sorted(sub, key=lambda s: s[0]) for f in rows]))
  if not top.fields:
    out.remove(top)
  return out


def fields(supplement: dict[str, str] | None = None) -> list[Field]:
  """Every field of the reference, in order."""
  return [f for s in sections(supplement) for f in s.fields]


# ---------------------------------------------------------------------------------- Sphinx


def _inline(text: str) -> list:
  """Docutils nodes for a comment: `backticked` spans become inline literals."""
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  out = []
  for i, piece in enumerate(text.split("`")):
    if piece:
      out.append(nodes.literal(piece, piece) if i % 2 else nodes.Text(piece))
  return out


def _table(rows: list[Field]):
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  table = nodes.table(classes=["config-fields"])
  group = nodes.tgroup(cols=3)
  table += group
  for width in (30, 15, 55):
    group += nodes.colspec(colwidth=width)

  def row(*cells):
    r = nodes.row()
    for cell in cells:
      entry = nodes.entry()
      entry += nodes.paragraph("", "", *cell)
      r += entry
    return r

  head = nodes.thead()
  head += row([nodes.Text("field")], [nodes.Text("default")], [nodes.Text("meaning")])
  group += head
  body = nodes.tbody()
  for f in rows:
    default = repr(f.default)
    meaning = _inline(f.meaning)
    if f.registered:
      meaning.append(nodes.Text(". Registered: "))
      for i, name in enumerate(f.registered):
        meaning += [nodes.Text(", ")] if i else []
        meaning.append(nodes.literal(name, name))
    body += row([nodes.literal(f.path, f.path)], [nodes.literal(default, default)], meaning)
  group += body
  return table


def _directive():
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  from sphinx.util.docutils import SphinxDirective  # pylint: disable=import-outside-toplevel

  class ConfigFields(SphinxDirective):
    """```{config-fields}```: one section and table per config section."""

    has_content = False

    def run(self):
      out = []
      for s in self.env.app.config_field_sections:
        title = f"config.{s.name}" if s.name else "Top-level fields"
        section = nodes.section(ids=[nodes.make_id("config-" + (s.name or "top-level"))])
        section += nodes.title(title, "", *([nodes.literal(title, title)] if s.name else
                                            [nodes.Text(title)]))
        if s.meaning:
          section += nodes.paragraph("", "", *_inline(s.meaning[0].upper() + s.meaning[1:] + "."))
        section += _table(s.fields)
        self.state.document.note_implicit_target(section, section)
        out.append(section)
      return out

  return ConfigFields


def _compute(app) -> None:
  """builder-inited: the reference is computed once per build, before any page is read."""
  from sphinx.errors import ExtensionError  # pylint: disable=import-outside-toplevel
  try:
    app.config_field_sections = sections(app.config.config_fields_supplement)
  except DriftError as e:
    raise ExtensionError(f"config field reference: {e}") from None


def setup(app):
  app.add_config_value("config_fields_supplement", {}, "env")
  app.add_directive("config-fields", _directive())
  app.connect("builder-inited", _compute)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

"""Files the commands write and read: atomic writes, JSON, output directories, config paths.

Every command writes its outputs through `write_atomic` (a temporary file
renamed over the target), so a killed command never leaves a half-written
file, and refuses an unusable output directory with `check_directory`
before it computes anything. Bad input raises `InputError` naming the path.
Configs are written as JSON and compared, looked up and tabulated by their
dotted paths (`flatten`, `lookup`).
"""

import json
import os
from typing import Any

from fedjax_seq.errors import InputError


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same directory and a rename."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as fh:
    fh.write(data.encode() if isinstance(data, str) else data)
  os.replace(tmp, path)


def write_json(path: str, obj: Any, indent: int = 1) -> None:
  """`obj` as sorted, indented JSON, written atomically."""
  write_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
  """The JSON in `path`; InputError saying what is wrong with it."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path} does not exist") from None
  except json.JSONDecodeError as e:
    raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"cannot read {path}: {e}") from None


def check_directory(path: str, what: str = "workdir") -> None:
  """A directory we can write to, or one we can create; nothing is created here.

  `what` names the path in messages (e.g. "workdir", "--workdir").
  """
  if not path:
    raise InputError(f"{what} is required")
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise InputError(f"{what} {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise InputError(f"{what} {path} is not writable")
    return
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise InputError(f"cannot create {what} {path}: {parent} is not a writable directory")


def flatten(tree: dict, prefix: str = "") -> dict:
  """A nested dict (a config's JSON) as {"section.field": value}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def lookup(config, path: str, default: Any = None):
  """The value at a dotted path ("fedseq.max_clients") of a config or nested dict.

  `default` where a part of the path is absent.
  """
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return default
    node = node[part]
  return node

"""The command-line layer's one error path, shared by every command.

Bad input (an `InputError`, a flag that does not parse, a config file that
does not load) is printed as one `error: ...` line on stderr and the command
exits non-zero, with no traceback; anything else is a bug and keeps its
traceback. main.py, `python -m fedjax_seq.study`, the sweep and the
plotting and results commands all go through here.
"""

import sys
from typing import Any, Callable, NoReturn, Sequence

from fedjax_seq.errors import InputError

FLAG_ERRORS = (KeyError, AttributeError, ValueError, TypeError, OSError)


def one_line(message: Any) -> str:
  """A message as one line: escaped newlines and quotes from absl's repr() removed."""
  return " ".join(str(message).replace("\\n", " ").replace("\\'", "").split())


def report(message: Any) -> None:
  """Prints `error: MESSAGE` on stderr, as one line."""
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def fail(message: Any, code: int = 2) -> NoReturn:
  """Prints `error: MESSAGE` on stderr and exits with `code`."""
  report(message)
  sys.exit(code)


def parse_flags(flag_values, argv: Sequence[str],
                explain: Callable[[Sequence[str]], str | None] | None = None) -> list[str]:
  """absl parsing; a bad flag or override is one line (`explain` may say why better)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flag_values(argv)
  except (flags.Error, *FLAG_ERRORS) as e:
    fail((explain(argv) if explain else None) or f"invalid flags: {e}")


def loaded_config(flag_values):
  """The --config flag's config; a file that does not load is one line.

  config_flags defers a config file's load error to the first use of the config.
  """
  try:
    config = flag_values.config
    config.seed  # pylint: disable=pointless-statement
    return config
  except Exception as e:  # pylint: disable=broad-except  # the config file's own error
    fail(f"cannot load --config: {config_error(e)}")


def config_error(error: BaseException | None) -> str:
  """What a config file's own error says, without config_flags' deferred-load preamble."""
  message = str(error).replace("Configuration is not available because of an earlier failure "
                               "to load:", "").strip()
  return message or type(error).__name__


def run(command: Callable[[], Any], code: int = 1) -> Any:
  """command(), with an InputError printed as one line and exit `code`."""
  try:
    return command()
  except InputError as e:
    fail(e, code)

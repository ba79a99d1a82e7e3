"""The library's one exception type for bad input.

Library code raises `InputError` (a `ValueError`) with a plain message; where
the message is about one argument, `argument` names it, so the layer that
reads the config (training/experiment.py) can name the config field from a
mapping. The command-line layer (fedjax_seq/cli.py) prints any `InputError`
as one `error: ...` line with a non-zero exit and no traceback; any other
exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Bad input: a wrong name, an out-of-range value, missing data, divergence."""

  def __init__(self, message: str, *, argument: str | None = None):
    super().__init__(message)
    self.argument = argument

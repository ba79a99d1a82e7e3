"""The one exception type for bad user input.

`main.py` turns a `UserError` into a one-line `error: ...` on stderr and a
non-zero exit, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """Bad input: a wrong name, an out-of-range value, missing data, divergence."""

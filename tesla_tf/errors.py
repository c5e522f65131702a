"""The project's own errors: what a tool reports as one `FATAL <message>` line (tesla_tf.cli).

Every message names the flag or file at fault and what was expected. The classes also derive from the
builtin a caller would catch without knowing this module (ValueError, FileNotFoundError, RuntimeError).

  UsageError            a flag or argument is wrong (exit status 2)
  MissingDataError      a dataset, store, run or file that should exist does not
  CorruptFileError      a file exists but cannot be used (truncated, damaged, missing keys)
  IncompatibleRunError  the run directory, store or set was made with other settings, or is in use
  DivergenceError       the distillation left finite values; names the checkpoint a rerun resumes from
"""


class TeslaError(Exception):
  """Base class; `exit_code` is the process status a tool exits with."""
  exit_code = 1


class UsageError(TeslaError, ValueError):
  exit_code = 2


class MissingDataError(TeslaError, FileNotFoundError):
  pass


class CorruptFileError(TeslaError, ValueError):
  pass


class IncompatibleRunError(TeslaError, ValueError):
  pass


class DivergenceError(TeslaError, RuntimeError):
  pass


# Marks the message of a bad file found inside a tf.data pipeline (data/sources.py asserts it, cli.py finds
# it in TF's error text).
DATA_ERROR = "tesla_tf data error:"


def data_error_message(text):
  """The one-line message of a DATA_ERROR assertion inside TF's error text, or None."""
  if DATA_ERROR not in text:
    return None
  message = text.split(DATA_ERROR, 1)[1].split("\n")[0]
  return " ".join(message.replace("[", " ").replace("]", " ").split())

"""How every tool starts and fails: `cli.run(main)` in place of `absl.app.run(main)`.

- Flagfiles are read before absl parses them: absl keeps the rest of a line as the value, so a line
  `--run_dir=runs/a  # my run` would silently name the directory "runs/a  # my run". Such a line, and a
  flagfile that includes itself, are refused with the file and line.
- The project's own errors (tesla_tf.errors) and absl's app.UsageError become one `FATAL <message>` line
  on stderr and exit status 1 (2 for usage errors); their traceback is printed only with --verbosity=1 or higher. A full disk or a
  read-only directory is reported the same way, naming the file. Ctrl-C exits with status 130 and says
  that the run resumes. Anything else keeps its traceback: it is a bug.
"""

import errno
import os
import re
import sys
import traceback

from absl import app
from absl import flags

from tesla_tf import errors

_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_TF_ENVIRONMENT_ERRORS = ("PermissionDeniedError", "ResourceExhaustedError")


def flagfile_problem(path, seen=()):
  """The first problem of flagfile `path` and the flagfiles it includes, as one line, or None."""
  real = os.path.realpath(path)
  if real in seen:
    return f"{path} includes itself (through --flagfile); remove the cycle."
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError as e:
    return f"--flagfile={path}: cannot read it ({e.strerror})."
  for number, line in enumerate(lines, 1):
    text = line.strip()
    if not text or text.startswith(("#", "//")):
      continue
    if " #" in text or "\t#" in text:
      return (f"{path}:{number}: {text!r} has a comment after its value, which absl would keep as part "
              "of the value; put comments on their own line.")
    if text.startswith(("--flagfile=", "-flagfile=")):
      problem = flagfile_problem(text.split("=", 1)[1], seen + (real,))
      if problem:
        return problem
  return None


def _flagfiles(argv):
  args = iter(argv)
  for arg in args:
    if arg in ("--flagfile", "-flagfile"):
      yield next(args, "")
    elif arg.startswith(("--flagfile=", "-flagfile=")):
      yield arg.split("=", 1)[1]


def _fatal(message, code):
  print(f"FATAL {message}", file=sys.stderr)
  sys.exit(code)


def _environment_message(e):
  """One line for a fault of the machine (full disk, read-only or forbidden path) or of a data file
  found inside TF, else None."""
  if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
    return f"{e.filename or 'a file'}: {e.strerror}."
  text = str(getattr(e, "message", e))
  if errors.data_error_message(text):  # a bad file found inside a tf.data pipeline (data/sources.py)
    return errors.data_error_message(text)
  if type(e).__name__ in _TF_ENVIRONMENT_ERRORS and type(e).__module__.startswith("tensorflow"):
    text = str(getattr(e, "message", e)).splitlines()[0]
    return re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]$", "", text)  # TF's op decorations
  return None


def guarded(main):
  """main(argv) with the project's errors turned into one FATAL line (see the module docstring)."""
  def wrapped(argv):
    try:
      return main(argv)
    except (errors.TeslaError, app.UsageError) as e:
      if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
        traceback.print_exc()
      _fatal(e, getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
      _fatal("Interrupted. Every file written so far is complete; rerun the same command to resume.", 130)
    except Exception as e:  # pylint: disable=broad-except
      message = _environment_message(e)
      if message is None:
        raise
      if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
        traceback.print_exc()
      _fatal(message, 1)
  return wrapped


def run(main, argv=None):
  """absl.app.run(main) after checking the flagfiles, with main guarded."""
  argv = sys.argv if argv is None else argv
  for path in _flagfiles(argv[1:]):
    problem = flagfile_problem(path)
    if problem:
      _fatal(problem, 2)
  app.run(guarded(main), argv=argv)

"""A run directory's lock and its record of settings.

  LOCK          held (flock) by the one process distilling into the directory; holds its pid and host.
                The kernel drops the lock when the process dies, so a lock left by a killed run is
                recognised (it is free but still names a holder) and taken over with a warning.
  config.json   the settings of the run (DistillConfig fields, plus the experts' model), written once
                a run's settings are accepted; a resumed run is compared with it field by field.
  flags.cfg     the same settings as tools/distill.py flags, replayable with --flagfile, written at the
                same moment (by the library: a run started from Python has one too).
  checkpoints/  tf.train.Checkpoint files (CheckpointManager, the newest three kept).
  tensorboard/  event files.
"""

import fcntl
import glob
import json
import os
import re
import shutil
import socket
import time

from absl import logging
import tensorflow as tf

from tesla_tf import errors
from tesla_tf import files

LOCK_FILE = "LOCK"
RECORD_FILE = "config.json"
FLAGS_FILE = "flags.cfg"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
# Settings that fix the shapes (or the meaning) of what the checkpoints hold: never changed on resume.
SHAPE_FIELDS = ("dataset", "ipc", "labels", "model")
# Settings a resumed run may change without comment.
_QUIET_FIELDS = ("run_dir",)


class Lock:
  """An exclusive lock on a run directory for the life of a `with` block.

  Raises (on entry):
    IncompatibleRunError: another live process holds the directory; the message names its pid and host.
  """

  def __init__(self, run_dir):
    self.path = os.path.join(run_dir, LOCK_FILE)
    self._file = None

  def __enter__(self):
    f = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise errors.IncompatibleRunError(
          f"--run_dir={os.path.dirname(self.path)} is in use by {holder}; wait for it to finish, or "
          "use another --run_dir.") from None
    f.seek(0)
    stale = f.read().strip()
    if stale:
      logging.warning("%s: taking over the lock of %s, which is no longer running.", self.path, stale)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    f.flush()
    os.fchmod(f.fileno(), files.file_mode())
    self._file = f
    return self

  def __exit__(self, *exc):
    self._file.seek(0)
    self._file.truncate()
    self._file.close()  # closing releases the flock
    self._file = None
    return False


def read_record(run_dir):
  """The settings recorded in <run_dir>/config.json, or None for a new run directory."""
  path = os.path.join(run_dir, RECORD_FILE)
  if not os.path.exists(path):
    return None
  return files.read_json(path, remedy="restore it, or delete it to resume without the settings check")


def check_resume(run_dir, record):
  """Compares the settings of a resumed run with those recorded; refuses shape-changing differences.

  Args:
    run_dir: the run directory.
    record: the new run's settings (json-able dict).

  Raises:
    IncompatibleRunError: a SHAPE_FIELDS setting differs; names the flag and both values.
  """
  old = read_record(run_dir)
  if old is None:
    return
  for field in SHAPE_FIELDS:
    if field in old and old[field] != record.get(field):
      what = ("the experts' model (from --store_dir)" if field == "model" else f"--{field}")
      raise errors.IncompatibleRunError(
          f"--run_dir={run_dir} holds a run with {what} = {_show(old[field])}; this one has "
          f"{_show(record.get(field))}. Use another --run_dir, or the run's own setting.")
  for field in sorted(set(old) | set(record)):
    if field in SHAPE_FIELDS or field in _QUIET_FIELDS or old.get(field) == record.get(field):
      continue
    logging.warning("Resuming %s with --%s=%s (the run so far used %s).", run_dir, field,
                    _show(record.get(field)), _show(old.get(field)))


def as_flags(settings):
  """`--name=value` lines of a settings dict (None left out, sequences comma-joined): a flagfile."""
  def text(value):
    if isinstance(value, bool):
      return "true" if value else "false"
    if isinstance(value, (list, tuple)):
      return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)
  return "".join(f"--{name}={text(value)}\n" for name, value in settings.items() if value is not None)


def write_record(run_dir, record, flags_text):
  """Writes config.json and flags.cfg once the settings are accepted."""
  files.write_json(os.path.join(run_dir, RECORD_FILE), record, indent=1)
  files.write_text(os.path.join(run_dir, FLAGS_FILE), flags_text)


def restore_newest(entries, directory):
  """Restores the newest checkpoint in `directory` that reads, falling back to older ones; removes the
  staging directories of saves that were killed or ran out of disk.

  `entries` ({name: trackable}, what the checkpoint was saved from) are restored one at a time: a
  whole-checkpoint restore reads every tensor before assigning any, so a variable and its momentum were
  held twice over at once (4 copies of the synthetic set at the peak, 3 this way).

  Returns:
    The path restored, or None when the directory holds no checkpoint.

  Raises:
    CorruptFileError: checkpoints exist but none can be read.
  """
  for partial in glob.glob(os.path.join(glob.escape(directory), "ckpt-*_temp")):
    shutil.rmtree(partial, ignore_errors=True)
  paths = sorted(glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")),
                 key=lambda p: int(re.search(r"ckpt-(\d+)\.index$", p).group(1)), reverse=True)
  problems = []
  for index_path in paths:
    path = index_path[:-len(".index")]
    try:
      for name, value in entries.items():
        tf.train.Checkpoint(**{name: value}).restore(path).assert_existing_objects_matched()
      return path
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      problems.append(f"{path}: {str(getattr(e, 'message', e)).splitlines()[0]}")
      logging.warning("Checkpoint %s cannot be read (%s); trying the one before.", path, problems[-1])
  if problems:
    raise errors.CorruptFileError(f"No checkpoint in {directory} can be read ({'; '.join(problems)}). "
                                  "Move the directory aside to start the run again.")
  return None


def _show(value):
  return json.dumps(value)

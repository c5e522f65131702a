"""The one place that writes files: complete or absent, with the permissions of any published file.

`atomic_write` writes a temp file beside the target, fsyncs it and renames it into place; `temp_dir`
makes a staging directory for a tree that is renamed into place the same way. Temp files are created
0600 and directories 0700 by the standard library; what is published gets 0666 / 0777 minus the umask
(0644 / 0755 under the usual umask 022), as `open()` and `os.makedirs` would give, so a colleague can
read a published set or store.
"""

import glob
import hashlib
import json
import os
import shutil
import tempfile

from tesla_tf import errors


def umask():
  """The process umask (read without changing it for longer than the call)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def file_mode():
  return 0o666 & ~umask()


def dir_mode():
  return 0o777 & ~umask()


def fsync_dir(directory):
  """Makes a rename in `directory` durable (no-op where directories cannot be opened)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_temp(directory, name, write_fn, mode="wb"):
  """A complete, fsynced temp file `.<name>.*.tmp` in directory, written by write_fn(file); its path."""
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=".tmp")
  try:
    os.fchmod(fd, file_mode())
    with os.fdopen(fd, mode) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    os.remove(tmp)
    raise
  return tmp


def atomic_write(path, write_fn, mode="wb"):
  """Writes `path` through write_fn(file) on a temp file in the same directory, then renames it."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = write_temp(directory, os.path.basename(path), write_fn, mode)
  try:
    os.replace(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise
  fsync_dir(directory)


def write_text(path, text):
  atomic_write(path, lambda f: f.write(text), mode="w")


def temp_dir(parent, name):
  """A new staging directory `.<name>.tmp-*` in parent, with the published directory mode."""
  path = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
  os.chmod(path, dir_mode())
  return path


def remove_stale_temps(parent, name):
  """Removes the staging directories of `name` (temp_dir) left in parent by a killed process.

  Call it only while holding what serialises writers of `name` (e.g. the run directory lock).
  """
  for path in glob.glob(os.path.join(glob.escape(parent), f".{name}.tmp-*")):
    shutil.rmtree(path, ignore_errors=True)


def read_json(path, expected=dict, remedy=""):
  """The JSON value in `path`, which must be a `expected`; anything else is a CorruptFileError naming it."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.CorruptFileError(f"{path} is not readable JSON ({e}){'; ' + remedy if remedy else '.'}") from e
  if not isinstance(value, expected):
    raise errors.CorruptFileError(f"{path}: expected a JSON {expected.__name__}, found a "
                                  f"{type(value).__name__}{'; ' + remedy if remedy else '.'}")
  return value


def write_json(path, obj, indent=2):
  """Writes obj as indented JSON (and a final newline) to path atomically."""
  atomic_write(path, lambda f: (json.dump(obj, f, indent=indent), f.write("\n")), mode="w")


def atomic_path(path, write_fn):
  """Calls write_fn(temp path beside `path`) — for writers that open files by name — then renames the
  file into place with the published mode; returns write_fn's value."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  os.close(fd)
  try:
    result = write_fn(tmp)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(directory)
  return result


def publish_once(tmp, path):
  """Moves the complete file tmp to path unless path exists (then tmp is dropped); True if published.

  A hard link makes this atomic and exclusive, so concurrent processes agree on one file; filesystems
  without hard links fall back to a rename after an existence check.
  """
  try:
    os.link(tmp, path)
    published = True
  except FileExistsError:
    published = False
  except OSError:
    published = not os.path.exists(path)
    if published:
      os.replace(tmp, path)
  if os.path.exists(tmp):
    os.remove(tmp)
  fsync_dir(os.path.dirname(path) or ".")
  return published


def sha256(path):
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()

"""The trajectory store: a directory of expert trajectories sharing one manifest (written by experts.py,
streamed by the distiller).

Layout (one directory):
  manifest.json        what every expert in it shares (dataset, model, layout, preprocessing, recipe);
                       created once, atomically, never rewritten.
  zca.npz              the ZCA matrices when preprocessing is "zca" (fitted once per store).
  expert_00000.npy     trajectory [E+1, P] float32, written to a temp file, fsynced, renamed.
  expert_00000.json    per-expert info (seed, test accuracy per epoch, wall time), written the same way
                       AFTER the .npy: an expert is finished iff its .json exists, so a crash at any
                       point never leaves a half-written expert that reads as finished.
Several processes may fill one store (disjoint `expert_start` ranges): only the per-expert files are
written after creation.
"""

import dataclasses
import json
import os
import re
import time
from typing import Optional

import numpy as np

from tesla_tf import errors
from tesla_tf import files
from tesla_tf import models
from tesla_tf.data import holdout as holdout_lib
from tesla_tf.data import preprocess
from tesla_tf.data import sources
from tesla_tf.models.flat import FlatModel

MANIFEST = "manifest.json"
FORMAT = "tesla_tf.trajectory_store/1"
# Fields that must agree for two sets of experts to share one store.
COMPAT_FIELDS = ("format", "dataset", "data_options", "num_classes", "image_shape", "model", "model_kwargs", "num_params",
                 "layout", "preprocessing", "epochs", "lr_teacher", "momentum", "batch_size",
                 "dsa_strategy", "seed", "max_train_examples", "holdout", "precision")
_EXPERT_RE = re.compile(r"^expert_(\d+)\.json$")


class StoreMismatchError(errors.IncompatibleRunError):
  """A store holds experts of another setting than the one asked for."""


def _jsonable(value):
  """Tuples → lists, numpy scalars → Python: the form a value takes after a json round trip."""
  return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


@dataclasses.dataclass(frozen=True)
class Manifest:
  """manifest.json: what every expert of a store shares. Nothing outside this module reads its raw keys.

  Attributes:
    dataset: its name for sources.get_info.  num_classes, image_shape: the dataset's.
    class_names: the C class names in label order ([] in stores made before 2026-12: the registry's).
    data_options: how the data is read (sources.OPTIONS that were set, e.g. {"image_size": 32}).
    model, model_kwargs: the architecture (models.build) and its options.
    num_params, layout: the flat parameter vector (FlatModel.layout()).
    preprocessing: the preprocessor's to_dict() (its files, e.g. zca.npz, are in the store).
    epochs: E, so every trajectory is [E + 1, num_params].
    lr_teacher, momentum, batch_size, dsa_strategy, seed, max_train_examples: the expert recipe.
    holdout: the validation split held out of expert training ({"size", "seed"}, data/holdout.py).
    precision: how the experts' layers computed (models.PRECISIONS; stores before 2026-12: float32).
  """
  dataset: str
  model: str
  model_kwargs: dict
  num_params: int
  layout: list
  preprocessing: dict
  epochs: int
  lr_teacher: float
  num_classes: Optional[int] = None
  image_shape: Optional[list] = None
  momentum: float = 0.0
  batch_size: Optional[int] = None
  dsa_strategy: Optional[str] = None
  seed: int = 0
  max_train_examples: Optional[int] = None
  holdout: dict = dataclasses.field(default_factory=dict)
  class_names: list = dataclasses.field(default_factory=list)
  data_options: dict = dataclasses.field(default_factory=dict)
  precision: str = "float32"
  format: str = FORMAT
  created: str = ""

  @classmethod
  def from_dict(cls, d, path):
    """The manifest of a parsed manifest.json; CorruptFileError naming `path` if it is not one."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
      found = d.get("format") if isinstance(d, dict) else type(d).__name__
      raise errors.CorruptFileError(f"{path}: not a trajectory store manifest (format {found!r}, expected "
                                    f"{FORMAT!r}).")
    d = {("dsa_strategy" if k == "augment_strategy" else k): v for k, v in d.items()}  # stores before 2026-12
    names = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     and f.name not in d)
    if missing:
      raise errors.CorruptFileError(f"{path}: trajectory store manifest lacks {', '.join(missing)}.")
    return cls(**{k: v for k, v in d.items() if k in names})

  def to_dict(self):
    return dataclasses.asdict(self)

  @property
  def model_spec(self):
    """{"name": model, **model_kwargs}: the architecture as a distilled set records it."""
    return {"name": self.model, **self.model_kwargs}


class TrajectoryStore:
  """A directory of expert trajectories sharing one manifest.

  Attributes:
    path: the store directory.
    manifest: its Manifest.
  """

  def __init__(self, path):
    self.path = os.fspath(path)
    manifest_path = os.path.join(self.path, MANIFEST)
    if not os.path.isfile(manifest_path):
      raise errors.MissingDataError(
          f"No trajectory store at {self.path}: {manifest_path} is missing. Create one with "
          f"tools/train_experts.py --store_dir={self.path}.")
    self.manifest = Manifest.from_dict(files.read_json(manifest_path), manifest_path)

  @classmethod
  def create_or_open(cls, path, manifest_fields):
    """Creates the store with `manifest_fields`, or opens it if it exists with the same fields.

    Creation is atomic and exclusive (hard link of a complete temp file), so concurrent processes agree
    on one manifest.

    Args:
      path: store directory (created if missing).
      manifest_fields: dict of Manifest fields (json-able values); the COMPAT_FIELDS it has must match an
        existing store.

    Returns:
      The TrajectoryStore.

    Raises:
      StoreMismatchError: the existing store was made for other settings; names the fields.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    fields = _jsonable({"format": FORMAT, **manifest_fields})
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
      created = {**fields, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
      Manifest.from_dict(created, manifest_path)  # refuse an incomplete manifest before publishing it
      files.publish_once(files.write_temp(path, MANIFEST, lambda f: json.dump(created, f, indent=1), "w"),
                         manifest_path)
    store = cls(path)
    store.check_compatible({k: v for k, v in fields.items() if k in COMPAT_FIELDS})
    return store

  def check_compatible(self, expected):
    """Raises StoreMismatchError naming every field of `expected` whose value differs in the manifest.

    Args:
      expected: dict field → value (e.g. dataset, model, model_kwargs, layout, preprocessing).
    """
    expected = _jsonable(expected)
    have = self.manifest.to_dict()
    bad = [k for k in expected if have.get(k) != expected[k]]
    if bad:
      details = "; ".join(f"{k}: store has {_short(have.get(k))}, asked for {_short(expected[k])}"
                          for k in bad)
      raise StoreMismatchError(
          f"Trajectory store {self.path} was made for other settings ({details}). Use another "
          f"--store_dir, or the store's settings.")

  def compatible_with(self, dataset, epochs_needed):
    """Raises unless the store's experts serve distilling `dataset` with targets up to `epochs_needed`.

    Returns:
      The sorted finished experts, verified (size, header, finite values).
    """
    m = self.manifest
    if m.dataset != dataset:
      raise errors.IncompatibleRunError(f"--store_dir={self.path} holds experts of {m.dataset!r}, not of "
                                        f"--dataset={dataset!r}.")
    if epochs_needed > m.epochs:
      raise errors.UsageError(f"--max_start_epoch + --expert_epochs = {epochs_needed} exceeds the experts' "
                              f"{m.epochs} epochs in {self.path}.")
    finished = self.finished()
    if not finished:
      raise errors.MissingDataError(f"--store_dir={self.path} has no finished expert; run "
                                    "tools/train_experts.py.")
    self.verify(finished)
    return finished

  def build_model(self, precision="float32"):
    """The store's architecture as a FlatModel computing in `precision` (models.PRECISIONS), checked
    against the store's parameter layout."""
    m = self.manifest
    fmodel = FlatModel(models.build(m.model, m.num_classes, m.image_shape, precision=precision,
                                    **m.model_kwargs))
    self.check_compatible({"layout": fmodel.layout()})
    return fmodel

  def dataset_info(self, data_dir=None):
    """The sources.DatasetInfo of the experts' data at data_dir, read as they read it."""
    return sources.get_info(self.manifest.dataset, data_dir, **self.manifest.data_options)

  def holdout(self):
    """The validation split the experts were trained without (data/holdout.py)."""
    return holdout_lib.Holdout(**self.manifest.holdout)

  def preprocessor(self):
    """The preprocessing every expert of the store was trained in (ZCA read from the store's file)."""
    return preprocess.from_dict(self.manifest.preprocessing, self.path)

  def _file(self, index, suffix):
    return os.path.join(self.path, f"expert_{int(index):05d}{suffix}")

  def is_finished(self, index):
    return os.path.isfile(self._file(index, ".json"))

  def finished(self):
    """Sorted indices of the experts whose trajectory and info are completely written."""
    return sorted(int(m.group(1)) for m in map(_EXPERT_RE.match, os.listdir(self.path)) if m)

  def __len__(self):
    return len(self.finished())

  def write(self, index, trajectory, info):
    """Stores expert `index` atomically: the trajectory first, then its info (which marks it finished).

    Args:
      index: expert index >= 0.
      trajectory: float32 [E+1, P] flat parameters at epochs 0..E.
      info: json-able dict (seed, accuracies, wall time...).
    """
    trajectory = np.asarray(trajectory, np.float32)
    expected = (self.manifest.epochs + 1, self.manifest.num_params)
    if trajectory.shape != expected:
      raise ValueError(f"Expert {index}: trajectory shape {trajectory.shape}, store {self.path} expects "
                       f"[epochs + 1, num_params] = {list(expected)}.")
    if not np.all(np.isfinite(trajectory)):
      raise ValueError(f"Expert {index}: trajectory has NaN/inf (training diverged); lower --lr_teacher.")
    files.atomic_write(self._file(index, ".npy"), lambda f: np.save(f, trajectory))
    record = _jsonable({**info, "index": int(index), "shape": list(trajectory.shape)})
    files.atomic_write(self._file(index, ".json"), lambda f: json.dump(record, f, indent=1), mode="w")

  def info(self, index):
    """The info dict written with expert `index`."""
    self._check_index(index)
    with open(self._file(index, ".json")) as f:
      return json.load(f)

  def read(self, index, epochs=None):
    """Expert `index`'s trajectory, memory-mapped.

    Args:
      index: a finished expert index.
      epochs: None (all E+1 rows), a slice, or a list of epoch numbers.

    Returns:
      float32 [E+1, P] (memmap), or the selected rows [k, P] (a memmap view for a slice, a copy for a list).
    """
    self._check_index(index)
    path = self._file(index, ".npy")
    expected = (self.manifest.epochs + 1, self.manifest.num_params)
    try:
      trajectory = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
      trajectory, expected = e, f"a readable .npy of shape {list(expected)}"
    if getattr(trajectory, "shape", None) != expected:
      raise errors.CorruptFileError(f"{path}: expected {expected}, found {getattr(trajectory, 'shape', trajectory)}; "
                       "delete it and its .json and rerun tools/train_experts.py to retrain the expert.")
    if epochs is None:
      return trajectory
    if isinstance(epochs, slice):
      return trajectory[epochs]
    rows = np.asarray(epochs, np.int64)
    num_rows = trajectory.shape[0]
    if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= num_rows:
      raise IndexError(f"epochs {list(rows.ravel())} out of range for expert {index} of {self.path} "
                       f"(epochs 0..{num_rows - 1}).")
    return np.asarray(trajectory[rows])

  def verify(self, indices, rows_per_read=8):
    """Checks experts `indices` (size, header, finite values) before a long run relies on them.

    Raises:
      CorruptFileError: naming the first expert file that is truncated, damaged or holds NaN/inf.
    """
    for index in indices:
      trajectory = self.read(index)
      for first in range(0, trajectory.shape[0], rows_per_read):
        rows = np.asarray(trajectory[first:first + rows_per_read])
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if bad.size:
          path = self._file(index, ".npy")
          raise errors.CorruptFileError(
              f"{path} holds NaN/inf parameters at epoch {first + int(bad[0])}; delete it and its .json "
              "and rerun tools/train_experts.py to retrain the expert.")

  def _check_index(self, index):
    if not self.is_finished(index):
      done = self.finished()
      have = (f"finished experts: {_short(done)}" if done else
              f"no finished experts — run tools/train_experts.py --store_dir={self.path}")
      raise KeyError(f"Expert {index} is not in trajectory store {self.path} ({have}).")

  def order(self, seed, cycle):
    """The finished experts in a seeded order: a pure function of (seed, cycle, the finished set).

    Args:
      seed: int seed of the rotation.
      cycle: int pass number over the store; every cycle is reshuffled.

    Returns:
      int list, a permutation of finished().
    """
    done = self.finished()
    if not done:
      raise errors.MissingDataError(f"Trajectory store {self.path} has no finished experts; run "
                       f"tools/train_experts.py --store_dir={self.path} first.")
    return [done[i] for i in np.random.default_rng([int(seed), int(cycle)]).permutation(len(done))]

  def next_in_rotation(self, seed, cycle, position):
    """The expert at `position` of pass `cycle` of the seeded rotation, and the place after it.

    Returns:
      (expert index, cycle, position) — the next place wraps to (cycle + 1, 0) after the last expert.
    """
    order = self.order(seed, cycle)
    index, position = order[position], position + 1
    return (index, cycle + 1, 0) if position == len(order) else (index, cycle, position)


def _short(value, limit=120):
  text = json.dumps(value)
  return text if len(text) <= limit else text[:limit] + "…"

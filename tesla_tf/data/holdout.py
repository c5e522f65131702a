"""The validation split: a seeded, class-balanced part of the train set, held out of everything else.

Experts train on the rest; the real-image initialisation and the random-subset baseline draw from the
rest; evaluation measures accuracy on the held-out part, and every selection (an iteration, a label
mode, a hyper-parameter) is made on it, so the test set is read only for the numbers reported.
A trajectory store records its split (`manifest["holdout"]`) and every stage reading the store uses it.

Positions are example positions in the train split's fixed file order (`sources.load`).
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from tesla_tf import errors
from tesla_tf.data import class_index as class_index_lib
from tesla_tf.data import sources

INDEX_FILE = "class_index_train_{fingerprint}.npz"


@dataclasses.dataclass(frozen=True)
class Holdout:
  """`size` train examples (size / C per class, drawn with `seed`) held out for validation; 0 = none."""
  size: int = 0
  seed: int = 0

  def split(self, index):
    """Divides a class index of the train split.

    Args:
      index: list of C position arrays (class_index.build_class_index).

    Returns:
      (rest, validation): the class index of the examples left for training (same form as `index`) and
      int64 [size] validation positions, class-sorted.

    Raises:
      ValueError: size is not a multiple of C, or a class is too small to give its share.
    """
    if self.size == 0:
      return index, np.zeros([0], np.int64)
    per_class, left = divmod(self.size, len(index))
    if left or per_class < 1:
      raise errors.UsageError(f"--validation_size={self.size} must be a positive multiple of the {len(index)} "
                       "classes (the split is class-balanced), or 0 for none.")
    for c, positions in enumerate(index):
      if len(positions) <= per_class:
        raise errors.UsageError(f"--validation_size={self.size} holds out {per_class} examples of class {c}, "
                         f"which has only {len(positions)}; lower it.")
    validation = class_index_lib.sample_per_class(index, per_class, [self.seed, 0x7A11])
    rest = [np.setdiff1d(positions, validation, assume_unique=True) for positions in index]
    return rest, validation

  def to_dict(self):
    return {"size": int(self.size), "seed": int(self.seed)}


def for_dataset(name, size=None, seed=0):
  """The Holdout of dataset `name`: `size` examples, or the dataset's default (DatasetInfo)."""
  info = sources.get_info(name)
  size = info.validation_size if size is None else int(size)
  if size < 0:
    raise errors.UsageError(f"--validation_size must be >= 0, got {size}.")
  return Holdout(size, int(seed))


def train_index(dataset, data_dir, cache_dir=None):
  """The class index of the whole train split, read from (or saved to) a cache file in `cache_dir`.

  The cache belongs to the data it was computed from: its name carries `sources.fingerprint` of the
  dataset's location, so another copy of the dataset (another --data_dir, perhaps in another order) or
  a rewritten one gets its own index instead of reusing a wrong one.

  Args:
    dataset: a name or DatasetInfo (sources.get_info).
    data_dir: where the data is.
    cache_dir: a directory for the index (e.g. the trajectory store), or None to compute it every time.
  """
  path = None
  if cache_dir:
    path = os.path.join(cache_dir, INDEX_FILE.format(fingerprint=sources.fingerprint(dataset, data_dir)))
  if path and os.path.exists(path):
    return class_index_lib.load_class_index(path)
  num_classes = sources.get_info(dataset).num_classes
  if sources.get_info(dataset).in_memory:
    index = class_index_lib.build_class_index(sources.load_numpy(dataset, "train", data_dir)[1], num_classes)
  else:
    index = class_index_lib.class_index_from_dataset(sources.load(dataset, "train", data_dir), num_classes)
  if path:
    class_index_lib.save_class_index(index, path)
  return index


def positions_of(index):
  """All positions of a class index, ascending."""
  return np.sort(np.concatenate(index)) if index else np.zeros([0], np.int64)


def keep_positions(dataset, positions, total):
  """The examples of a tf.data dataset of `total` examples at (sorted) `positions`, streamed in order."""
  keep = np.zeros([total], bool)
  keep[np.asarray(positions, np.int64)] = True
  keep = tf.constant(keep)
  return dataset.enumerate().filter(lambda i, _: tf.gather(keep, i)).map(lambda _, example: example)

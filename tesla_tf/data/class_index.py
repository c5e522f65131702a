"""Per-class index of a dataset: draw IPC real examples per class without rescanning the data.

`build_class_index` groups positions by label once (the index can be saved as .npz beside a large
dataset), `sample_per_class` draws a seeded, class-sorted selection, and `take_positions` gathers those
examples from a tf.data dataset in a single pass. In-memory arrays are simply indexed by the positions.
"""

import numpy as np
import tensorflow as tf

from tesla_tf import errors, files


def build_class_index(labels, num_classes):
  """Groups example positions by class.

  Args:
    labels: int [n] labels in dataset order.
    num_classes: C.

  Returns:
    A list of C int64 arrays; entry c holds the ascending positions of class c.
  """
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}].")
  order = np.argsort(labels, kind="stable")
  counts = np.bincount(labels, minlength=num_classes)
  return [p.astype(np.int64) for p in np.split(order, np.cumsum(counts)[:-1])]


def class_index_from_dataset(ds, num_classes):
  """Builds the class index of a (image, label) dataset in one pass over its labels."""
  labels = [b for b in ds.map(lambda _, y: y).batch(8192).as_numpy_iterator()]
  return build_class_index(np.concatenate(labels) if labels else np.zeros([0], np.int64), num_classes)


def save_class_index(index, path):
  """Writes the class index to `path` (.npz) atomically (temp file + rename)."""
  files.atomic_write(path, lambda f: np.savez(
      f, positions=np.concatenate(index) if index else np.zeros([0], np.int64),
      counts=np.array([len(p) for p in index], np.int64)))


def load_class_index(path):
  """Reads a class index written by save_class_index; returns the list of C position arrays."""
  with np.load(path) as data:
    positions, counts = data["positions"], data["counts"]
  return np.split(positions, np.cumsum(counts)[:-1]) if counts.size else []


def sample_per_class(index, ipc, seed):
  """Draws `ipc` distinct positions of every class, seeded.

  Args:
    index: class index (list of C position arrays).
    ipc: examples per class.
    seed: integer seed of a numpy Generator.

  Returns:
    int64 [C * ipc] positions, class-sorted (class 0's ipc positions first), ascending within a class.

  Raises:
    UsageError: a class has fewer than ipc examples.
  """
  rng = np.random.default_rng(seed)
  chosen = []
  for c, positions in enumerate(index):
    if len(positions) < ipc:
      raise errors.UsageError(f"--ipc={ipc}: class {c} has only {len(positions)} examples to draw from.")
    chosen.append(np.sort(rng.choice(positions, size=ipc, replace=False)))
  return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros([0], np.int64)


_TAKE_BLOCK = 1024  # examples per block take_positions reads


def take_positions(dataset, positions):
  """Gathers the examples at `positions` from a dataset in one pass, in the order of `positions`.

  Args:
    dataset: a finite dataset of (image, label).
    positions: int [k] example positions (repeats allowed).

  Returns:
    (images [k, ...], labels [k]) as numpy arrays.

  Raises:
    IndexError: a position lies beyond the end of the dataset.
  """
  positions = np.asarray(positions, np.int64)
  wanted = np.unique(positions)
  if wanted.size == 0:
    spec = dataset.element_spec
    return (np.zeros((0,) + tuple(spec[0].shape), spec[0].dtype.as_numpy_dtype),
            np.zeros((0,), spec[1].dtype.as_numpy_dtype))
  table, block = tf.constant(wanted), _TAKE_BLOCK

  def pick(b, batch):  # the wanted positions inside block b, gathered from it
    images, labels = batch
    inside = table[(table >= b * block) & (table < b * block + tf.cast(tf.shape(labels)[0], tf.int64))]
    return inside, tf.gather(images, inside - b * block), tf.gather(labels, inside - b * block)

  # Whole blocks, not single examples, pass the filter: ~10× faster on an in-memory Fashion-MNIST.
  found = dataset.take(int(wanted[-1]) + 1).batch(block).enumerate().map(pick)
  got_pos, images, labels = [], [], []
  for i, x, y in found.as_numpy_iterator():
    got_pos.append(i), images.append(x), labels.append(y)
  got_pos = np.concatenate(got_pos) if got_pos else np.zeros([0], np.int64)  # an empty dataset
  if got_pos.size != wanted.size:
    missing = np.setdiff1d(wanted, got_pos)
    raise IndexError(f"Positions {missing[:5].tolist()} lie beyond the end of the dataset.")
  order = np.searchsorted(wanted, positions)
  return np.concatenate(images)[order], np.concatenate(labels)[order]

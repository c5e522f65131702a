"""Tests for tesla_tf.data.class_index: build, save/load, seeded per-class sampling, one-pass gather."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf.data import class_index
from tesla_tf.data import sources


def _toy(n=50, num_classes=4):
  labels = np.random.default_rng(1).integers(0, num_classes, n).astype(np.int32)
  images = np.arange(n, dtype=np.int32)[:, None] * np.ones([1, 3], np.int32)  # image i is [i, i, i]
  return images, labels


def test_build_and_round_trip(tmp_path):
  _, labels = _toy()
  index = class_index.build_class_index(labels, 4)
  assert len(index) == 4
  for c, positions in enumerate(index):
    assert np.all(labels[positions] == c) and np.all(np.diff(positions) > 0)
  assert sum(len(p) for p in index) == labels.size
  path = str(tmp_path / "sub" / "index.npz")
  class_index.save_class_index(index, path)
  assert os.listdir(tmp_path / "sub") == ["index.npz"]  # no temp file left behind
  loaded = class_index.load_class_index(path)
  assert len(loaded) == 4
  for a, b in zip(index, loaded):
    np.testing.assert_array_equal(a, b)
  ds = tf.data.Dataset.from_tensor_slices((np.zeros([labels.size, 2], np.uint8), labels))
  for a, b in zip(index, class_index.class_index_from_dataset(ds, 4)):
    np.testing.assert_array_equal(a, b)
  assert sources.build_class_index is class_index.build_class_index  # re-exported
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    class_index.build_class_index(labels, 3)


def test_sample_per_class():
  _, labels = _toy()
  index = class_index.build_class_index(labels, 4)
  chosen = class_index.sample_per_class(index, 3, seed=7)
  assert chosen.shape == (12,)
  np.testing.assert_array_equal(labels[chosen], np.repeat(np.arange(4), 3))
  assert len(np.unique(chosen)) == 12
  np.testing.assert_array_equal(chosen, class_index.sample_per_class(index, 3, seed=7))
  assert not np.array_equal(chosen, class_index.sample_per_class(index, 3, seed=8))
  with pytest.raises(ValueError, match="--ipc=100: class .* has only"):
    class_index.sample_per_class(index, 100, seed=0)


@pytest.mark.parametrize("block", [1024, 8, 1])  # one block; positions across blocks and a partial last one
def test_take_positions(block, monkeypatch):
  monkeypatch.setattr(class_index, "_TAKE_BLOCK", block)
  images, labels = _toy()
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  positions = np.array([17, 3, 44, 3, 0, 7, 8, 49])
  x, y = class_index.take_positions(ds, positions)
  np.testing.assert_array_equal(x, images[positions])
  np.testing.assert_array_equal(y, labels[positions])
  x, y = class_index.take_positions(ds, [])
  assert x.shape == (0, 3) and y.shape == (0,)
  with pytest.raises(IndexError, match="50"):
    class_index.take_positions(ds, [2, 50])
  with pytest.raises(IndexError, match=r"\[0\]"):
    class_index.take_positions(ds.take(0), [0])

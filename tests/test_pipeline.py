"""Tests for tesla_tf.data.pipeline: shapes, preprocessing, seeded shuffle and DSA, address checks."""

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import augment
from tesla_tf.data import pipeline
from tesla_tf.data import preprocess

NORM = preprocess.Normalize((0.5, 0.4), (0.25, 0.2))


def _raw(n=37):
  """n distinct uint8 images [8, 8, 2] (image i starts with pixel value i) and labels i % 5."""
  images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 2), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n)
  return images, (np.arange(n) % 5).astype(np.int64)


def _ds(n=37):
  return tf.data.Dataset.from_tensor_slices(_raw(n))


SOURCES = {"dataset": lambda n=37: _ds(n), "arrays": lambda n=37: _raw(n)}  # both kinds of train source


def _epoch(ds):
  return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.mark.parametrize("source", SOURCES)
def test_shapes_and_values_without_augmentation(source):
  images, labels = _raw()
  ds = pipeline.train_pipeline(SOURCES[source](), NORM, 8, seed=3, dsa_strategy="none")
  assert ds.element_spec[0].shape == (8, 8, 8, 2) and ds.element_spec[0].dtype == tf.float32
  assert ds.element_spec[1].shape == (8,) and ds.element_spec[1].dtype == tf.int32
  batches = _epoch(ds)
  assert len(batches) == 4  # 37 // 8, remainder dropped
  seen = []
  for x, y in batches:
    ids = np.round(NORM.invert(x)[:, 0, 0, 0].numpy() * 255).astype(int)
    np.testing.assert_allclose(x, NORM.apply(images[ids]), atol=1e-6)
    np.testing.assert_array_equal(y, labels[ids])
    seen += ids.tolist()
  assert len(set(seen)) == 32
  assert seen != sorted(seen)  # shuffled


@pytest.mark.parametrize("source", SOURCES)
def test_seeded_shuffle_and_augmentation_reproducible(source):
  def run(seed, strategy):
    ds = pipeline.train_pipeline(SOURCES[source](), NORM, 8, seed=seed, dsa_strategy=strategy)
    return _epoch(ds), _epoch(ds)

  first, second = run(5, augment.STRATEGY)
  again_first, again_second = run(5, augment.STRATEGY)
  for a, b in zip(first + second, again_first + again_second):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  # Each epoch is reshuffled and re-augmented.
  assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))
  other, _ = run(6, augment.STRATEGY)
  assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))


def test_augmentation_applied_per_batch():
  ds = pipeline.train_pipeline(_ds(), NORM, 8, seed=1, dsa_strategy="flip", shuffle_buffer=1)
  plain = pipeline.train_pipeline(_ds(), NORM, 8, seed=1, dsa_strategy="none", shuffle_buffer=1)
  changed = 0
  for (x, _), (p, _) in zip(ds, plain):
    flipped = p.numpy()[:, :, ::-1]
    for xi, pi, fi in zip(x.numpy(), p.numpy(), flipped):
      same, mirrored = np.allclose(xi, pi, atol=1e-5), np.allclose(xi, fi, atol=1e-5)
      assert same or mirrored
      changed += mirrored and not same
  assert changed > 0


@pytest.mark.parametrize("source", SOURCES)
def test_repeat_spans_epochs(source):
  ds = pipeline.train_pipeline(SOURCES[source](10), NORM, 4, seed=0, dsa_strategy="none", repeat=True)
  assert len(list(ds.take(7))) == 7


def test_arrays_give_every_epoch_a_new_permutation_repeated_or_not():
  """Arrays: each epoch is n // batch batches of distinct rows of a fresh permutation, whether the epochs
  come from iterating the dataset again or from repeat."""
  def row_ids(batches):
    return [np.round(NORM.invert(x)[:, 0, 0, 0].numpy() * 255).astype(int).tolist() for x, _ in batches]
  once = pipeline.train_pipeline(_raw(), NORM, 8, seed=4, dsa_strategy="none")
  again = [sum(row_ids(once), []) for _ in range(3)]
  repeated = sum(row_ids(pipeline.train_pipeline(_raw(), NORM, 8, seed=4, dsa_strategy="none",
                                                 repeat=True).take(12)), [])
  repeated = [repeated[i * 32:(i + 1) * 32] for i in range(3)]
  for epochs in (again, repeated):
    for ids in epochs:
      assert len(ids) == 32 and len(set(ids)) == 32 and set(ids) <= set(range(37))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
  with pytest.raises(ValueError, match="batch_size=40 exceeds the 37 examples"):
    pipeline.train_pipeline(_raw(), NORM, 40, seed=0)


def test_eval_pipeline_keeps_remainder():
  images, labels = _raw()
  batches = _epoch(pipeline.eval_pipeline(_ds(), NORM, 16))
  assert [len(y) for _, y in batches] == [16, 16, 5]
  np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), NORM.apply(images), atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)


@pytest.mark.parametrize("address", ["localhost:5050", "grpc://localhost", "http://x:1", ""])
def test_bad_data_service_address(address):
  with pytest.raises(ValueError, match="--data_service"):
    pipeline.train_pipeline(_ds(), NORM, 8, seed=0, data_service=address)


def test_bad_strategy_and_batch_size():
  with pytest.raises(ValueError, match="augmentation family"):
    pipeline.train_pipeline(_ds(), NORM, 8, seed=0, dsa_strategy="colour")
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.train_pipeline(_ds(), NORM, 0, seed=0)

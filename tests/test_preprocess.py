"""Tests for tesla_tf.data.preprocess: Normalize by hand, ZCA per REFERENCE §3b, save/restore."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf.data import preprocess
from tesla_tf.data import sources

needs_fashion = pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                                   reason="apt-get install dataset-fashion-mnist")


def test_normalize_formula_and_inverse():
  info = sources.get_info("cifar10")
  norm = preprocess.build("normalize", info)
  x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  expected = (x / 255.0 - np.array(info.mean)) / np.array(info.std)
  out = norm.apply(x)
  assert out.dtype == tf.float32
  np.testing.assert_allclose(out, expected, atol=1e-5)
  np.testing.assert_allclose(norm.invert(out), x / 255.0, atol=1e-6)
  x64 = tf.constant(x / 255.0, tf.float64)
  assert norm.apply(x64).dtype == tf.float64
  restored = preprocess.from_dict(json.loads(json.dumps(norm.to_dict())))
  assert restored == norm
  with pytest.raises(TypeError, match="uint8 or float"):
    norm.apply(tf.constant(x, tf.int32))


def test_build_errors():
  info = sources.get_info("mnist")
  with pytest.raises(ValueError, match="normalize, zca"):
    preprocess.build("whiten", info)
  with pytest.raises(ValueError, match="train_images"):
    preprocess.build("zca", info)


@pytest.fixture(scope="module")
def fashion_subset():
  x, _ = sources.load_numpy("fashion_mnist", "train")
  return x[:6000]


@needs_fashion
def test_zca_fashion_mnist(fashion_subset, tmp_path):
  x = fashion_subset
  zca = preprocess.build("zca", sources.get_info("fashion_mnist"), train_images=x)
  flat = x.reshape(len(x), -1).astype(np.float64) / 255.0
  cov = np.cov(flat, rowvar=False)
  s, u = np.linalg.eigh(cov)
  s = np.maximum(s, 0.0)
  np.testing.assert_allclose(zca.mean, flat.mean(0), atol=1e-12)
  np.testing.assert_allclose(zca.whiten, (u * (s + 0.1) ** -0.5) @ u.T, atol=1e-8)

  # The whitened train covariance is U diag(S / (S + 0.1)) Uᵀ (checked in float64).
  white = np.asarray(zca.apply(tf.constant(x / 255.0, tf.float64))).reshape(len(x), -1)
  np.testing.assert_allclose(np.cov(white, rowvar=False), (u * (s / (s + 0.1))) @ u.T, atol=1e-8)
  # float32 from uint8 agrees with the float64 path.
  white32 = zca.apply(x[:64])
  assert white32.dtype == tf.float32 and white32.shape == (64, 28, 28, 1)
  np.testing.assert_allclose(white32, white[:64].reshape(64, 28, 28, 1), atol=1e-4)
  np.testing.assert_allclose(zca.invert(white32), x[:64] / 255.0, atol=1e-4)

  # No normalisation on top: the mean image maps to zero.
  np.testing.assert_allclose(zca.apply(zca.mean.reshape(1, 28, 28, 1)), 0.0, atol=1e-5)

  d = json.loads(json.dumps(zca.to_dict()))
  assert d["kind"] == "zca" and d["file"] == "zca.npz"
  zca.save(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["zca.npz"]
  restored = preprocess.from_dict(d, str(tmp_path))
  np.testing.assert_array_equal(restored.whiten, zca.whiten)
  np.testing.assert_array_equal(restored.apply(x[:8]), zca.apply(x[:8]))
  with pytest.raises(FileNotFoundError, match="elsewhere"):
    preprocess.from_dict(d, str(tmp_path / "elsewhere"))
  with pytest.raises(ValueError, match="directory"):
    preprocess.from_dict(d)


def test_zca_in_graph_and_shape_check():
  x = np.random.default_rng(0).random((20, 4, 4, 2))
  zca = preprocess.ZCA.fit(x, reg=0.1)
  eager = zca.apply(x[:5].astype(np.float32))
  ds = tf.data.Dataset.from_tensor_slices(x[:5].astype(np.float32)).batch(5).map(zca.apply)
  np.testing.assert_allclose(next(iter(ds)), eager, atol=1e-6)
  graph = tf.function(zca.invert)(eager)
  np.testing.assert_allclose(graph, x[:5], atol=1e-4)
  with pytest.raises(ValueError, match="fitted for images"):
    zca.apply(np.zeros([1, 4, 4, 3], np.float32))

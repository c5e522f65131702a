"""Tests for tesla_tf.data.sources: registry, IDX, TFDS (mocked), folders, fast clear errors."""

import dataclasses
import gzip
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tesla_tf.data import sources

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                                   reason="apt-get install dataset-fashion-mnist")


def test_registry():
  assert set(sources.DATASETS) == {"fashion_mnist", "mnist", "cifar10", "cifar100", "tiny_imagenet",
                                   "imagenet64"}
  for name, info in sources.DATASETS.items():
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.image_shape[2]
    assert not info.class_names or len(info.class_names) == info.num_classes
  assert sources.get_info("cifar100").class_names[:2] == ("apple", "aquarium_fish")
  assert list(sources.get_info("cifar100").class_names) == sorted(sources.get_info("cifar100").class_names)
  with pytest.raises(ValueError, match="cifar10.*fashion_mnist"):
    sources.get_info("cifar")
  assert {info.source for info in sources.DATASETS.values()} | {"folder"} == set(sources.LOADERS)
  assert [name for name, info in sources.DATASETS.items() if info.in_memory] == ["fashion_mnist", "mnist"]


def test_a_new_source_kind_is_one_loaders_entry(monkeypatch):
  images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1)
  labels = np.array([1, 0, 1], np.int32)
  calls = []

  def load_toy(info, split, data_dir, download):
    calls.append((info.name, split, data_dir, download))
    return tf.data.Dataset.from_tensor_slices((images, labels))

  toy = dataclasses.replace(sources.get_info("mnist"), name="toy", num_classes=2, image_shape=(4, 4, 1),
                            class_names=(), source="toy")
  monkeypatch.setitem(sources.DATASETS, "toy", toy)
  monkeypatch.setitem(sources.LOADERS, "toy", sources.Loader(
      load_toy, class_names=lambda info, data_dir: ("cat", f"dog in {data_dir}")))
  assert not toy.in_memory
  x, y = sources.load_numpy("toy", "test", download=True)
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, labels)
  assert calls == [("toy", "test", None, True)]
  assert sources.class_names("toy", "here") == ("cat", "dog in here")
  with pytest.raises(ValueError, match="split must be"):
    sources.load("toy", "validation")


@needs_fashion
def test_fashion_mnist_real():
  start = time.time()
  x, y = sources.load_numpy("fashion_mnist", "train")
  assert time.time() - start < 5
  assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
  xt, yt = sources.load_numpy("fashion_mnist", "test")
  assert xt.shape == (10000, 28, 28, 1) and yt.shape == (10000,)
  ds = sources.load("fashion_mnist", "test")
  assert ds.element_spec[0].shape == (28, 28, 1) and ds.element_spec[0].dtype == tf.uint8
  assert ds.element_spec[1].dtype == tf.int32
  first_x, first_y = next(iter(ds))
  np.testing.assert_array_equal(first_x, xt[0])
  assert int(first_y) == yt[0]
  # The mean/std in the registry are the train set's.
  assert abs(x.mean() / 255 - 0.2861) < 1e-3 and abs(x.std() / 255 - 0.3530) < 1e-3


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_and_corrupt_file(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
  labels = np.arange(12) % 10
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, False)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, True)
  x, y = sources.load_numpy("mnist", "test", str(tmp_path))
  np.testing.assert_array_equal(x[..., 0], images)
  np.testing.assert_array_equal(y, labels)

  bad = tmp_path / "bad-idx"
  bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match=f"{bad}.*magic"):
    sources.read_idx(str(bad))
  short = tmp_path / "short-idx"
  short.write_bytes(bytes([0, 0, 8, 1]) + np.array([10], ">u4").tobytes() + b"\x00" * 3)
  with pytest.raises(ValueError, match=f"{short}.*size"):
    sources.read_idx(str(short))


def test_idx_file_is_decompressed_once_until_it_changes(tmp_path, monkeypatch):
  """A second read of an unchanged file comes from memory, as a new writable array; a rewritten file of
  the same size is read again."""
  path = tmp_path / "train-images-idx3-ubyte.gz"
  first, second = (np.full((3, 28, 28), v, np.uint8) for v in (1, 2))
  _write_idx(path, first, True)
  opened, gzip_open = [], gzip.open

  def counting_open(name, mode="rb", *args):
    opened.extend([name] if mode == "rb" else [])
    return gzip_open(name, mode, *args)

  monkeypatch.setattr(sources.gzip, "open", counting_open)
  a = sources.read_idx(str(path))
  a[0, 0, 0] = 99  # the caller's own array: the next read does not see this
  b = sources.read_idx(str(path))
  np.testing.assert_array_equal(b, first)
  assert len(opened) == 1
  _write_idx(path, second, True)
  os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns + 1))
  np.testing.assert_array_equal(sources.read_idx(str(path)), second)
  assert len(opened) == 2
  with pytest.raises(ValueError, match="missing.*cannot read"):
    sources.read_idx(str(tmp_path / "missing"))


@pytest.mark.parametrize("name,data_dir", [
    ("fashion_mnist", "/nonexistent/data_dir"),
    ("mnist", "EMPTY"),
    ("cifar10", "EMPTY"),
    ("imagenet64", "EMPTY"),
    ("tiny_imagenet", "EMPTY"),
])
def test_missing_dataset_fails_fast(tmp_path, name, data_dir):
  data_dir = str(tmp_path) if data_dir == "EMPTY" else data_dir
  start = time.time()
  with pytest.raises(sources.DatasetNotFoundError) as err:
    sources.load(name, "train", data_dir)
  assert time.time() - start < 10
  assert data_dir in str(err.value) and "To get it" in str(err.value)


def test_missing_dataset_default_locations():
  start = time.time()
  try:
    sources.load("mnist", "train")
  except sources.DatasetNotFoundError as e:
    assert "/usr/share/datasets/mnist" in str(e) and "To get it" in str(e)
  else:
    pytest.skip("MNIST is installed here")
  assert time.time() - start < 10


def test_imagenet64_remap():
  wnids = sources.imagenet_resized_wnids()
  remap = sources.imagenet64_label_remap(wnids)
  assert remap.dtype == np.int32
  np.testing.assert_array_equal(np.sort(remap), np.arange(1000))
  assert remap[wnids.index("n01440764")] == 0  # tench, first ILSVRC class
  assert remap[wnids.index("n02119789")] == 278  # kit fox, ILSVRC index 278
  assert remap[wnids.index("n15075141")] == 999  # toilet tissue, last ILSVRC class
  assert sources.class_names("imagenet64")[278] == "n02119789"


@pytest.fixture
def prepared(monkeypatch):
  """TFDS mocked with random data; mocked builders count as prepared."""
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet64"])
def test_tfds_mocked(prepared, name):
  del prepared
  info = sources.get_info(name)
  for split in ("train", "test"):
    x, y = sources.load_numpy(name, split)
    assert x.shape == (6,) + info.image_shape and x.dtype == np.uint8
    assert y.dtype == np.int32 and np.all((0 <= y) & (y < info.num_classes))


def _write_image(path, value, shape=(64, 64, 3)):
  image = tf.fill(shape, tf.constant(value, tf.uint8))
  encoded = tf.io.encode_png(image) if str(path).endswith(".png") else tf.io.encode_jpeg(image, quality=100)
  tf.io.write_file(str(path), encoded)


def test_tiny_imagenet_folder(tmp_path):
  wnids = ["n03000000", "n01000000", "n02000000"]  # file order differs from sorted order
  (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
  for wnid in wnids:
    folder = tmp_path / "train" / wnid / "images"
    folder.mkdir(parents=True)
    for k in range(2):
      _write_image(folder / f"{wnid}_{k}.JPEG", 40 * int(wnid[2]) + k)
  (tmp_path / "val" / "images").mkdir(parents=True)
  val = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n03000000"), ("val_2.JPEG", "n01000000")]
  for fname, wnid in val:
    _write_image(tmp_path / "val" / "images" / fname, 40 * int(wnid[2]))
  (tmp_path / "val" / "val_annotations.txt").write_text(
      "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))

  assert sources.class_names("tiny_imagenet", str(tmp_path)) == tuple(sorted(wnids))
  x, y = sources.load_numpy("tiny_imagenet", "train", str(tmp_path))
  assert x.shape == (6, 64, 64, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(y, [0, 0, 1, 1, 2, 2])
  np.testing.assert_allclose(x[:, 0, 0, 0], [40, 41, 80, 81, 120, 121], atol=2)
  xv, yv = sources.load_numpy("tiny_imagenet", "test", str(tmp_path))
  np.testing.assert_array_equal(yv, [1, 2, 0])
  np.testing.assert_allclose(xv[:, 0, 0, 0], [80, 120, 40], atol=2)


def test_imagenet64_folder(tmp_path):
  for split, wnid in [("train", "n02119789"), ("train", "n01440764"), ("val", "n15075141")]:
    folder = tmp_path / split / wnid
    folder.mkdir(parents=True)
    _write_image(folder / "a.png", 7)
  x, y = sources.load_numpy("imagenet64", "train", str(tmp_path))
  assert x.shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(y, [0, 278])
  _, yv = sources.load_numpy("imagenet64", "test", str(tmp_path))
  np.testing.assert_array_equal(yv, [999])

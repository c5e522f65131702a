"""Export/import of distilled sets: bit-exact round trips, TFDS readability, refusal of damaged exports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tesla_tf.data import distilled
from tesla_tf.data import preprocess
from tesla_tf.data.distilled import DistilledSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)


def _set(classes=2, ipc=3, soft=True, preprocessing=None, seed=0, shape=SHAPE):
  rng = np.random.default_rng(seed)
  n = classes * ipc
  hard = np.repeat(np.arange(classes), ipc)
  if soft:
    logits = rng.normal(size=(n, classes)) + 3 * np.eye(classes)[hard]
    labels = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
  else:
    labels = np.eye(classes, dtype=np.float32)[hard]
  return DistilledSet(
      images=rng.normal(size=(n,) + shape).astype(np.float32), labels=labels, lr=0.0123456789,
      dataset="fashion_mnist", ipc=ipc,
      preprocessing=preprocessing or {"kind": "normalize", "mean": [0.2861], "std": [0.353]},
      model={"name": "convnet", "width": 8, "depth": 1},
      config={"mode": "tesla", "syn_steps": 4, "eval_models": ("convnet",), "seed": np.int64(3)})


def _assert_same(a, b):
  np.testing.assert_array_equal(a.images.view(np.uint32), np.asarray(b.images, np.float32).view(np.uint32))
  np.testing.assert_array_equal(a.labels.view(np.uint32), np.asarray(b.labels, np.float32).view(np.uint32))
  np.testing.assert_array_equal(a.hard_labels, b.hard_labels)
  assert a.lr == b.lr and a.dataset == b.dataset and a.ipc == b.ipc and a.soft == b.soft
  assert a.preprocessing == b.preprocessing and a.model == b.model


def test_round_trip_is_bit_exact(tmp_path):
  original = _set()
  out = tmp_path / "distilled"
  metadata = distilled.export(original, out, shard_size=4)
  assert sorted(os.listdir(out)) == sorted([
      "distilled-train.tfrecord-00000-of-00002", "distilled-train.tfrecord-00001-of-00002",
      "metadata.json", "dataset_info.json", "features.json", "label.labels.txt"])
  on_disk = json.loads((out / "metadata.json").read_text())
  assert on_disk == metadata
  assert [s["num_examples"] for s in metadata["shards"]] == [4, 2]
  assert all(len(s["sha256"]) == 64 for s in metadata["shards"])
  assert metadata["num_classes"] == 2 and metadata["ipc"] == 3 and metadata["num_examples"] == 6
  assert metadata["image_shape"] == [8, 8, 1] and metadata["class_names"] == ["0", "1"]
  assert metadata["soft_labels"] and metadata["config"]["seed"] == 3
  assert metadata["version"] == __import__("tesla_tf").__version__

  loaded = distilled.load_set(out)
  _assert_same(loaded, original)

  dataset, _ = distilled.load(out)
  rows = list(dataset.as_numpy_iterator())
  assert [int(r["index"]) for r in rows] == list(range(6))
  assert [int(r["label"]) for r in rows] == [0, 0, 0, 1, 1, 1]
  pixels = np.clip(original.images * 0.353 + 0.2861, 0, 1)
  np.testing.assert_allclose(rows[1]["image"] / 255.0, pixels[1], atol=0.5 / 255 + 1e-6)
  assert rows[1]["image"].dtype == np.uint8


def test_hard_labels_and_class_names_from_registry(tmp_path):
  original = _set(classes=10, ipc=1, soft=False)
  metadata = distilled.export(original, tmp_path / "d")
  assert metadata["class_names"][0] == "T-shirt/top" and not metadata["soft_labels"]
  _assert_same(distilled.load_set(tmp_path / "d"), original)


def test_tfds_reader_sees_the_same_examples(tmp_path):
  original = _set()
  distilled.export(original, tmp_path / "d", shard_size=4)
  builder = tfds.builder_from_directory(str(tmp_path / "d"))
  assert builder.info.splits["train"].num_examples == 6
  rows = sorted(builder.as_dataset(split="train").as_numpy_iterator(), key=lambda r: int(r["index"]))
  ours = list(distilled.load(tmp_path / "d")[0].as_numpy_iterator())
  assert len(rows) == 6
  for theirs, mine in zip(rows, ours):
    for key in ("index", "image_raw", "image", "label", "soft_label"):
      np.testing.assert_array_equal(theirs[key], mine[key])


def test_zca_round_trip(tmp_path):
  real = np.random.default_rng(1).uniform(size=(40,) + SHAPE).astype(np.float32)
  zca = preprocess.ZCA.fit(real)
  original = _set(preprocessing=zca.to_dict())
  with pytest.raises(ValueError, match="preprocessing_dir"):
    distilled.export(original, tmp_path / "d")
  metadata = distilled.export(original, tmp_path / "d", preprocessor=zca)
  assert [f["file"] for f in metadata["files"]] == [preprocess.ZCA_FILE]
  _assert_same(distilled.load_set(tmp_path / "d"), original)
  _, restored = distilled.load_any(str(tmp_path / "d"))  # the matrices are read from the export
  np.testing.assert_array_equal(restored.whiten, zca.whiten)
  # The PNG is the de-whitened image.
  rows = list(distilled.load(tmp_path / "d")[0].take(1).as_numpy_iterator())
  pixels = np.clip(zca.invert(original.images[:1]).numpy(), 0, 1)
  np.testing.assert_allclose(rows[0]["image"] / 255.0, pixels[0], atol=0.5 / 255 + 1e-5)


def test_reexport_replaces_atomically(tmp_path):
  distilled.export(_set(seed=0), tmp_path / "d")
  second = _set(seed=1, classes=3, ipc=2)
  distilled.export(second, tmp_path / "d")
  _assert_same(distilled.load_set(tmp_path / "d"), second)
  assert sorted(os.listdir(tmp_path)) == ["d"]  # no temporary or old directory left behind


def _shard(out):
  return os.path.join(out, distilled.shard_name(0, 1))


def test_corrupted_byte_is_refused(tmp_path):
  out = str(tmp_path / "d")
  distilled.export(_set(), out)
  with open(_shard(out), "r+b") as f:
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(distilled.CorruptExportError, match=r"distilled-train\.tfrecord-00000-of-00001 is "
                     "corrupted"):
    distilled.load_set(out)
  # Without the checksum, TFRecord's own CRC still refuses it with the file list.
  with pytest.raises(distilled.CorruptExportError, match="cannot be read"):
    distilled.load_set(out, check=False)


def test_truncated_shard_and_missing_files_are_refused(tmp_path):
  out = str(tmp_path / "d")
  distilled.export(_set(), out)
  size = os.path.getsize(_shard(out))
  with open(_shard(out), "r+b") as f:
    f.truncate(size - 10)
  with pytest.raises(distilled.CorruptExportError, match="00000-of-00001 is truncated"):
    distilled.load(out)
  with pytest.raises(distilled.CorruptExportError, match="cannot be read"):
    distilled.load_set(out, check=False)
  os.remove(_shard(out))
  with pytest.raises(distilled.CorruptExportError, match="00000-of-00001 is missing"):
    distilled.load(out)
  os.remove(os.path.join(out, "metadata.json"))
  with pytest.raises(distilled.CorruptExportError, match="metadata.json is missing"):
    distilled.load(out)


def test_load_any_reads_an_export_or_a_run_dir(tmp_path):
  original = _set()
  distilled.export(original, tmp_path / "run" / distilled.EXPORT_DIR)
  for path in (tmp_path / "run", tmp_path / "run" / distilled.EXPORT_DIR):
    loaded, prep = distilled.load_any(str(path))
    _assert_same(loaded, original)
    assert prep.to_dict() == original.preprocessing
  expected = "expected an export directory .*metadata.json.* or a run directory .*distilled/"
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty holds no distilled set: " + expected):
    distilled.load_any(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="No distilled set at .*nowhere: " + expected):
    distilled.load_any(str(tmp_path / "nowhere"))
  old = tmp_path / "distilled.npz"  # the single-file format of earlier versions is not read any more
  np.savez(old, images=original.images, labels=original.labels)
  with pytest.raises(ValueError, match="distilled.npz is a file, not a distilled set: " + expected):
    distilled.load_any(str(old))


def test_export_tool_reshards_a_run(tmp_path):
  distilled.export(_set(), tmp_path / "run" / distilled.EXPORT_DIR)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "export.py"), f"--source={tmp_path / 'run'}",
       f"--out_dir={tmp_path / 'copy'}", "--shard_size=4"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_same(distilled.load_set(tmp_path / "copy"), _set())
  assert [s["num_examples"] for s in distilled.read_metadata(tmp_path / "copy")["shards"]] == [4, 2]
  assert "6 examples" in result.stdout and str(tmp_path / "copy") in result.stdout

"""Tests for tesla_tf.data.imagenet and tools/prepare_imagenet.py on small generated ImageNet layouts."""

import dataclasses
import io
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf.data import class_index
from tesla_tf.data import imagenet
from tesla_tf.data import service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WNIDS = ("n00000004", "n00000001", "n00000005", "n00000003", "n00000002")  # created in this order
SIZES = ((80, 100), (120, 90), (70, 70), (100, 130), (66, 81))
# ILSVRC quirks: a PNG named .JPEG (lossless, so its constant colour is exact) and a grayscale JPEG.
CONSTANT = ("n00000003", "n00000003_png.JPEG", (200, 40, 91))
GRAY = ("n00000005", "n00000005_gray.JPEG")


def _make_tree(root, seed=0):
  """Writes train (3-7 JPEGs per class) and val (1-2 per class) of assorted sizes; returns {split: n}."""
  rng = np.random.default_rng(seed)
  counts = {}
  for split, low, high in (("train", 3, 8), ("val", 1, 3)):
    counts[split] = 0
    for wnid in WNIDS:
      os.makedirs(root / split / wnid)
      for i in range(int(rng.integers(low, high))):
        h, w = SIZES[int(rng.integers(len(SIZES)))]
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (root / split / wnid / f"{wnid}_{i}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
        counts[split] += 1
  constant = np.broadcast_to(np.array(CONSTANT[2], np.uint8), (97, 131, 3))
  (root / "train" / CONSTANT[0] / CONSTANT[1]).write_bytes(tf.io.encode_png(constant).numpy())
  gray = rng.integers(0, 256, (90, 75, 1), dtype=np.uint8)
  (root / "train" / GRAY[0] / GRAY[1]).write_bytes(tf.io.encode_jpeg(gray).numpy())
  (root / "train" / "n00000001" / "notes.txt").write_text("not an image: ignored")
  return {"train": counts["train"] + 2, "val": counts["val"]}


def _prepared_order(root, split, examples_per_shard):
  """The documented order, rebuilt independently: source order = sorted WNIDs then sorted file names;
  shard k of S holds source positions k, k+S, ...; the prepared order is shard 0, shard 1, ..."""
  files = []
  for label, wnid in enumerate(sorted(WNIDS)):
    names = sorted(n for n in os.listdir(root / split / wnid) if n.endswith(".JPEG"))
    files += [(root / split / wnid / n, label) for n in names]
  num_shards = math.ceil(len(files) / examples_per_shard)
  return [files[p] for k in range(num_shards) for p in range(k, len(files), num_shards)]


def _shard_files(out_dir):
  return {os.path.relpath(os.path.join(d, f), out_dir): open(os.path.join(d, f), "rb").read()
          for d, _, names in os.walk(out_dir) for f in names if f.endswith(".tfrecord")}


def _mtimes(out_dir):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, names in os.walk(out_dir) for f in names}


def _fake_tfds(data_dir, seed=0):
  """Writes a tiny *prepared* TFDS imagenet2012 (train in 2 files of 5 + 4, validation 3) directly."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  builder = tfds.builder("imagenet2012", data_dir=str(data_dir))
  os.makedirs(builder.data_dir)
  features, splits, labels = builder.info.features, [], []
  for split, lengths in (("train", (5, 4)), ("validation", (3,))):
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name="imagenet2012",
                                             split=split, filetype_suffix="tfrecord")
    for f, length in enumerate(lengths):
      path = os.fspath(template.sharded_filepath(shard_index=f, num_shards=len(lengths)))
      with tf.io.TFRecordWriter(path) as writer:
        for i in range(length):
          image = rng.integers(0, 256, SIZES[i % len(SIZES)] + (3,), dtype=np.uint8)
          label = int(rng.integers(1000))
          labels += [label] if split == "train" else []
          writer.write(features.serialize_example(
              {"image": image, "label": label, "file_name": f"{split}_{f}_{i}.JPEG"}))
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)
  return builder, labels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A generated tree and its local preparation (4 examples per shard), shared read-only."""
  tmp_path = tmp_path_factory.mktemp("folder")
  counts = _make_tree(tmp_path / "ilsvrc")
  config = imagenet.PrepareConfig(out_dir=str(tmp_path / "out"), source_dir=str(tmp_path / "ilsvrc"),
                                  examples_per_shard=4, shards_per_job=4)
  return config, counts, imagenet.prepare(config)


@pytest.fixture(scope="module")
def tfds_prepared(tmp_path_factory):
  """A fake prepared TFDS imagenet2012 and its local preparation, shared read-only."""
  tmp_path = tmp_path_factory.mktemp("tfds")
  builder, labels = _fake_tfds(tmp_path / "tfds")
  config = imagenet.PrepareConfig(out_dir=str(tmp_path / "out"), source="tfds",
                                  tfds_data_dir=str(tmp_path / "tfds"), examples_per_shard=4,
                                  shards_per_job=2)
  return config, builder, labels, imagenet.prepare(config)


def test_downsample_keeps_a_constant_colour_and_box_averages():
  small = imagenet.downsample(tf.fill([97, 131, 3], tf.constant(173, tf.uint8)), 64).numpy()
  assert small.shape == (64, 64, 3) and small.dtype == np.uint8 and (small == 173).all()
  checker = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)  # each 2x2 box: two 0, two 255
  small = imagenet.downsample(np.repeat(checker[..., None], 3, -1), 64).numpy()
  assert (small == 128).all()  # 127.5 rounds half to even


def test_shards_labels_images_and_class_index(folder):
  config, counts, manifest = folder
  out, root = config.out_dir, pathlib.Path(config.source_dir)
  with open(os.path.join(out, "classes.txt")) as f:
    assert f.read().split() == sorted(WNIDS)
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f) == manifest
  assert manifest["num_classes"] == 5 and manifest["image_size"] == 64
  assert manifest["resize"]["method"] == "area" and manifest["source"]["kind"] == "folder"
  for split, n in counts.items():
    entry, num_shards = manifest["splits"][split], math.ceil(n / 4)
    assert entry["num_examples"] == n and entry["num_shards"] == num_shards > 1
    assert entry["assignment"] == "round_robin"
    assert sorted(os.listdir(os.path.join(out, split))) == sorted(
        [f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord{e}" for k in range(num_shards)
         for e in ("", ".done")] + ["class_index.npz"])
    expected = _prepared_order(root, split, 4)
    images, labels = zip(*imagenet.load_prepared(out, split).as_numpy_iterator())
    assert [int(y) for y in labels] == [y for _, y in expected]
    assert all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in images)
    for i in (0, 5, n - 1):
      source = tf.io.decode_image(tf.io.read_file(str(expected[i][0])), channels=3)
      np.testing.assert_array_equal(images[i], imagenet.downsample(source, 64).numpy())
    index = class_index.load_class_index(os.path.join(out, split, "class_index.npz"))
    assert [p.tolist() for p in index] == [p.tolist() for p in class_index.build_class_index(labels, 5)]
    assert entry["class_counts"] == np.bincount(labels, minlength=5).tolist()
    if split == "train":
      names = [path.name for path, _ in expected]
      at = names.index(CONSTANT[1])
      assert labels[at] == sorted(WNIDS).index(CONSTANT[0]) and (images[at] == CONSTANT[2]).all()
      gray = images[names.index(GRAY[1])]
      assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()
  test_labels = [int(y) for _, y in imagenet.load_prepared(out, "test").as_numpy_iterator()]
  assert test_labels == [y for _, y in _prepared_order(root, "val", 4)]


def test_resume_redoes_missing_corrupt_and_unfinished_shards_only(folder, tmp_path):
  original, _, _ = folder
  out = tmp_path / "out"
  shutil.copytree(original.out_dir, out)
  config = dataclasses.replace(original, out_dir=str(out))
  shards = sorted(p for p in os.listdir(out / "train") if p.endswith(".tfrecord"))
  os.remove(out / "train" / shards[0])
  os.remove(out / "train" / (shards[0] + ".done"))
  corrupt = bytearray((out / "train" / shards[1]).read_bytes())
  corrupt[len(corrupt) // 2] ^= 0xFF
  (out / "train" / shards[1]).write_bytes(bytes(corrupt))  # its .done's sha256 no longer matches
  os.remove(out / "train" / (shards[2] + ".done"))  # renamed into place, stopped before the .done
  (out / "train" / f".{shards[3]}.x1y2.tmp").write_bytes(b"half a shard")  # a crash mid-write
  os.remove(out / "manifest.json")
  untouched = {p: t for p, t in _mtimes(out).items() if os.path.basename(p).startswith(tuple(shards[3:]))}
  imagenet.prepare(config)
  assert _shard_files(out) == _shard_files(original.out_dir)
  assert not [p for p in os.listdir(out / "train") if p.endswith(".tmp")]
  assert all(_mtimes(out)[p] == t for p, t in untouched.items())
  with open(os.path.join(original.out_dir, "manifest.json")) as f:
    assert json.loads((out / "manifest.json").read_text()) == json.load(f)
  before = _mtimes(out)
  imagenet.prepare(config)
  assert _mtimes(out) == before  # everything complete: nothing written
  with pytest.raises(ValueError, match="examples_per_shard"):
    imagenet.prepare(dataclasses.replace(config, examples_per_shard=5))


def test_tfds_source_contiguous_shards(tfds_prepared):
  config, builder, labels, manifest = tfds_prepared
  assert manifest["num_classes"] == 1000 and manifest["source"]["kind"] == "tfds"
  train = manifest["splits"]["train"]
  assert train["num_shards"] == 3 and train["assignment"] == "contiguous"
  assert [s["num_examples"] for s in train["shards"]] == [4, 4, 1]
  wnids = imagenet.read_classes(config.out_dir)
  assert wnids == tuple(sorted(wnids)) and len(wnids) == 1000 and wnids[0] == "n01440764"
  got = list(imagenet.load_prepared(config.out_dir, "train").as_numpy_iterator())
  assert [int(y) for _, y in got] == labels  # imagenet2012's labels are already sorted-WNID positions
  source = list(builder.as_dataset(split="train", shuffle_files=False).as_numpy_iterator())
  for i in (0, 5, 8):  # shard 1 spans both TFDS files; 8 is the last
    np.testing.assert_array_equal(got[i][0], imagenet.downsample(source[i]["image"], 64).numpy())
  assert len(list(imagenet.load_prepared(config.out_dir, "val"))) == 3


def test_tf_data_service_writes_the_same_bytes(folder, tfds_prepared, tmp_path):
  dispatcher = service.start_dispatcher(0)
  port = dispatcher.target.rsplit(":", 1)[1]
  workers = [service.start_worker(f"127.0.0.1:{port}", worker_address="127.0.0.1:%port%")
             for _ in range(2)]
  try:
    for name, local in (("folder", folder[0]), ("tfds", tfds_prepared[0])):
      # Each pipeline is one service job (~1 s of set-up): several shards per job, few jobs.
      imagenet.prepare(dataclasses.replace(local, out_dir=str(tmp_path / name), shards_per_job=8,
                                           data_service=f"grpc://127.0.0.1:{port}"))
      assert _shard_files(tmp_path / name) == _shard_files(local.out_dir)
      for file in ("classes.txt", "manifest.json", "train/class_index.npz", "val/class_index.npz"):
        with open(os.path.join(local.out_dir, file), "rb") as f:
          assert (tmp_path / name / file).read_bytes() == f.read()
  finally:
    for w in workers:
      w.stop()
    dispatcher.stop()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
  image = pytest.importorskip("PIL.Image")
  os.makedirs(tmp_path / "src" / "val" / "n00000001")
  buffer = io.BytesIO()
  image.new("CMYK", (70, 50), (0, 255, 255, 0)).save(buffer, "JPEG")  # pure red
  (tmp_path / "src" / "val" / "n00000001" / "cmyk.JPEG").write_bytes(buffer.getvalue())
  imagenet.prepare(imagenet.PrepareConfig(out_dir=str(tmp_path / "out"), source_dir=str(tmp_path / "src"),
                                          splits=("val",)))
  (got, _), = imagenet.load_prepared(str(tmp_path / "out"), "val").as_numpy_iterator()
  np.testing.assert_allclose(got.reshape(-1, 3).mean(0), [255, 0, 0], atol=2)


def test_clear_errors(tmp_path):
  def prepare(**kw):
    imagenet.prepare(imagenet.PrepareConfig(out_dir=str(tmp_path / "out"), **kw))

  with pytest.raises(FileNotFoundError, match="--source_dir .*nowhere does not exist"):
    prepare(source_dir=str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "flat" / "train")
  (tmp_path / "flat" / "train" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
  with pytest.raises(ValueError, match="holds no class folders"):
    prepare(source_dir=str(tmp_path / "flat"))
  os.makedirs(tmp_path / "bad" / "val" / "n00000001")
  (tmp_path / "bad" / "val" / "n00000001" / "broken.JPEG").write_bytes(b"not a jpeg")
  with pytest.raises(ValueError, match="broken.JPEG: not a decodable image"):
    prepare(source_dir=str(tmp_path / "bad"), splits=("val",))
  with pytest.raises(FileNotFoundError, match="train.* does not exist"):
    prepare(source_dir=str(tmp_path / "bad"), splits=("train",))
  with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar is missing"):
    prepare(source="tfds", tfds_data_dir=str(tmp_path / "tfds"), splits=("train",))
  with pytest.raises(ValueError, match="grpc://host:port"):
    prepare(source_dir=str(tmp_path / "bad"), data_service="localhost:5050")
  with pytest.raises(FileNotFoundError, match="not a prepared ImageNet directory"):
    imagenet.load_prepared(str(tmp_path / "elsewhere"), "train")


def test_tool(folder, tmp_path):
  config, counts, _ = folder
  tool = [sys.executable, os.path.join(REPO, "tools", "prepare_imagenet.py")]
  runs = [  # both at once: most of each run is importing TensorFlow
      subprocess.Popen(tool + [f"--source_dir={config.source_dir}", f"--out_dir={tmp_path / 'out'}",
                               "--split=val", "--examples_per_shard=4", "--num_parallel_calls=2"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
      subprocess.Popen(tool + [f"--source_dir={tmp_path / 'nowhere'}", f"--out_dir={tmp_path / 'o'}"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  (ok_out, ok_err), (_, bad_err) = (p.communicate(timeout=120) for p in runs)
  assert runs[0].returncode == 0, ok_err
  assert f"val {counts['val']} examples in {math.ceil(counts['val'] / 4)} shards" in ok_out
  assert _shard_files(tmp_path / "out") == {k: v for k, v in _shard_files(config.out_dir).items()
                                            if k.startswith("val")}
  assert runs[1].returncode == 1 and "nowhere does not exist" in bad_err and "Traceback" not in bad_err

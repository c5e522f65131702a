"""ImageNet-1K at 64x64: prepare resumable TFRecord shards from ILSVRC JPEGs, and read them back.

Sources:
  folder  `<source_dir>/{train,val}/<wnid>/*.JPEG` (the ILSVRC layout, val sorted into WNID folders);
          the classes are the WNID folders of train (of val when only val exists), sorted.
  tfds    TFDS `imagenet2012` in `tfds_data_dir`, already prepared, or prepared here from the tars in
          its manual dir (`<tfds_data_dir>/downloads/manual/ILSVRC2012_img_{train,val}.tar`); never a
          download. Its labels are mapped to sorted-WNID order (imagenet2012 already uses it).

Resize: the downsampled-ImageNet convention (Chrabaszcz et al. 2017): the whole image, no crop and no
aspect preservation, box-filtered to `image_size` x `image_size` with `tf.image.resize(method="area")`
(exact pixel-area averaging, always anti-aliased), rounded to the nearest integer (ties to even), uint8.

Order: every split has a source order (folder: sorted WNID, then sorted file name; tfds: TFDS's own
record order). With S = ceil(n / examples_per_shard) shards, a folder split is dealt round-robin
(shard k holds source positions k, k+S, k+2S, ...: every shard mixes all classes), a TFDS split in
contiguous slices (TFDS already shuffled its records). Within a shard, examples ascend by source
position. The prepared order, the one `load_prepared` reads and the class index refers to, is shard 0,
then shard 1, ...

Layout of `out_dir`:
  manifest.json                        splits, shards (+ sha256), resize, image size, source
  classes.txt                          the WNIDs in label order (label i = line i)
  <split>/<split>-KKKKK-of-SSSSS.tfrecord   tf.train.Example {"image": PNG bytes, "label": int64}
  <split>/<split>-KKKKK-of-SSSSS.tfrecord.done   {"num_examples", "sha256", "labels", "source", ...}
  <split>/class_index.npz              per-class positions in the prepared order (class_index module)

Each shard is written to a temporary file and renamed; its `.done` sidecar follows. A rerun keeps a
shard whose `.done` matches the file's sha256 and the shard's source fingerprint, and redoes every other
shard, so an interrupted preparation resumes where it stopped and a finished one writes nothing.
manifest.json is removed while shards are being (re)written and written last: it marks a usable output.

Through the tf.data service (`data_service`), workers read and decode the source files (they must see
the same paths) in "distributed_epoch" mode, which does not keep order: every element carries its
source position, and shards are sorted by it before writing, so the bytes equal a local run's.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf

from tesla_tf import errors
from tesla_tf import files
from tesla_tf.data import class_index
from tesla_tf.data import service

SOURCES = ("folder", "tfds")
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
CLASSES = "classes.txt"
CLASS_INDEX = "class_index.npz"
FORMAT = "tesla_tf.imagenet_prepared/1"
RESIZE = {"method": "area", "antialias": True, "crop": "none (whole image, aspect not kept)",
          "rounding": "nearest, ties to even, clipped to [0, 255]"}
_TFDS_NAME = "imagenet2012"
_TFDS_SPLITS = {"train": "train", "val": "validation"}
_TFDS_TARS = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar"}
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  """What `prepare` writes.

  Attributes:
    out_dir: output directory (created; a rerun resumes it).
    source: "folder" or "tfds".
    source_dir: the ILSVRC folder root (source "folder").
    tfds_data_dir: TFDS data_dir holding imagenet2012 (source "tfds"); "" = TFDS's default.
    splits: some of SPLITS.
    examples_per_shard: at most this many examples per shard (1281 gives ~1000 train shards).
    image_size: output height = width.
    data_service: tf.data service dispatcher "grpc://host:port" decoding for us, or "" for local.
    num_parallel_calls: parallel decodes per pipeline; -1 = tf.data.AUTOTUNE.
    shards_per_job: shards decoded by one tf.data pipeline (one service job); bounds the work in flight.
  """
  out_dir: str
  source: str = "folder"
  source_dir: str = ""
  tfds_data_dir: str = ""
  splits: tuple = SPLITS
  examples_per_shard: int = 1281
  image_size: int = 64
  data_service: str = ""
  num_parallel_calls: int = -1
  shards_per_job: int = 16


def downsample(image, image_size):
  """Box-resizes one whole image to [image_size, image_size, c] uint8 (area filter, rounded)."""
  small = tf.image.resize(image, [image_size, image_size], method="area", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(small), 0.0, 255.0), tf.uint8)


# Sources --------------------------------------------------------------------------------------------

class _FolderSource:
  """`<root>/<split>/<wnid>/*.{JPEG,jpg,png}`; source order = sorted WNID, then sorted file name."""
  round_robin = True

  def __init__(self, root):
    if not root:
      raise errors.UsageError("--source_dir is required with --source=folder (the ILSVRC root holding "
                       "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG).")
    self.root = os.path.abspath(root)
    if not os.path.isdir(self.root):
      raise errors.MissingDataError(f"--source_dir {self.root} does not exist (expected the ILSVRC root "
                              "holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG).")
    class_dir = next((d for d in (os.path.join(self.root, s) for s in SPLITS) if os.path.isdir(d)), None)
    if class_dir is None:
      raise errors.MissingDataError(f"--source_dir {self.root} holds neither train/ nor val/.")
    self.classes = tuple(self._wnid_folders(class_dir))
    self._files = {}

  @staticmethod
  def _wnid_folders(split_dir):
    wnids = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not wnids:
      raise errors.CorruptFileError(f"{split_dir} holds no class folders: expected one folder per WNID "
                       f"({split_dir}/<wnid>/*.JPEG); an ILSVRC val folder must first be sorted into "
                       "WNID folders.")
    return wnids

  def files(self, split):
    """Returns (relative paths [n], int32 labels [n]) of `split` in source order."""
    if split not in self._files:
      split_dir = os.path.join(self.root, split)
      if not os.path.isdir(split_dir):
        raise errors.MissingDataError(f"{split_dir} does not exist (--source_dir={self.root}, --split={split}).")
      label_of = {w: i for i, w in enumerate(self.classes)}
      paths, labels = [], []
      for wnid in self._wnid_folders(split_dir):
        if wnid not in label_of:
          raise errors.CorruptFileError(f"{os.path.join(split_dir, wnid)}: class {wnid!r} is not among the "
                           f"{len(self.classes)} class folders of {os.path.dirname(split_dir)}/train.")
        names = sorted(e.name for e in os.scandir(os.path.join(split_dir, wnid))
                       if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES))
        if not names:
          raise errors.CorruptFileError(f"{os.path.join(split_dir, wnid)} holds no .JPEG/.jpg/.png images.")
        paths += [f"{split}/{wnid}/{n}" for n in names]
        labels += [label_of[wnid]] * len(names)
      self._files[split] = (np.array(paths, dtype=object), np.array(labels, np.int32))
    return self._files[split]

  def describe(self):
    return {"kind": "folder", "path": self.root}

  def size(self, split):
    return len(self.files(split)[0])

  def fingerprint(self, split, positions):
    paths, labels = self.files(split)
    return _sha256_text("\n".join(f"{p}\t{y}" for p, y in zip(paths[positions], labels[positions])))

  def dataset(self, split, positions):
    """Returns a dataset of (int64 position, encoded image bytes, int32 label) for `positions`."""
    paths, labels = self.files(split)
    full = np.array([os.path.join(self.root, p) for p in paths[positions]], dtype=str)
    ds = tf.data.Dataset.from_tensor_slices((positions.astype(np.int64), full, labels[positions]))
    return ds.map(lambda i, path, y: (i, tf.io.read_file(path), y))

  def find_undecodable(self, split, positions):
    """Returns the first file among `positions` TF cannot decode, or None."""
    for p in self.files(split)[0][positions]:
      try:
        tf.io.decode_image(tf.io.read_file(os.path.join(self.root, p)), channels=3,
                           expand_animations=False)
      except (tf.errors.OpError, ValueError):
        return os.path.join(self.root, p)
    return None


class _TfdsSource:
  """TFDS imagenet2012; source order = TFDS's record order (file by file, record by record)."""
  round_robin = False

  def __init__(self, data_dir, splits):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow; TFDS source only)
    self._tfds = tfds
    self._builder = tfds.builder(_TFDS_NAME, data_dir=data_dir or None)
    if not self._builder.is_prepared():
      self._prepare_from_manual_dir(splits)
    label_names = self._builder.info.features["label"].names
    self.classes = tuple(sorted(label_names))
    remap = np.empty(len(label_names), np.int32)
    remap[np.argsort(label_names, kind="stable")] = np.arange(len(label_names), dtype=np.int32)
    self._remap = remap
    file_format = getattr(self._builder.info.file_format, "value", "tfrecord")
    if file_format != "tfrecord":
      raise errors.CorruptFileError(f"TFDS {_TFDS_NAME} in {self._builder.data_dir} is stored as {file_format}; "
                       "this reader needs tfrecord files.")
    for split in splits:
      if _TFDS_SPLITS[split] not in self._builder.info.splits:
        raise errors.MissingDataError(f"TFDS {_TFDS_NAME} in {self._builder.data_dir} has no "
                                f"{_TFDS_SPLITS[split]!r} split; it was prepared without "
                                f"{_TFDS_TARS[split]}.")

  def _prepare_from_manual_dir(self, splits):
    manual_dir = os.path.join(os.path.dirname(os.path.dirname(self._builder.data_dir)), "downloads",
                              "manual")
    tars = [os.path.join(manual_dir, _TFDS_TARS[s]) for s in splits]
    missing = [t for t in tars if not os.path.isfile(t)]
    if missing:
      raise errors.MissingDataError(
          f"TFDS {_TFDS_NAME} is not prepared in {self._builder.data_dir}, and {', '.join(missing)} "
          "is missing (ImageNet is never downloaded: place the ILSVRC2012 tars from image-net.org in "
          "that manual dir, or pass --tfds_data_dir of a prepared copy).")
    logging.info("Preparing TFDS %s from %s (once; this takes hours).", _TFDS_NAME, manual_dir)
    self._builder.download_and_prepare(download_config=self._tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))

  def _split(self, split):
    return self._builder.info.splits[_TFDS_SPLITS[split]]

  def describe(self):
    return {"kind": "tfds", "name": _TFDS_NAME, "version": str(self._builder.version),
            "data_dir": os.path.dirname(os.path.dirname(self._builder.data_dir))}

  def size(self, split):
    return self._split(split).num_examples

  def fingerprint(self, split, positions):
    return _sha256_text(f"{_TFDS_NAME}:{self._builder.version}:{_TFDS_SPLITS[split]}:"
                        + ",".join(str(p) for p in positions))

  def dataset(self, split, positions):
    """Returns a dataset of (int64 position, JPEG bytes, int32 label) for `positions`.

    The TFDS record files are read here rather than through `as_dataset`, whose cardinality assertion
    fails when the tf.data service gives each worker a part: one element per TFDS file instruction
    (file, skip, take, position of its first record), so the service hands whole instructions out.
    """
    info = self._split(split)
    lo, hi = int(positions.min()), int(positions.max()) + 1
    first = dict(zip(info.filenames, np.concatenate([[0], np.cumsum(info.shard_lengths)[:-1]])))
    files, skips, takes, starts = [], [], [], []
    for fi in self._builder.info.splits[f"{_TFDS_SPLITS[split]}[{lo}:{hi}]"].file_instructions:
      take = fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip
      files.append(os.fspath(fi.filename))
      skips.append(fi.skip), takes.append(take)
      starts.append(first[os.path.basename(files[-1])] + fi.skip)
    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}
    remap = tf.constant(self._remap)

    def read(path, skip, take, start):
      records = tf.data.TFRecordDataset(path).skip(skip).take(take)
      return tf.data.Dataset.zip(tf.data.Dataset.counter(start), records)

    def convert(position, record):
      example = tf.io.parse_single_example(record, features)
      return position, example["image"], tf.gather(remap, tf.cast(example["label"], tf.int32))

    ds = tf.data.Dataset.from_tensor_slices((files, np.array(skips, np.int64), np.array(takes, np.int64),
                                             np.array(starts, np.int64)))
    ds = ds.interleave(read, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.map(convert)
    wanted = np.zeros(hi - lo, bool)
    wanted[positions - lo] = True
    if not wanted.all():
      mask = tf.constant(wanted)
      ds = ds.filter(lambda i, *_: tf.gather(mask, i - lo))
    return ds

  def find_undecodable(self, split, positions):  # pylint: disable=unused-argument
    return None


# Shards ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Plan:
  """Which source positions each shard of a split holds."""
  size: int
  examples_per_shard: int
  round_robin: bool

  @property
  def num_shards(self):
    return math.ceil(self.size / self.examples_per_shard)

  def members(self, k):
    if self.round_robin:
      return np.arange(k, self.size, self.num_shards, dtype=np.int64)
    start = k * self.examples_per_shard
    return np.arange(start, min(start + self.examples_per_shard, self.size), dtype=np.int64)

  def shard_of(self, position):
    return position % self.num_shards if self.round_robin else position // self.examples_per_shard


def shard_name(split, k, num_shards):
  """File name of shard k of num_shards."""
  return f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord"


def _sha256_text(text):
  return hashlib.sha256(text.encode()).hexdigest()


def _write_text(path, text):
  """Writes text atomically unless `path` already holds exactly it (so a no-op rerun writes nothing)."""
  if os.path.isfile(path):
    with open(path) as f:
      if f.read() == text:
        return
  files.write_text(path, text)


def _read_done(path, expected):
  """Returns the `.done` record of a finished shard, or None when the shard must be (re)done."""
  try:
    with open(path + ".done") as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  if any(done.get(key) != value for key, value in expected.items()) or not os.path.isfile(path):
    return None
  return done if files.sha256(path) == done.get("sha256") else None


def _write_shard(path, records, expected):
  """Writes one shard atomically, then its `.done` sidecar; returns the `.done` record.

  Args:
    path: the shard file.
    records: {position: (png bytes, label)} of the shard's examples.
    expected: fields the `.done` must carry for a later run to accept the shard.
  """
  labels = [int(records[p][1]) for p in sorted(records)]

  def write(tmp):
    with tf.io.TFRecordWriter(tmp) as writer:
      for position, label in zip(sorted(records), labels):
        example = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[records[position][0]])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
        writer.write(example.SerializeToString(deterministic=True))  # Same map order in every process.
    return files.sha256(tmp)

  done = dict(expected, sha256=files.atomic_path(path, write), labels=labels)
  _write_text(path + ".done", json.dumps(done))
  return done


def _check_layout(split_dir, split, num_shards):
  """Refuses a split directory holding shards of another shard count (another --examples_per_shard)."""
  pattern = re.compile(rf"^{re.escape(split)}-\d+-of-(\d+)\.tfrecord$")
  for name in sorted(os.listdir(split_dir)):
    match = pattern.match(name)
    if match and int(match.group(1)) != num_shards:
      raise errors.CorruptFileError(f"{os.path.join(split_dir, name)} belongs to a preparation with "
                       f"{int(match.group(1))} shards, this one has {num_shards} (another "
                       "--examples_per_shard or source?); use a fresh --out_dir or delete that split.")
    if name.startswith(f".{split}-") and name.endswith(".tmp"):
      os.remove(os.path.join(split_dir, name))  # Left by an interrupted run of ours.


def encode_fn(image_size):
  def encode(position, data, label):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return position, tf.io.encode_png(downsample(image, image_size)), label
  return encode


def _prepare_split(source, split, config, num_classes):
  """Writes (or completes) one split's shards and class index; returns its manifest entry."""
  plan = _Plan(source.size(split), config.examples_per_shard, source.round_robin)
  if plan.size == 0:
    raise errors.CorruptFileError(f"The {split} split of the {source.describe()['kind']} source has no examples.")
  split_dir = os.path.join(config.out_dir, split)
  os.makedirs(split_dir, exist_ok=True)
  _check_layout(split_dir, split, plan.num_shards)
  paths = [os.path.join(split_dir, shard_name(split, k, plan.num_shards)) for k in range(plan.num_shards)]

  def expected(k):
    return {"num_examples": len(plan.members(k)), "image_size": config.image_size,
            "source": source.fingerprint(split, plan.members(k))}

  dones = {k: _read_done(paths[k], expected(k)) for k in range(plan.num_shards)}
  pending = [k for k, done in dones.items() if done is None]
  logging.info("%s: %d examples in %d shards, %d to write.", split, plan.size, plan.num_shards,
               len(pending))
  if pending and os.path.isfile(os.path.join(config.out_dir, MANIFEST)):
    os.remove(os.path.join(config.out_dir, MANIFEST))  # Until rewritten last, the output is not usable.
  encode = encode_fn(config.image_size)
  start, written = time.time(), 0
  for j in range(0, len(pending), config.shards_per_job):
    block = pending[j:j + config.shards_per_job]
    positions = np.concatenate([plan.members(k) for k in block])
    ds = source.dataset(split, positions).map(encode, num_parallel_calls=config.num_parallel_calls,
                                              deterministic=False)
    if config.data_service:
      ds = service.distribute(ds, config.data_service)
    buffers, sizes = {k: {} for k in block}, {k: len(plan.members(k)) for k in block}
    try:
      for position, png, label in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        k = int(plan.shard_of(position))
        buffers[k][int(position)] = (png, label)
        if len(buffers[k]) == sizes[k]:
          dones[k] = _write_shard(paths[k], buffers.pop(k), expected(k))
          written += 1
          rate = written / max(time.time() - start, 1e-9)
          logging.info("%s: wrote %s (%d/%d pending shards, %.2f shards/s, ETA %.0f s)", split,
                       os.path.basename(paths[k]), written, len(pending), rate,
                       (len(pending) - written) / rate)
    except tf.errors.OpError as e:
      bad = source.find_undecodable(split, positions)
      if bad:
        raise errors.CorruptFileError(f"{bad}: not a decodable image; remove or convert it and rerun (finished "
                         "shards are kept).") from e
      raise RuntimeError(f"Decoding {split} shards {block[0]}..{block[-1]} failed: {e.message}") from e
    if buffers:
      lost = {k: sizes[k] - len(b) for k, b in buffers.items()}
      raise RuntimeError(f"{split}: examples missing from shards {lost} (a tf.data service worker "
                         "lost work?); rerun to redo those shards.")

  labels = np.concatenate([np.asarray(dones[k]["labels"], np.int64) for k in range(plan.num_shards)])
  index = class_index.build_class_index(labels, num_classes)
  index_path = os.path.join(split_dir, CLASS_INDEX)
  old = class_index.load_class_index(index_path) if os.path.isfile(index_path) else None
  if old is None or len(old) != len(index) or any(not np.array_equal(a, b) for a, b in zip(old, index)):
    class_index.save_class_index(index, index_path)
  return {"num_examples": plan.size, "num_shards": plan.num_shards,
          "examples_per_shard": config.examples_per_shard,
          "assignment": "round_robin" if plan.round_robin else "contiguous",
          "class_index": f"{split}/{CLASS_INDEX}",
          "class_counts": [len(p) for p in index],
          "shards": [{"file": f"{split}/{os.path.basename(p)}", "num_examples": dones[k]["num_examples"],
                      "sha256": dones[k]["sha256"]} for k, p in enumerate(paths)]}


def _check_config(config):
  if config.source not in SOURCES:
    raise errors.UsageError(f"--source must be one of {SOURCES}, got {config.source!r}.")
  if not config.splits or set(config.splits) - set(SPLITS) or len(set(config.splits)) != len(config.splits):
    raise errors.UsageError(f"--split must list distinct splits among {SPLITS}, got {list(config.splits)}.")
  if not config.out_dir:
    raise errors.UsageError("--out_dir is required.")
  for name in ("examples_per_shard", "image_size", "shards_per_job"):
    if getattr(config, name) < 1:
      raise errors.UsageError(f"--{name} must be at least 1, got {getattr(config, name)}.")
  if config.num_parallel_calls < 1 and config.num_parallel_calls != -1:
    raise errors.UsageError(f"--num_parallel_calls must be -1 (autotune) or >= 1, got {config.num_parallel_calls}.")
  if config.data_service:
    service.check_address(config.data_service)


def prepare(config):
  """Writes (or resumes) the 64x64 TFRecord shards, class indexes, classes.txt and manifest.json.

  Args:
    config: a PrepareConfig.

  Returns:
    The manifest (also written to `<out_dir>/manifest.json`).

  Raises:
    FileNotFoundError: the source is missing (names the path and what was expected).
    ValueError: a bad setting or source layout, an undecodable image, or an `out_dir` prepared with
      other classes or another shard count.
  """
  _check_config(config)
  if config.source == "folder":
    source = _FolderSource(config.source_dir)
  else:
    source = _TfdsSource(config.tfds_data_dir, config.splits)
  os.makedirs(config.out_dir, exist_ok=True)
  classes_text = "".join(f"{w}\n" for w in source.classes)
  classes_path = os.path.join(config.out_dir, CLASSES)
  if os.path.isfile(classes_path):
    with open(classes_path) as f:
      if f.read() != classes_text:
        raise errors.CorruptFileError(f"{classes_path} lists other classes than {source.describe()}; labels would "
                         "disagree between runs: use a fresh --out_dir.")
  _write_text(classes_path, classes_text)
  if len(source.classes) != 1000:
    logging.warning("%d classes (ImageNet-1K has 1000).", len(source.classes))

  manifest = {"format": FORMAT, "image_size": config.image_size, "resize": RESIZE,
              "source": source.describe(), "num_classes": len(source.classes), "classes": CLASSES,
              "splits": {}}
  manifest_path = os.path.join(config.out_dir, MANIFEST)
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      old = json.load(f)
    if all(old.get(k) == manifest[k] for k in ("format", "image_size", "resize", "source", "num_classes")):
      manifest["splits"] = {s: e for s, e in old.get("splits", {}).items() if s not in config.splits}
  for split in config.splits:
    manifest["splits"][split] = _prepare_split(source, split, config, len(source.classes))
  manifest["splits"] = dict(sorted(manifest["splits"].items()))
  _write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
  return manifest


# Reading --------------------------------------------------------------------------------------------

def read_manifest(out_dir):
  """Returns the manifest of a prepared directory; FileNotFoundError when it is not one."""
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.isfile(path):
    raise errors.MissingDataError(f"{path} not found: {out_dir} is not a prepared ImageNet directory (run "
                            "tools/prepare_imagenet.py; a preparation writes the manifest last).")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise errors.CorruptFileError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
  return manifest


def read_classes(out_dir):
  """Returns the WNIDs of a prepared directory in label order."""
  with open(os.path.join(out_dir, CLASSES)) as f:
    return tuple(line.strip() for line in f if line.strip())


def load_prepared(out_dir, split):
  """Reads prepared shards in the prepared order (the order the split's class index refers to).

  Args:
    out_dir: a directory written by `prepare`.
    split: "train", or "val" (alias "test", the name `sources` uses for the held-out split).

  Returns:
    A dataset of (uint8 image [s, s, 3], int32 label []).
  """
  manifest = read_manifest(out_dir)
  split = "val" if split == "test" else split
  if split not in manifest["splits"]:
    raise errors.CorruptFileError(f"{out_dir} has no prepared {split!r} split (it has "
                     f"{sorted(manifest['splits'])}); run tools/prepare_imagenet.py --split={split}.")
  shard_paths = [os.path.join(out_dir, s["file"]) for s in manifest["splits"][split]["shards"]]
  missing = [f for f in shard_paths if not os.path.isfile(f)]
  if missing:
    raise errors.MissingDataError(f"{len(missing)} shards listed in {os.path.join(out_dir, MANIFEST)} are "
                            f"missing, e.g. {missing[0]}; rerun tools/prepare_imagenet.py to redo them.")
  size = manifest["image_size"]
  features = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    image = tf.ensure_shape(tf.io.decode_png(example["image"], channels=3), [size, size, 3])
    return image, tf.cast(example["label"], tf.int32)
  # One file after the other (no parallel reads): the order must stay the class index's.
  return tf.data.TFRecordDataset(shard_paths).map(parse, num_parallel_calls=tf.data.AUTOTUNE)

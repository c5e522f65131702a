"""Export and import of distilled sets: TFRecord shards + metadata.json, also readable by TFDS.

An export directory (`<run_dir>/distilled/` by default) holds:
  distilled-train.tfrecord-XXXXX-of-YYYYY  shards of at most `shard_size` tf.train.Examples, one per
                                           synthetic image, in the set's (class-sorted) order:
      index       int64              position of the image in the set
      image_raw   float32 [h, w, c]  the image in model space, stored as raw little-endian bytes
                                     (bit-exact: this is what training on the set uses)
      image       PNG, uint8 [h, w, c]  the same image in pixel space for viewing: preprocessor.invert,
                                     clipped to [0, 1], rounded to 8 bits (lossy; never trained on)
      label       int64              the hard label (argmax of the label row)
      soft_label  float32 [C]        the label row (one-hot for hard-label sets)
  metadata.json        what is needed to use the set: dataset, class names, image shape, C, IPC, n,
                       the preprocessing (to_dict() of the preprocessor), the learned α (`lr`), the
                       distillation model, the run's config, the project version, and every shard and
                       preprocessing file with its size and sha256
  zca.npz              ZCA matrices, for ZCA-whitened sets (preprocess.ZCA.save)
  dataset_info.json, features.json, label.labels.txt
                       TFDS metadata: `tfds.builder_from_directory(dir).as_dataset(split="train")`
                       yields the same examples (TFDS may interleave shards; `index` gives the order)

Exports are atomic: everything is written to a temporary directory beside `out_dir`, which replaces
`out_dir` only once complete. Loading checks every file's size and sha256 first, so a truncated or
corrupted shard is refused with its name instead of yielding garbage.

`load_any` reads a set from an export directory or from a run directory (its `distilled/` export).
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import tesla_tf
from tesla_tf import errors
from tesla_tf import files
from tesla_tf.data import preprocess
from tesla_tf.data import sources

METADATA_FILE = "metadata.json"
EXPORT_DIR = "distilled"
FORMAT = "tesla_tf.distilled/1"
TFDS_NAME = "distilled"
SPLIT = "train"
FILE_SUFFIX = "tfrecord"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SHARD_SIZE = 1000
PNG_ROWS = 1024  # images converted to pixels at a time by an export
_TFDS_FILES = ("dataset_info.json", "features.json")
# metadata.json: key -> (type(s), required); `read_metadata` refuses anything else.
_NUMBER = (int, float)
METADATA_KEYS = {
    "format": (str, True), "version": (str, True), "dataset": (str, True), "class_names": (list, True),
    "image_shape": (list, True), "num_classes": (int, True), "ipc": (int, True),
    "num_examples": (int, True), "soft_labels": (bool, True), "lr": (_NUMBER, True),
    "preprocessing": (dict, True), "model": (dict, True), "config": (dict, True), "shards": (list, True),
    "files": (list, True), "tfds": (dict, True), "holdout": (dict, False), "data_options": (dict, False),
}
_ENTRY_KEYS = {"file": str, "bytes": int, "sha256": str}


@dataclasses.dataclass
class DistilledSet:
  """A distilled data set as delivered: everything needed to train on it elsewhere.

  Attributes:
    images: float32 [n, h, w, c] in the experts' model space (normalised or ZCA-whitened), class-sorted.
    labels: float32 [n, C] probability rows (one-hot for hard labels).
    lr: the learned step size α (the evaluation learning rate).
    dataset: its name for tesla_tf.data.sources.get_info (a key of DATASETS, "folder", "tfds:<name>").
    ipc: images per class.
    preprocessing: the preprocessor's `to_dict()` (how to map pixels to model space and back).
    model: {"name": ..., plus builder kwargs} of the distillation architecture.
    config: the effective settings of the run that made it (flags), for provenance.
    holdout: the validation split held out of the train set ({"size", "seed"}, data/holdout.py), which
      evaluation measures on and keeps out of the random-subset baseline; {} = none.
    class_names: the C class names (default: the dataset registry's, see class_names_for).
    data_options: how the real data is read (sources.get_info options, e.g. {"image_size": 32}).
  """
  images: np.ndarray
  labels: np.ndarray
  lr: float
  dataset: str
  ipc: int
  preprocessing: dict
  model: dict
  config: dict = dataclasses.field(default_factory=dict)
  holdout: dict = dataclasses.field(default_factory=dict)
  class_names: list = dataclasses.field(default_factory=list)
  data_options: dict = dataclasses.field(default_factory=dict)

  @property
  def hard_labels(self):
    """int32 [n]: the argmax class of every row (the class an image was initialised from)."""
    return np.argmax(self.labels, axis=1).astype(np.int32)

  @property
  def soft(self):
    """True when the labels are not one-hot."""
    return not np.array_equal(self.labels, np.eye(self.labels.shape[1], dtype=self.labels.dtype)[
        self.hard_labels])


class CorruptExportError(errors.CorruptFileError):
  """An export directory is incomplete or damaged; the message names the file."""


def features(image_shape, class_names):
  """The TFDS FeaturesDict of one exported example (shared by writer, reader and TFDS)."""
  return tfds.features.FeaturesDict({
      "index": tfds.features.Scalar(dtype=np.int64),
      "image_raw": tfds.features.Tensor(shape=tuple(image_shape), dtype=np.float32,
                                        encoding=tfds.features.Encoding.BYTES),
      "image": tfds.features.Image(shape=tuple(image_shape), encoding_format="png"),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "soft_label": tfds.features.Tensor(shape=(len(class_names),), dtype=np.float32),
  })


def shard_name(shard, num_shards):
  return f"{TFDS_NAME}-{SPLIT}.{FILE_SUFFIX}-{shard:05d}-of-{num_shards:05d}"


def _file_entry(directory, name, **extra):
  path = os.path.join(directory, name)
  return {"file": name, "bytes": os.path.getsize(path), "sha256": files.sha256(path), **extra}


def json_safe(value):
  """Converts numpy scalars/arrays and tuples to plain JSON values; anything else becomes its str."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def class_names_for(dataset, num_classes):
  """The dataset's class names when known and C matches, else "0", "1", ... (e.g. for synthetic tests)."""
  try:
    names = tuple(sources.class_names(dataset))
  except (ValueError, OSError):  # unknown dataset, or names that need the data on disk
    names = ()
  return names if len(names) == num_classes else tuple(str(i) for i in range(num_classes))


def resolve_preprocessor(distilled_set, preprocessor=None, preprocessing_dir=None):
  """The preprocessor object of a set: the one given (checked against the set), or rebuilt.

  Args:
    distilled_set: the DistilledSet.
    preprocessor: an already built preprocessor, or None.
    preprocessing_dir: where files named by the set's preprocessing dict live (ZCA matrices).

  Raises:
    ValueError: the given preprocessor does not describe the set, or ZCA files cannot be found.
  """
  if preprocessor is not None:
    if json_safe(preprocessor.to_dict()) != json_safe(distilled_set.preprocessing):
      raise ValueError(f"The preprocessor {preprocessor.to_dict()} is not the set's preprocessing "
                       f"{distilled_set.preprocessing}.")
    return preprocessor
  try:
    return preprocess.from_dict(distilled_set.preprocessing, preprocessing_dir)
  except (OSError, TypeError, ValueError) as e:
    raise ValueError(f"Cannot restore the set's preprocessing ({e}). Pass the preprocessor, or the "
                     "directory holding its files as preprocessing_dir.") from e


def _pixel_png(images, preprocessor, rows=PNG_ROWS):
  """PNG bytes of every image in pixel space (invert, clip to [0, 1], round to uint8), `rows` images at
  a time: converting the whole set at once held three more full-size copies of it (docs/scaling.md §1)."""
  pngs = []
  for i in range(0, len(images), rows):
    pixels = tf.clip_by_value(preprocessor.invert(tf.constant(images[i:i + rows])), 0.0, 1.0)
    pixels = tf.cast(tf.round(pixels * 255.0), tf.uint8)
    pngs += [tf.io.encode_png(p).numpy() for p in pixels]
  return pngs


def _check_set(distilled_set):
  images, labels = np.asarray(distilled_set.images), np.asarray(distilled_set.labels)
  if images.ndim != 4 or labels.ndim != 2 or images.shape[0] != labels.shape[0] or not images.shape[0]:
    raise ValueError(f"A distilled set needs images [n, h, w, c] and labels [n, C] with the same n > 0, "
                     f"got {images.shape} and {labels.shape}.")


def _write(distilled_set, directory, prep, class_names, shard_size):
  """Writes shards, preprocessing files, TFDS metadata and metadata.json into an empty directory."""
  images = np.ascontiguousarray(distilled_set.images, dtype=np.float32)
  labels = np.ascontiguousarray(distilled_set.labels, dtype=np.float32)
  n, num_classes = labels.shape
  feats = features(images.shape[1:], class_names)
  pngs = _pixel_png(images, prep)
  hard = distilled_set.hard_labels
  num_shards = -(-n // shard_size)
  shards = []
  for shard in range(num_shards):
    name = shard_name(shard, num_shards)
    rows = range(shard * shard_size, min(n, (shard + 1) * shard_size))
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
      for i in rows:
        writer.write(feats.serialize_example({
            "index": i, "image_raw": images[i], "image": pngs[i], "label": int(hard[i]),
            "soft_label": labels[i]}))
    shards.append(_file_entry(directory, name, num_examples=len(rows)))

  before = set(os.listdir(directory))
  prep.save(directory)
  extra_files = sorted(set(os.listdir(directory)) - before)

  template = tfds.core.ShardedFileTemplate(
      data_dir=directory, template=FILENAME_TEMPLATE, dataset_name=TFDS_NAME, split=SPLIT,
      filetype_suffix=FILE_SUFFIX)
  split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=[s["num_examples"] for s in shards],
                              num_bytes=sum(s["bytes"] for s in shards), filename_template=template)
  tfds.folder_dataset.write_metadata(
      data_dir=directory, features=feats, split_infos=[split], filename_template=template,
      check_data=False, description=f"Distilled {distilled_set.dataset}, {distilled_set.ipc} images per "
      "class (tesla_tf). image_raw is the exact model-space image; image is a viewable 8-bit PNG.")

  metadata = {
      "format": FORMAT,
      "version": tesla_tf.__version__,
      "dataset": distilled_set.dataset,
      "class_names": list(class_names),
      "image_shape": list(images.shape[1:]),
      "num_classes": int(num_classes),
      "ipc": int(distilled_set.ipc),
      "num_examples": int(n),
      "soft_labels": bool(distilled_set.soft),
      "lr": float(distilled_set.lr),
      "preprocessing": json_safe(distilled_set.preprocessing),
      "model": json_safe(distilled_set.model),
      "config": json_safe(distilled_set.config),
      "data_options": json_safe(distilled_set.data_options),
      "holdout": json_safe(distilled_set.holdout),
      "shards": shards,
      "files": [_file_entry(directory, name) for name in extra_files],
      "tfds": {"name": TFDS_NAME, "split": SPLIT, "filename_template": FILENAME_TEMPLATE},
  }
  files.write_json(os.path.join(directory, METADATA_FILE), metadata)
  return metadata


def export(distilled_set, out_dir, *, preprocessor=None, preprocessing_dir=None, class_names=None,
           shard_size=SHARD_SIZE):
  """Writes a distilled set to out_dir (replacing an earlier export there only once complete).

  Args:
    distilled_set: the DistilledSet (images [n, h, w, c] float32 in model space, labels [n, C]).
    out_dir: the export directory, e.g. <run_dir>/distilled.
    preprocessor: the preprocessor the set lives in (needed for ZCA unless preprocessing_dir is given).
    preprocessing_dir: directory holding the preprocessing files (zca.npz) named by the set's dict.
    class_names: C names; default the set's own, else the dataset registry's (or "0".."C-1" when it
      does not match C).
    shard_size: maximum examples per shard.

  Returns:
    The metadata dict written to metadata.json.
  """
  _check_set(distilled_set)
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
  prep = resolve_preprocessor(distilled_set, preprocessor, preprocessing_dir)
  num_classes = np.shape(distilled_set.labels)[1]
  class_names = tuple(class_names or distilled_set.class_names or
                      class_names_for(distilled_set.dataset, num_classes))
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} label columns.")

  out_dir = os.path.abspath(out_dir)
  parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = files.temp_dir(parent, base)
  try:
    metadata = _write(distilled_set, tmp, prep, class_names, shard_size)
    old = None
    if os.path.exists(out_dir):
      old = files.temp_dir(parent, base)
      os.replace(out_dir, os.path.join(old, base))
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if old:
    shutil.rmtree(old, ignore_errors=True)
  return metadata


def read_metadata(out_dir):
  """Reads <out_dir>/metadata.json; a missing or unreadable file is a CorruptExportError naming it."""
  path = os.path.join(out_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise CorruptExportError(f"Not a distilled-set export: {path} is missing (an export is written by "
                             "tesla_tf.data.distilled.export / tools/export.py).")
  try:
    with open(path) as f:
      metadata = json.load(f)
  except (OSError, ValueError) as e:
    raise CorruptExportError(f"{path} is not readable JSON: {e}") from e
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
    raise CorruptExportError(f"{path} has format {found!r}, expected {FORMAT!r}.")
  _check_metadata(path, metadata)
  return metadata


def _type_name(types):
  return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _check_metadata(path, metadata):
  """Refuses a metadata.json whose keys or value types are not those `export` writes, naming the key."""
  for key, (types, required) in METADATA_KEYS.items():
    if key not in metadata:
      if required:
        raise CorruptExportError(f"{path}: key {key!r} is missing.")
      continue
    value = metadata[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (
        types if isinstance(types, tuple) else (types,))):
      raise CorruptExportError(f"{path}: key {key!r} should be a {_type_name(types)}, found {value!r}.")
  extra = sorted(set(metadata) - set(METADATA_KEYS))
  if extra:
    raise CorruptExportError(f"{path}: unexpected key(s) {extra} (written by another version?).")
  shape = metadata["image_shape"]
  if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
    raise CorruptExportError(f"{path}: key 'image_shape' should be [h, w, c] positive ints, found {shape}.")
  if len(metadata["class_names"]) != metadata["num_classes"]:
    raise CorruptExportError(f"{path}: key 'class_names' has {len(metadata['class_names'])} names for "
                             f"num_classes {metadata['num_classes']}.")
  for key in ("shards", "files"):
    for entry in metadata[key]:
      bad = [k for k, t in _ENTRY_KEYS.items() if not isinstance(entry, dict) or not isinstance(entry.get(k), t)]
      if bad:
        raise CorruptExportError(f"{path}: an entry of key {key!r} lacks {bad}: {entry!r}.")


def verify(out_dir, metadata=None):
  """Checks that every shard and preprocessing file has the size and sha256 in metadata.json.

  Raises:
    CorruptExportError: naming the first missing, truncated or corrupted file.
  """
  metadata = metadata or read_metadata(out_dir)
  for entry in metadata["shards"] + metadata.get("files", []):
    path = os.path.join(out_dir, entry["file"])
    if not os.path.isfile(path):
      raise CorruptExportError(f"Distilled-set file {path} is missing.")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
      raise CorruptExportError(f"Distilled-set file {path} is truncated or damaged: {size} bytes, "
                               f"metadata.json says {entry['bytes']}.")
    if files.sha256(path) != entry["sha256"]:
      raise CorruptExportError(f"Distilled-set file {path} is corrupted: its sha256 does not match "
                               "metadata.json.")


def load(out_dir, *, check=True):
  """Opens an export.

  Args:
    out_dir: the export directory.
    check: verify sizes and checksums of every file first.

  Returns:
    (dataset, metadata): a tf.data.Dataset of dicts {"index": int64 [], "image_raw": float32 [h, w, c]
    (model space, exact), "image": uint8 [h, w, c] (pixels), "label": int64 [], "soft_label":
    float32 [C]} in the set's order, and the metadata dict.
  """
  metadata = read_metadata(out_dir)
  if check:
    verify(out_dir, metadata)
  feats = features(metadata["image_shape"], metadata["class_names"])
  shard_paths = [os.path.join(out_dir, s["file"]) for s in metadata["shards"]]
  dataset = tf.data.TFRecordDataset(shard_paths).map(feats.deserialize_example)
  return dataset, metadata


def load_set(out_dir, *, check=True):
  """Reads an export back into a DistilledSet (images and labels bit-exact)."""
  dataset, metadata = load(out_dir, check=check)
  images = np.zeros([metadata["num_examples"]] + metadata["image_shape"], np.float32)
  labels = np.zeros([metadata["num_examples"], metadata["num_classes"]], np.float32)
  seen = 0
  try:
    for batch in dataset.batch(1024).as_numpy_iterator():
      images[batch["index"]], labels[batch["index"]] = batch["image_raw"], batch["soft_label"]
      seen += len(batch["index"])
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    raise CorruptExportError(f"A shard of {out_dir} cannot be read ({e.message.splitlines()[0]}); "
                             f"files: {[s['file'] for s in metadata['shards']]}.") from e
  if seen != metadata["num_examples"]:
    raise CorruptExportError(f"{out_dir} holds {seen} examples, metadata.json says "
                             f"{metadata['num_examples']}.")
  return DistilledSet(images=images, labels=labels, lr=metadata["lr"], dataset=metadata["dataset"],
                      ipc=metadata["ipc"], preprocessing=metadata["preprocessing"],
                      model=metadata["model"], config=metadata["config"],
                      holdout=metadata.get("holdout", {}), class_names=metadata["class_names"],
                      data_options=metadata.get("data_options", {}))


def _export_dir(path):
  """The export directory at `path`: path itself (holding metadata.json) or a run's <path>/distilled."""
  expected = (f"expected an export directory (holding {METADATA_FILE}, as a run or tools/export.py "
              f"writes) or a run directory (holding {EXPORT_DIR}/)")
  if not os.path.exists(path):
    raise errors.MissingDataError(f"No distilled set at {path}: {expected}.")
  if not os.path.isdir(path):
    raise errors.UsageError(f"{path} is a file, not a distilled set: {expected}.")
  if os.path.exists(os.path.join(path, METADATA_FILE)):
    return path
  if os.path.isdir(os.path.join(path, EXPORT_DIR)):
    return os.path.join(path, EXPORT_DIR)
  raise errors.MissingDataError(f"{path} holds no distilled set: {expected}.")


def load_any(path, preprocessing_dir=None):
  """Reads a set from an export directory or a run directory (its distilled/ export).

  Args:
    path: the directory.
    preprocessing_dir: where the preprocessing files are (default: the export directory).

  Returns:
    (DistilledSet, preprocessor).

  Raises:
    MissingDataError: nothing at path, or a directory that is neither an export nor a run directory.
    UsageError: path is a file.
  """
  path = _export_dir(path)
  distilled_set = load_set(path)
  return distilled_set, resolve_preprocessor(distilled_set, preprocessing_dir=preprocessing_dir or path)


def export_from(source, out_dir=None, *, preprocessing_dir=None, shard_size=SHARD_SIZE):
  """Exports the set found at `source` (see load_any) to out_dir (re-shards or copies an export).

  Args:
    source: an export directory or a run directory.
    out_dir: the export directory; default the source's own export (rewritten in place).
    preprocessing_dir: where the preprocessing files are, when not in the source's export.
    shard_size: maximum examples per shard.

  Returns:
    (out_dir, metadata).
  """
  distilled_set, prep = load_any(source, preprocessing_dir)
  out_dir = out_dir or _export_dir(source)
  return out_dir, export(distilled_set, out_dir, preprocessor=prep, shard_size=shard_size)

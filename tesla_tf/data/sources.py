"""Dataset registry and loaders: every source yields (uint8 image [h, w, c], int32 label []).

Sources, by dataset:
  fashion_mnist, mnist  IDX files (.gz or plain) in `data_dir`, else the Debian package location
                        (apt-get install dataset-fashion-mnist), else an already prepared TFDS copy.
  cifar10, cifar100     TFDS (`tfds build cifar10`), never downloaded unless `download=True`.
  imagenet64            TFDS `imagenet_resized/64x64` with labels remapped to sorted-WNID order (the
                        ILSVRC class-folder order TESLA's experts use), or a folder
                        `<root>/{train,val}/<wnid>/*.{png,jpg,JPEG}` of 64x64 images.
  tiny_imagenet         The standard `tiny-imagenet-200` folder; classes in sorted-WNID order; the
                        "test" split is the labelled val folder.
  folder                Your own images: `<data_dir>/train/<class>/*.{png,jpg,jpeg}` and `test/<class>/`
                        (or `val/`); classes are the sorted train folder names.
  tfds:<name>[:<ver>]   Any prepared TFDS image-classification dataset (its `image` and `label`
                        features, or others named by the image_key / label_key options).
A missing dataset fails at once with `DatasetNotFoundError` naming the paths tried and how to get it.

The last two are read from the data: `get_info(name, data_dir, **options)` looks at it and returns the
DatasetInfo (classes, image shape), and `statistics` computes the per-channel mean/std of the train split
that the built-in datasets have registered. Options (`OPTIONS`: image_size, image_key, label_key,
train_split, test_split) say how to read them; `image_size` resizes every image to a square of that side.
Every function below takes a dataset name or the DatasetInfo `get_info` returned.

How each kind of source is read is one `Loader` in `LOADERS`, keyed by `DatasetInfo.source`: a new kind
of source is one entry there, and `load`, `load_numpy`, `class_names` and `DatasetInfo.in_memory` follow.

The per-class index lives in `class_index`; `build_class_index` and `take_positions` are re-exported here
for the experts' code.
"""

import dataclasses
import functools
import gzip
import hashlib
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tesla_tf import errors
from tesla_tf.data import class_index
from tesla_tf.data import imagenet

build_class_index = class_index.build_class_index  # re-exported for tesla_tf/experts.py
take_positions = class_index.take_positions  # likewise

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm").split()
_IMAGENET64_TFDS = "imagenet_resized/64x64"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetNotFoundError(errors.MissingDataError):
  """A dataset is not on disk; the message names the paths tried and how to get the data."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: registry key.
    num_classes: number of classes C.
    image_shape: (h, w, c).
    class_names: C names in label order; empty when read from the data (`class_names()`).
    mean: per-channel mean of the [0, 1] pixels used for normalisation.
    std: per-channel standard deviation, likewise.
    source: the key of its Loader in LOADERS: "idx", "tfds", "imagenet64" or "tiny_imagenet".
    tfds_name: TFDS builder name, for sources that can read TFDS.
    debian_dir: where the Debian package puts the IDX files, for "idx" sources (the default location
      when it exists).
    tfds_test_split: the TFDS split read for "test".
    tfds_train_split: the TFDS split read for "train".
    how_to_get: one line telling the user how to obtain the data.
    validation_size: train examples held out for validation by default (data/holdout.py), a multiple
      of num_classes: 5,000 for the 50,000-60,000-image sets (the size of CIFAR's customary split),
      50 per class for Tiny ImageNet, 10 per class for ImageNet-1K; for datasets read from the data,
      about a tenth of the train split (folder) or a twentieth (tfds).
    image_key, label_key: the TFDS features read as image and label.
    resize: every image is resized to image_shape[:2] (the image_size option).
    options: the options of `get_info` it was resolved with, sorted (name, value) pairs.
  """
  name: str
  num_classes: int
  image_shape: tuple
  class_names: tuple
  mean: tuple
  std: tuple
  source: str
  tfds_name: str = ""
  debian_dir: str = ""
  tfds_test_split: str = "test"
  how_to_get: str = ""
  validation_size: int = 5000
  tfds_train_split: str = "train"
  image_key: str = "image"
  label_key: str = "label"
  resize: bool = False
  options: tuple = ()

  @property
  def data_options(self):
    """The options it was resolved with, {name: value}: what a store or an export records so that
    later stages read the same data (`get_info(name, data_dir, **data_options)`)."""
    return dict(self.options)

  @property
  def in_memory(self):
    """True when the loader reads the whole split into numpy arrays (`load_numpy` is free)."""
    return LOADERS[self.source].load_numpy is not None


DATASETS = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, (28, 28, 1),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"), (0.2861,), (0.3530,), "idx", "fashion_mnist",
        debian_dir="/usr/share/datasets/fashion-mnist",
        how_to_get="apt-get install dataset-fashion-mnist, or put the four *-ubyte(.gz) IDX files in "
        "--data_dir"),
    "mnist": DatasetInfo(
        "mnist", 10, (28, 28, 1), tuple(str(i) for i in range(10)), (0.1307,), (0.3081,), "idx", "mnist",
        debian_dir="/usr/share/datasets/mnist",
        how_to_get="put the four MNIST *-ubyte(.gz) IDX files in --data_dir, or run `tfds build mnist`"),
    "cifar10": DatasetInfo(
        "cifar10", 10, (32, 32, 3),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        _CIFAR_MEAN, _CIFAR_STD, "tfds", "cifar10",
        how_to_get="run `tfds build cifar10 --data_dir=<dir>` on a machine with internet access"),
    "cifar100": DatasetInfo(
        "cifar100", 100, (32, 32, 3), tuple(_CIFAR100_NAMES), _CIFAR_MEAN, _CIFAR_STD, "tfds", "cifar100",
        how_to_get="run `tfds build cifar100 --data_dir=<dir>` on a machine with internet access"),
    "tiny_imagenet": DatasetInfo(
        "tiny_imagenet", 200, (64, 64, 3), (), _IMAGENET_MEAN, _IMAGENET_STD, "tiny_imagenet",
        how_to_get="unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip and pass --data_dir=<root> "
        "(root holds wnids.txt, train/<wnid>/images/*.JPEG, val/images/, val/val_annotations.txt)",
        validation_size=10000),
    "imagenet64": DatasetInfo(
        "imagenet64", 1000, (64, 64, 3), (), _IMAGENET_MEAN, _IMAGENET_STD, "imagenet64", _IMAGENET64_TFDS,
        tfds_test_split="validation",
        how_to_get="prepare TFDS imagenet_resized/64x64 (manual download of Imagenet64_{train,val}_npz) in "
        "--data_dir, or a folder <root>/{train,val}/<wnid>/*.png of 64x64 images", validation_size=10000),
}


OPTIONS = ("image_size", "image_key", "label_key", "train_split", "test_split")
FOLDER = "folder"
TFDS_PREFIX = "tfds:"


NAMES_HELP = (f"{', '.join(sorted(DATASETS))}; {FOLDER} (your images: --data_dir=<root> with "
              f"train/<class>/*.png|jpg and test/<class>/ or val/); {TFDS_PREFIX}<name>[:<version>] (any "
              "prepared TFDS image-classification dataset)")


def is_name(name):
  """True for a name get_info resolves: a key of DATASETS, "folder" or "tfds:<name>[:<version>]"."""
  return name in DATASETS or name == FOLDER or (name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX))


def get_info(name, data_dir=None, **options):
  """Returns the DatasetInfo of dataset `name`.

  Args:
    name: a key of DATASETS, "folder", or "tfds:<name>[:<version>]"; a DatasetInfo is returned as is.
    data_dir: where the data is (required for "folder"; a TFDS data dir for "tfds:").
    **options: see OPTIONS; None values are ignored. image_size (all but the built-in datasets, where it
      may only repeat the native size) resizes every image to image_size × image_size; image_key,
      label_key, train_split and test_split name the features and splits of a "tfds:" dataset.

  Raises:
    UsageError: unknown name or option; DatasetNotFoundError / CorruptFileError: the data of a folder or
      tfds: dataset is missing or malformed (one line naming the path).
  """
  if isinstance(name, DatasetInfo):
    return name
  options = {k: v for k, v in options.items() if v is not None}
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise errors.UsageError(f"Unknown dataset option(s) {unknown}; known: {', '.join(OPTIONS)}.")
  size = options.get("image_size")
  if size is not None and (not isinstance(size, int) or size < 1):
    raise errors.UsageError(f"--image_size must be a positive integer, got {size!r}.")
  if name == FOLDER:
    return _folder_info(data_dir, options)
  if name.startswith(TFDS_PREFIX):
    return _tfds_any_info(name, data_dir, options)
  if name not in DATASETS:
    raise errors.UsageError(f"Unknown dataset {name!r}; known datasets: {NAMES_HELP}.")
  info = DATASETS[name]
  extra = sorted(set(options) - {"image_size"})
  if extra or size not in (None, info.image_shape[0]):
    given = ", ".join(f"--{k}={options[k]}" for k in sorted(options))
    raise errors.UsageError(f"{given}: --dataset={name} is read at its native size with its own features; "
                            f"image options are for --dataset={FOLDER} and {TFDS_PREFIX}<name>.")
  return info


def class_names(name, data_dir=None, **options):
  """Returns the class names of dataset `name` (or DatasetInfo) in label order."""
  info = get_info(name, data_dir, **options)
  if info.class_names:
    return info.class_names
  return tuple(LOADERS[info.source].class_names(info, data_dir))


def _resolved(info, options, num_classes, image_shape, class_names_, validation_size, **fields):
  """The DatasetInfo of a dataset read from the data, with image_size applied."""
  size = options.get("image_size")
  native = tuple(image_shape)
  if size is None and (None in native[:2] or native[0] != native[1]):
    raise errors.UsageError(f"--dataset={info.name}: its images are {_shape_text(native)}, not one square "
                            "size; pass --image_size=<side> to resize them all to side × side.")
  shape = (size, size, native[2]) if size is not None else native
  return dataclasses.replace(
      info, num_classes=num_classes, image_shape=shape, class_names=tuple(class_names_),
      validation_size=validation_size, resize=size is not None,
      options=tuple(sorted(options.items())), **fields)


def _shape_text(shape):
  return "×".join("any" if s is None else str(s) for s in shape[:2])


def _not_found(info, tried, extra=""):
  """Builds the DatasetNotFoundError for `info` after trying the paths in `tried`."""
  paths = ", ".join(str(p) for p in tried)
  return DatasetNotFoundError(f"Dataset {info.name!r} not found (tried: {paths}). {extra}"
                              f"To get it: {info.how_to_get}.")


def _check_split(split):
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")


# IDX (MNIST family) ---------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
  """Parses one IDX file (gzip-compressed when the name ends in .gz).

  A file read before in this process, unchanged since (same size and modification time), is not
  decompressed again: a Fashion-MNIST training split takes ~0.5 s, and every Distiller, expert run and
  evaluation reads it.

  Args:
    path: file path.

  Returns:
    A new numpy array with the file's dims and native-endian dtype.

  Raises:
    CorruptFileError: unreadable file, bad magic number, unknown type code, or a size that does not
      match the header; the message names the path.
  """
  try:
    stat = os.stat(path)
  except OSError as e:
    raise errors.CorruptFileError(f"{path}: cannot read IDX file ({e}).") from e
  return _parsed_idx(str(path), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=4)  # one dataset's two splits of images and labels
def _parsed_idx(path, mtime_ns, size):  # pylint: disable=unused-argument  (the cache key: a rewritten file)
  opener = gzip.open if str(path).endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise errors.CorruptFileError(f"{path}: cannot read IDX file ({e}).") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise errors.CorruptFileError(f"{path}: not an IDX file (bad magic number {data[:4].hex()!r}).")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise errors.CorruptFileError(f"{path}: IDX header truncated ({len(data)} bytes for {ndim} dims).")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = header + int(np.prod(dims)) * dtype.itemsize
  if len(data) != expected:
    raise errors.CorruptFileError(f"{path}: IDX size mismatch, header {dims} needs {expected} bytes, file has "
                     f"{len(data)}.")
  return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory, prefix, kind):
  """Returns the path of `<prefix>-<kind>-ubyte[.gz]` in directory, or None."""
  for suffix in (".gz", ""):
    path = os.path.join(directory, f"{prefix}-{kind}-ubyte{suffix}")
    if os.path.isfile(path):
      return path
  return None


def _idx_numpy(info, split, data_dir):
  """Loads an MNIST-family split from IDX files; returns None when no IDX files are found."""
  directory = data_dir or info.debian_dir
  prefix = "train" if split == "train" else "t10k"
  images_path = _find_idx(directory, prefix, "images-idx3")
  labels_path = _find_idx(directory, prefix, "labels-idx1")
  if images_path is None or labels_path is None:
    return None
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != info.image_shape[:2] or labels.shape != images.shape[:1]:
    raise errors.CorruptFileError(f"{images_path}, {labels_path}: expected [n, 28, 28] images and [n] labels, got "
                     f"{images.shape} and {labels.shape}.")
  return images.astype(np.uint8, copy=False)[..., None], labels.astype(np.int32, copy=False)


# TFDS -----------------------------------------------------------------------------------------------

def _tfds_builder(info, data_dir, download, also_tried=()):
  """Returns a prepared TFDS builder; raises DatasetNotFoundError instead of downloading."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import, TFDS only)
  try:
    builder = tfds.builder(info.tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _not_found(info, list(also_tried) + [data_dir or "<the TFDS default data dir>"],
                     f"TFDS knows no dataset {info.tfds_name!r} and none is prepared there. ") from e
  if not builder.is_prepared():
    if not download:
      raise _not_found(info, list(also_tried) + [builder.data_dir],
                       f"No prepared TFDS {info.tfds_name}; downloads happen only with download=True. ")
    builder.download_and_prepare()
  return builder


def _tfds_dataset(info, split, builder, label_remap=None):
  """Reads a TFDS split as (uint8 image, int32 label) at info's shape, labels mapped through label_remap."""
  ds = builder.as_dataset(split=info.tfds_train_split if split == "train" else info.tfds_test_split,
                          shuffle_files=False)
  remap = None if label_remap is None else tf.constant(label_remap, tf.int32)

  def convert(example):
    image, label = example[info.image_key], tf.cast(example[info.label_key], tf.int32)
    if remap is not None:
      label = tf.gather(remap, label)
    image = fit_size(info, tf.cast(image, tf.uint8)[..., :info.image_shape[2]])
    return tf.ensure_shape(image, info.image_shape), label
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


_TEST_SPLITS = ("test", "validation", "val", "valid")


def _tfds_any_info(name, data_dir, options):
  """A prepared TFDS dataset's classes, image shape and splits, read from its metadata."""
  spec = name[len(TFDS_PREFIX):]
  if not spec or spec.count(":") > 1 or spec.startswith(":"):
    raise errors.UsageError(f"--dataset={name}: expected {TFDS_PREFIX}<name> or {TFDS_PREFIX}<name>:<version>.")
  base = DatasetInfo(name, 0, (), (), (), (), "tfds", spec, how_to_get=(
      f"run `tfds build {spec.split(':')[0]} --data_dir=<dir>` where the data can be downloaded (or as its "
      "TFDS page says for manual downloads), then pass --data_dir=<dir>"))
  builder = _tfds_builder(base, data_dir, download=False)
  features = builder.info.features
  image_key, label_key = options.get("image_key", "image"), options.get("label_key", "label")
  for flag, key in (("image_key", image_key), ("label_key", label_key)):
    if key not in features:
      raise errors.UsageError(f"--{flag}={key}: {name} has no feature {key!r}; its features are "
                              f"{', '.join(sorted(features))}.")
  image, label = features[image_key], features[label_key]
  shape = tuple(getattr(image, "shape", ()))
  if len(shape) != 3 or shape[2] not in (1, 3, 4):
    raise errors.UsageError(f"--image_key={image_key}: feature {image_key!r} of {name} has shape {shape}; "
                            "expected images [h, w, 1 or 3].")
  if not getattr(label, "num_classes", None):
    raise errors.UsageError(f"--label_key={label_key}: feature {label_key!r} of {name} is not a ClassLabel "
                            "(class names and count).")
  splits = list(builder.info.splits.keys())  # empty when unknown (e.g. TFDS mocked from its code)
  train = options.get("train_split", "train")
  test = options.get("test_split") or next((t for t in _TEST_SPLITS if t in splits), "test")
  for flag, split in (("train_split", train), ("test_split", test)):
    if splits and split not in splits:
      raise errors.UsageError(f"--{flag}={split}: {name} has the splits {', '.join(splits)}; name its "
                              "train and test splits with --train_split and --test_split.")
  num_classes = int(label.num_classes)
  num_train = builder.info.splits[train].num_examples if splits else 0
  return _resolved(base, options, num_classes, shape[:2] + (min(shape[2], 3),), label.names,
                   num_classes * (num_train // 20 // num_classes), tfds_train_split=train,
                   tfds_test_split=test, image_key=image_key, label_key=label_key)


def imagenet_resized_wnids():
  """Returns the WNIDs of TFDS imagenet_resized in its label order (from the builder, no data needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tuple(tfds.builder(_IMAGENET64_TFDS).info.features["label"].names)


def imagenet64_label_remap(wnids=None):
  """Returns the permutation taking TFDS imagenet_resized labels to sorted-WNID labels.

  Args:
    wnids: the source label order (WNID per label); default `imagenet_resized_wnids()`.

  Returns:
    int32 [C]: remap[source_label] = position of that WNID in sorted order.
  """
  wnids = np.asarray(imagenet_resized_wnids() if wnids is None else wnids)
  remap = np.empty(len(wnids), np.int32)
  remap[np.argsort(wnids, kind="stable")] = np.arange(len(wnids), dtype=np.int32)
  return remap


# Folders --------------------------------------------------------------------------------------------

def _list_images(info, directory):
  """Returns the sorted image file paths directly inside directory; raises if it is missing."""
  if not os.path.isdir(directory):
    raise _not_found(info, [directory])
  return sorted(e.path for e in os.scandir(directory)
                if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES))


_IMAGE_MAGICS = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
DATA_ERROR = errors.DATA_ERROR


def fit_size(info, image):
  """A decoded uint8 image [h, w, c] at info's shape when info.resize, else as is: resized by area
  averaging (the box filter of Chrabaszcz et al.'s downsampled ImageNet; an integer factor averages whole
  blocks), rounded."""
  if not info.resize:
    return image
  resized = tf.image.resize(image, info.image_shape[:2], method="area")
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _folder_dataset(info, paths, labels):
  """Decodes image files into (uint8 [h, w, c], int32 label); a file that is not a PNG/JPEG/GIF/BMP image
  or has another size than info's (without resize) fails with an InvalidArgumentError naming it (after
  DATA_ERROR). A damaged image with a valid header fails in the decoder without its name: `statistics`
  finds those by name."""
  hint = ["(pass --image_size=<side> to resize every image)"] if info.source == FOLDER and not info.resize else []

  def read(path, label):
    data = tf.io.read_file(path)
    known = tf.reduce_any([tf.strings.substr(data, 0, len(m)) == m for m in _IMAGE_MAGICS])
    with tf.control_dependencies([tf.debugging.Assert(known, [DATA_ERROR, path, "is not an image file"])]):
      image = tf.io.decode_image(data, channels=info.image_shape[2], expand_animations=False)
    image = fit_size(info, image)
    right = tf.reduce_all(tf.equal(tf.shape(image), info.image_shape))
    with tf.control_dependencies([tf.debugging.Assert(right, [DATA_ERROR, path, "has shape", tf.shape(image),
                                                              "expected", list(info.image_shape), *hint])]):
      image = tf.identity(image)
    return tf.ensure_shape(image, info.image_shape), label
  ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), np.asarray(labels, np.int32)))
  return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


_FOLDER_INFO = DatasetInfo(
    FOLDER, 0, (), (), (), (), FOLDER,
    how_to_get="pass --data_dir=<root> holding train/<class>/*.png|jpg|jpeg and test/<class>/ (or val/)")
_TEST_DIRS = ("test", "val")


def _folder_root(data_dir):
  if data_dir is None:
    raise errors.UsageError(f"--dataset={FOLDER} needs --data_dir=<root> holding train/<class>/*.png|jpg "
                            "and test/<class>/ (or val/).")
  return data_dir


def _class_files(directory):
  """The sorted image files of one class folder; an empty one is refused naming it."""
  try:
    paths = sorted(e.path for e in os.scandir(directory)
                   if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES))
  except OSError as e:
    raise errors.CorruptFileError(f"{directory}: cannot list it ({e.strerror}).") from e
  if not paths:
    raise errors.CorruptFileError(f"{directory}: no {'/'.join(_IMAGE_SUFFIXES)} images in this class folder.")
  return paths


def _class_dirs(split_dir):
  return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _folder_split(info, split, data_dir):
  """(paths, labels) of one split of an image folder, in sorted class then file order."""
  root = _folder_root(data_dir)
  if split == "train":
    split_dir = os.path.join(root, "train")
  else:
    tried = [os.path.join(root, d) for d in _TEST_DIRS]
    split_dir = next((d for d in tried if os.path.isdir(d)), None)
    if split_dir is None:
      raise _not_found(info, tried, "The test split is test/<class>/ or val/<class>/. ")
  if not os.path.isdir(split_dir):
    raise _not_found(info, [split_dir])
  names = info.class_names or tuple(_class_dirs(split_dir))
  label_of = {c: i for i, c in enumerate(names)}
  paths, labels = [], []
  for c in _class_dirs(split_dir):
    if c not in label_of:
      raise errors.CorruptFileError(f"{os.path.join(split_dir, c)}: class {c!r} is not a class folder of "
                                    f"{os.path.join(root, 'train')}.")
    files_ = _class_files(os.path.join(split_dir, c))
    paths += files_
    labels += [label_of[c]] * len(files_)
  return paths, labels


def _folder_info(data_dir, options):
  """Classes from the train folders, image shape from the first image (or image_size)."""
  extra = sorted(set(options) - {"image_size"})
  if extra:
    raise errors.UsageError(f"--{extra[0]} is for --dataset={TFDS_PREFIX}<name>; an image folder has "
                            "no features or split names to choose.")
  root = _folder_root(data_dir)
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise _not_found(_FOLDER_INFO, [train_dir], "An image folder has train/<class>/ images. ")
  names = _class_dirs(train_dir)
  if len(names) < 2:
    raise errors.CorruptFileError(f"{train_dir}: {len(names)} class folder(s); a classification dataset "
                                  "needs at least 2 (train/<class>/*.png).")
  paths, labels = _folder_split(dataclasses.replace(_FOLDER_INFO, class_names=tuple(names)), "train", root)
  first = _decode_file(paths[0])
  channels = 1 if first.shape[2] in (1, 2) else 3
  smallest = int(np.bincount(labels, minlength=len(names)).min())
  return _resolved(_FOLDER_INFO, options, len(names), first.shape[:2] + (channels,), names,
                   len(names) * (smallest // 10))


def _decode_file(path):
  """One image file decoded eagerly (native channels); CorruptFileError naming it when it is none."""
  try:
    return tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    raise errors.CorruptFileError(f"{path}: not a readable image ({_decoder_text(e)}).") from e


def _decoder_text(error):
  """The decoder's own words in a TF error ("Invalid PNG data, size 70"), without TF's decorations."""
  return error.message.splitlines()[0].rsplit(": ", 1)[-1].strip()


def _folder(info, split, data_dir, download):
  del download  # a folder: nothing to download
  return _folder_dataset(info, *_folder_split(info, split, data_dir))


def _folder_fingerprint_files(info, data_dir):
  """(path, size, mtime) of every train image: another file or order changes the class index."""
  entries = []
  for path in _folder_split(info, "train", data_dir)[0]:
    stat = os.stat(path)
    entries.append(f"{os.path.relpath(path, data_dir)} {stat.st_size} {stat.st_mtime_ns}")
  return entries


def _tiny_root(info, data_dir):
  """Returns the tiny-imagenet-200 root inside or at data_dir; raises DatasetNotFoundError."""
  if data_dir is None:
    raise _not_found(info, ["<no --data_dir given>"])
  for root in (data_dir, os.path.join(data_dir, "tiny-imagenet-200")):
    if os.path.isfile(os.path.join(root, "wnids.txt")):
      return root
  raise _not_found(info, [os.path.join(data_dir, "wnids.txt"),
                          os.path.join(data_dir, "tiny-imagenet-200", "wnids.txt")])


def _tiny_wnids(root):
  with open(os.path.join(root, "wnids.txt")) as f:
    return sorted(line.strip() for line in f if line.strip())


def _tiny_class_names(info, data_dir):
  return _tiny_wnids(_tiny_root(info, data_dir))


def _tiny_imagenet(info, split, data_dir, download):
  """Lists Tiny ImageNet files and labels (sorted-WNID order); "test" reads the annotated val folder."""
  del download  # a folder: nothing to download
  root = _tiny_root(info, data_dir)
  label_of = {w: i for i, w in enumerate(_tiny_wnids(root))}
  paths, labels = [], []
  if split == "train":
    for wnid, label in label_of.items():
      files = _list_images(info, os.path.join(root, "train", wnid, "images"))
      paths += files
      labels += [label] * len(files)
  else:
    annotations = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(annotations):
      raise _not_found(info, [annotations])
    with open(annotations) as f:
      for line_no, line in enumerate(f, 1):
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
          raise errors.CorruptFileError(f"{annotations}:{line_no}: expected 'file<TAB>wnid...', wnid in wnids.txt.")
        paths.append(os.path.join(root, "val", "images", fields[0]))
        labels.append(label_of[fields[1]])
  return _folder_dataset(info, paths, labels)


def _imagenet64_folder(info, split, root):
  """Lists `<root>/{train,val}/<wnid>/*` with labels = positions in the 1000 sorted WNIDs."""
  split_dir = os.path.join(root, "train" if split == "train" else "val")
  if not os.path.isdir(split_dir):
    raise _not_found(info, [split_dir])
  label_of = {w: i for i, w in enumerate(class_names(info.name))}
  paths, labels = [], []
  for wnid in sorted(e.name for e in os.scandir(split_dir) if e.is_dir()):
    if wnid not in label_of:
      raise errors.CorruptFileError(f"{os.path.join(split_dir, wnid)}: not an ImageNet-1K WNID folder.")
    files = _list_images(info, os.path.join(split_dir, wnid))
    paths += files
    labels += [label_of[wnid]] * len(files)
  return _folder_dataset(info, paths, labels)


def _imagenet64_class_names(info, data_dir):
  del info, data_dir  # the 1000 WNIDs are the same for every copy
  return sorted(imagenet_resized_wnids())


def _imagenet64(info, split, data_dir, download):
  """Prepared shards (tools/prepare_imagenet.py), else a WNID folder tree, else TFDS remapped."""
  if data_dir is not None and os.path.isfile(os.path.join(data_dir, imagenet.MANIFEST)):
    return imagenet.load_prepared(data_dir, split)
  if data_dir is not None and os.path.isdir(os.path.join(data_dir, "train")):
    return _imagenet64_folder(info, split, data_dir)
  builder = _tfds_builder(info, data_dir, download)
  remap = imagenet64_label_remap(builder.info.features["label"].names)
  return _tfds_dataset(info, split, builder, remap)


# Loaders by source kind -----------------------------------------------------------------------------

def _idx(info, split, data_dir, download):
  """IDX files when present, else a prepared TFDS copy (the error names both places)."""
  arrays = _idx_numpy(info, split, data_dir)
  if arrays is not None:
    return tf.data.Dataset.from_tensor_slices(arrays)
  idx_dir = os.path.join(data_dir or info.debian_dir, "{train,t10k}-*-ubyte[.gz]")
  return _tfds_dataset(info, split, _tfds_builder(info, data_dir, download, [idx_dir]))


def _tfds(info, split, data_dir, download):
  return _tfds_dataset(info, split, _tfds_builder(info, data_dir, download))


def _static_class_names(info, data_dir):
  del data_dir
  return info.class_names


@dataclasses.dataclass(frozen=True)
class Loader:
  """How one kind of source (`DatasetInfo.source`) is read.

  Attributes:
    load: (info, split, data_dir, download) -> tf.data.Dataset of (uint8 image [h, w, c], int32 label [])
      in a fixed order; split is "train" or "test", data_dir None or an existing directory. Raises
      DatasetNotFoundError when the data is not there.
    load_numpy: for sources read whole into memory: (info, split, data_dir) -> (uint8 images
      [n, h, w, c], int32 labels [n]), or None when the data is not in that form (then `load` is read
      into arrays instead); None for streaming sources (DatasetInfo.in_memory is False).
    class_names: (info, data_dir) -> the C names in label order, for sources whose names are read from
      the data (DatasetInfo.class_names empty).
  """
  load: Callable
  load_numpy: Optional[Callable] = None
  class_names: Callable = _static_class_names


LOADERS = {
    "idx": Loader(_idx, load_numpy=_idx_numpy),
    "tfds": Loader(_tfds),
    "tiny_imagenet": Loader(_tiny_imagenet, class_names=_tiny_class_names),
    "imagenet64": Loader(_imagenet64, class_names=_imagenet64_class_names),
    FOLDER: Loader(_folder),
}


# Public loaders -------------------------------------------------------------------------------------

def load(name, split, data_dir=None, *, download=False):
  """Returns a dataset of (uint8 image [h, w, c], int32 label []) in a fixed file order.

  Args:
    name: a key of DATASETS, or the DatasetInfo of `get_info` (for folder and tfds: datasets).
    split: "train" or "test".
    data_dir: where the data is (IDX folder, TFDS data_dir, or folder root); None for the defaults.
    download: allow TFDS to download and prepare a missing dataset.

  Raises:
    DatasetNotFoundError: the data is not on disk (within seconds, never a download by default).
  """
  _check_split(split)
  info = get_info(name, data_dir)
  if data_dir is not None and not os.path.isdir(data_dir):
    raise _not_found(info, [data_dir], "The data_dir does not exist. ")
  return LOADERS[info.source].load(info, split, data_dir, download)


def fingerprint(name, data_dir=None):
  """A short hash of where dataset `name` is read from, for caches derived from its order (class index).

  It covers the resolved location and the names, sizes and modification times of the entries at its
  top level (for an image folder: of every train image), so another copy — even of the same data in
  another order — or a rewritten file gives another fingerprint, while reading the same files again
  gives the same one.
  """
  info = get_info(name, data_dir)
  location = data_dir
  if location is None:  # the Debian package's IDX folder is the only default location on disk
    location = info.debian_dir if os.path.isdir(info.debian_dir or "") else None
  digest = hashlib.sha256(f"{info.name}\n{os.path.realpath(location) if location else '<default>'}".encode())
  if info.source == FOLDER:
    for entry in _folder_fingerprint_files(info, data_dir):
      digest.update(f"\n{entry}".encode())
  elif location and os.path.isdir(location):
    for entry in sorted(os.scandir(location), key=lambda e: e.name):
      stat = entry.stat()
      digest.update(f"\n{entry.name} {stat.st_size} {stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:16]


def load_numpy(name, split, data_dir=None, *, download=False):
  """Loads a whole split into memory (name: as for `load`).

  Returns:
    (uint8 images [n, h, w, c], int32 labels [n]).
  """
  _check_split(split)
  info = get_info(name, data_dir)
  loader = LOADERS[info.source]
  if loader.load_numpy is not None and (data_dir is None or os.path.isdir(data_dir)):
    arrays = loader.load_numpy(info, split, data_dir)
    if arrays is not None:
      return arrays
  batches = list(load(info, split, data_dir, download=download).batch(4096).as_numpy_iterator())
  if not batches:
    return np.zeros((0,) + info.image_shape, np.uint8), np.zeros((0,), np.int32)
  return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def statistics(name, data_dir=None):
  """Per-channel mean and standard deviation of the train split's [0, 1] pixels, reading it once.

  What the built-in datasets have registered (DatasetInfo.mean/std), computed for the ones read from the
  data. For an image folder every train and test image is decoded on the way, and the first one that
  cannot be read is named (CorruptFileError) — the decoder's own error would not name it.

  Returns:
    (mean, std): tuples of c floats.
  """
  info = get_info(name, data_dir)
  if info.source == FOLDER:
    for _ in _folder_batches(info, "test", data_dir):
      pass
    batches = _folder_batches(info, "train", data_dir)
  else:
    batches = (images for images, _ in load(info, "train", data_dir).batch(1024).as_numpy_iterator())
  channels = info.image_shape[2]
  sums, count = np.zeros([2, channels], np.float64), 0
  for images in batches:
    pixels = images.reshape(-1, channels).astype(np.float64) / 255.0
    sums += (pixels.sum(0), (pixels ** 2).sum(0))
    count += len(pixels)
  if count == 0:
    raise errors.CorruptFileError(f"--dataset={info.name}: the train split is empty.")
  mean = sums[0] / count
  std = np.sqrt(np.maximum(sums[1] / count - mean ** 2, 0.0))
  return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def _folder_batches(info, split, data_dir):
  """Yields the images of a folder split in batches, decoding every one; at the end, the first file
  that could not be read raises CorruptFileError naming it."""
  paths, labels = _folder_split(info, split, data_dir)
  numbered = tf.data.Dataset.zip(tf.data.Dataset.range(len(paths)), _folder_dataset(info, paths, labels))
  read = np.zeros(len(paths), bool)
  for positions, (images, _) in numbered.ignore_errors().batch(1024).as_numpy_iterator():
    read[positions] = True
    yield images
  if not read.all():
    bad = paths[int(np.flatnonzero(~read)[0])]
    try:
      next(iter(_folder_dataset(info, [bad], [0])))
    except tf.errors.InvalidArgumentError as e:
      raise errors.CorruptFileError(errors.data_error_message(e.message) or
                                    f"{bad}: not a readable image ({_decoder_text(e)}).") from e
    raise errors.CorruptFileError(f"{bad}: cannot be read.")

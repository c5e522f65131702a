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
A missing dataset fails at once with `DatasetNotFoundError` naming the paths tried and how to get it.

How each kind of source is read is one `Loader` in `LOADERS`, keyed by `DatasetInfo.source`: a new kind
of source is one entry there, and `load`, `load_numpy`, `class_names` and `DatasetInfo.in_memory` follow.

The per-class index lives in `class_index`; `build_class_index` and `take_positions` are re-exported here
for the experts' code.
"""

import dataclasses
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
    how_to_get: one line telling the user how to obtain the data.
    validation_size: train examples held out for validation by default (data/holdout.py), a multiple
      of num_classes: 5,000 for the 50,000-60,000-image sets (the size of CIFAR's customary split),
      50 per class for Tiny ImageNet, 10 per class for ImageNet-1K.
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


def get_info(name):
  """Returns the DatasetInfo of `name`; raises ValueError listing the known names."""
  if name not in DATASETS:
    raise errors.UsageError(f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}.")
  return DATASETS[name]


def class_names(name, data_dir=None):
  """Returns the class names of `name` in label order (read from the data when not static)."""
  info = get_info(name)
  if info.class_names:
    return info.class_names
  return tuple(LOADERS[info.source].class_names(info, data_dir))


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

  Args:
    path: file path.

  Returns:
    A numpy array with the file's dims and native-endian dtype.

  Raises:
    ValueError: bad magic number, unknown type code, or a size that does not match the header; the
      message names the path.
  """
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
  return images.astype(np.uint8)[..., None], labels.astype(np.int32)


# TFDS -----------------------------------------------------------------------------------------------

def _tfds_builder(info, data_dir, download, also_tried=()):
  """Returns a prepared TFDS builder; raises DatasetNotFoundError instead of downloading."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import, TFDS only)
  builder = tfds.builder(info.tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    if not download:
      raise _not_found(info, list(also_tried) + [builder.data_dir],
                       f"No prepared TFDS {info.tfds_name}; downloads happen only with download=True. ")
    builder.download_and_prepare()
  return builder


def _tfds_dataset(info, split, builder, label_remap=None):
  """Reads a TFDS split as (uint8 image [h, w, c], int32 label), labels mapped through label_remap."""
  ds = builder.as_dataset(split=split if split == "train" else info.tfds_test_split,
                          as_supervised=True, shuffle_files=False)
  remap = None if label_remap is None else tf.constant(label_remap, tf.int32)

  def convert(image, label):
    label = tf.cast(label, tf.int32)
    if remap is not None:
      label = tf.gather(remap, label)
    return tf.ensure_shape(tf.cast(image, tf.uint8), info.image_shape), label
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


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


def _folder_dataset(info, paths, labels):
  """Decodes image files into (uint8 [h, w, c], int32 label); a file that is not a PNG/JPEG/GIF/BMP image
  or has another size than info's fails with an InvalidArgumentError naming it (after DATA_ERROR)."""
  def read(path, label):
    data = tf.io.read_file(path)
    known = tf.reduce_any([tf.strings.substr(data, 0, len(m)) == m for m in _IMAGE_MAGICS])
    with tf.control_dependencies([tf.debugging.Assert(known, [DATA_ERROR, path, "is not an image file"])]):
      image = tf.io.decode_image(data, channels=info.image_shape[2], expand_animations=False)
    right = tf.reduce_all(tf.equal(tf.shape(image), info.image_shape))
    with tf.control_dependencies([tf.debugging.Assert(right, [DATA_ERROR, path, "has shape", tf.shape(image),
                                                              "expected", list(info.image_shape)])]):
      image = tf.identity(image)
    return tf.ensure_shape(image, info.image_shape), label
  ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), np.asarray(labels, np.int32)))
  return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


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
}


# Public loaders -------------------------------------------------------------------------------------

def load(name, split, data_dir=None, *, download=False):
  """Returns a dataset of (uint8 image [h, w, c], int32 label []) in a fixed file order.

  Args:
    name: a key of DATASETS.
    split: "train" or "test".
    data_dir: where the data is (IDX folder, TFDS data_dir, or folder root); None for the defaults.
    download: allow TFDS to download and prepare a missing dataset.

  Raises:
    DatasetNotFoundError: the data is not on disk (within seconds, never a download by default).
  """
  info = get_info(name)
  _check_split(split)
  if data_dir is not None and not os.path.isdir(data_dir):
    raise _not_found(info, [data_dir], "The data_dir does not exist. ")
  return LOADERS[info.source].load(info, split, data_dir, download)


def fingerprint(name, data_dir=None):
  """A short hash of where dataset `name` is read from, for caches derived from its order (class index).

  It covers the resolved location and the names, sizes and modification times of the entries at its
  top level, so another copy — even of the same data in another order — or a rewritten file gives
  another fingerprint, while reading the same files again gives the same one.
  """
  info = get_info(name)
  location = data_dir
  if location is None:  # the Debian package's IDX folder is the only default location on disk
    location = info.debian_dir if os.path.isdir(info.debian_dir or "") else None
  digest = hashlib.sha256(f"{name}\n{os.path.realpath(location) if location else '<default>'}".encode())
  if location and os.path.isdir(location):
    for entry in sorted(os.scandir(location), key=lambda e: e.name):
      stat = entry.stat()
      digest.update(f"\n{entry.name} {stat.st_size} {stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:16]


def load_numpy(name, split, data_dir=None, *, download=False):
  """Loads a whole split into memory.

  Returns:
    (uint8 images [n, h, w, c], int32 labels [n]).
  """
  info = get_info(name)
  _check_split(split)
  loader = LOADERS[info.source]
  if loader.load_numpy is not None and (data_dir is None or os.path.isdir(data_dir)):
    arrays = loader.load_numpy(info, split, data_dir)
    if arrays is not None:
      return arrays
  batches = list(load(name, split, data_dir, download=download).batch(4096).as_numpy_iterator())
  if not batches:
    return np.zeros((0,) + info.image_shape, np.uint8), np.zeros((0,), np.int32)
  return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

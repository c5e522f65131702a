"""Preprocessing between pixel space ([0, 1] images) and model space: normalisation or ZCA whitening.

Every preprocessor has `.apply(x)` (pixels [..., h, w, c] uint8 or float in [0, 1] -> model space),
`.invert(x)` (model space -> [0, 1] pixels, for viewing), `.to_dict()` (a json-able description) and
`.save(directory)` (writes whatever files `to_dict` refers to). `build(kind, info, ...)` makes one for a
dataset and `from_dict(d, directory)` restores one; both look the kind up in `PREPROCESSORS`, so a new
kind is one class with `from_dataset` and `from_dict` classmethods and one entry there.
ZCA replaces normalisation, never both (REFERENCE §1, §3b); the same transform applies to train, test
and synthetic images.

ZCA (REFERENCE §3b), on images flattened to d = h*w*c: μ = mean, Σ = XcᵀXc/(n−1) = U S Uᵀ,
W = U diag((S + reg)^−½) Uᵀ, x ↦ (x − μ) W; inverse U diag((S + reg)^½) Uᵀ, then + μ. The fit is in
float64 numpy; `apply` runs in TF in the input's float dtype (float32 for uint8 input). Flattening in
h, w, c order instead of PyTorch's c, h, w gives the same transform: ZCA commutes with permuting pixels.
"""

import dataclasses
import os
from typing import Protocol

import numpy as np
import tensorflow as tf

from tesla_tf import errors, files

ZCA_FILE = "zca.npz"
_FIT_CHUNK = 4096


# The preprocessors run in tf.data maps as written, without an AutoGraph pass (no tensor-dependent
# Python control flow here).
@tf.autograph.experimental.do_not_convert
def to_float(x):
  """Returns x as a float tensor in [0, 1]: uint8 is divided by 255 (float32), floats pass through."""
  x = tf.convert_to_tensor(x)
  if x.dtype == tf.uint8:
    return tf.cast(x, tf.float32) / 255.0
  if not x.dtype.is_floating:
    raise TypeError(f"images must be uint8 or float in [0, 1], got {x.dtype.name}.")
  return x


class Preprocessor(Protocol):
  """The interface shared by Normalize and ZCA."""

  kind: str

  @classmethod
  def from_dataset(cls, info, train_images=None, reg=0.1):
    """Builds one for a dataset (sources.DatasetInfo), fitted on train_images when the kind needs it."""

  @classmethod
  def from_dict(cls, d, directory=None):
    """Restores one from `to_dict()` output; files it names are read from directory."""

  def apply(self, x):
    """Maps pixels [..., h, w, c] (uint8 or float in [0, 1]) to model space (same shape, float)."""

  def invert(self, x):
    """Maps model-space images [..., h, w, c] back to [0, 1] pixels (not clipped)."""

  def to_dict(self):
    """Returns a json-able description that `from_dict` restores."""

  def save(self, directory):
    """Writes the files `to_dict` refers to (if any) into directory."""


@dataclasses.dataclass(frozen=True)
class Normalize:
  """Per-channel normalisation (x − mean) / std.

  Attributes:
    mean: per-channel means of [0, 1] pixels, length c.
    std: per-channel standard deviations, length c.
  """
  mean: tuple
  std: tuple
  kind = "normalize"

  def __post_init__(self):
    if len(self.mean) != len(self.std) or min(self.std) <= 0:
      raise ValueError(f"Normalize needs equal-length mean/std with std > 0, got {self.mean}, {self.std}.")

  @classmethod
  def from_dataset(cls, info, train_images=None, reg=0.1):
    """The dataset's registered mean and std (train_images and reg are not used)."""
    del train_images, reg
    return cls(tuple(info.mean), tuple(info.std))

  @tf.autograph.experimental.do_not_convert
  def apply(self, x):
    """Returns (x − mean) / std; x [..., h, w, c] uint8 or float in [0, 1]."""
    x = to_float(x)
    return (x - tf.constant(self.mean, x.dtype)) / tf.constant(self.std, x.dtype)

  def invert(self, x):
    """Returns x · std + mean; x [..., h, w, c] float in model space."""
    x = tf.convert_to_tensor(x)
    return x * tf.constant(self.std, x.dtype) + tf.constant(self.mean, x.dtype)

  def to_dict(self):
    return {"kind": self.kind, "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

  def save(self, directory):
    """Nothing to write: the description is complete."""
    del directory

  @classmethod
  def from_dict(cls, d, directory=None):
    del directory
    return cls(tuple(d["mean"]), tuple(d["std"]))


class ZCA:
  """ZCA whitening fitted on train images (REFERENCE §3b).

  Attributes:
    mean: float64 [d] pixel mean μ.
    eigenvalues: float64 [d] S of the covariance, ascending.
    eigenvectors: float64 [d, d] U (columns).
    image_shape: (h, w, c).
    reg: the regulariser added to S (0.1 in the papers).
    file_name: the .npz name used by save/load.
  """
  kind = "zca"

  def __init__(self, mean, eigenvalues, eigenvectors, image_shape, reg=0.1, file_name=ZCA_FILE):
    self.mean = np.asarray(mean, np.float64)
    self.eigenvalues = np.asarray(eigenvalues, np.float64)
    self.eigenvectors = np.asarray(eigenvectors, np.float64)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.reg = float(reg)
    self.file_name = file_name
    d = int(np.prod(self.image_shape))
    if self.mean.shape != (d,) or self.eigenvalues.shape != (d,) or self.eigenvectors.shape != (d, d):
      raise ValueError(f"ZCA arrays do not match image shape {self.image_shape} (d = {d}).")
    u = self.eigenvectors
    self.whiten = (u * (self.eigenvalues + self.reg) ** -0.5) @ u.T
    self.unwhiten = (u * (self.eigenvalues + self.reg) ** 0.5) @ u.T
    self._constants = {}

  @classmethod
  def fit(cls, images, reg=0.1):
    """Fits ZCA on train images.

    Args:
      images: [n, h, w, c] uint8 or float in [0, 1] (numpy or tensor), n >= 2.
      reg: regulariser added to the eigenvalues.

    Returns:
      A fitted ZCA.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 2:
      raise ValueError(f"ZCA.fit needs images [n >= 2, h, w, c], got shape {images.shape}.")
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    n, d = images.shape[0], int(np.prod(images.shape[1:]))
    flat = images.reshape(n, d)
    # Two passes in chunks: the exact centred covariance without a float64 copy of the whole set.
    mean = sum(flat[i:i + _FIT_CHUNK].sum(0, dtype=np.float64) for i in range(0, n, _FIT_CHUNK))
    mean = mean * scale / n
    cov = np.zeros((d, d), np.float64)
    for i in range(0, n, _FIT_CHUNK):
      centred = flat[i:i + _FIT_CHUNK].astype(np.float64) * scale - mean
      cov += centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(cov / (n - 1))
    # Round-off can leave tiny negative eigenvalues of a singular covariance; S is PSD by definition.
    return cls(mean, np.maximum(eigenvalues, 0.0), eigenvectors, images.shape[1:], reg)

  @classmethod
  def from_dataset(cls, info, train_images=None, reg=0.1):
    """Fits on the train images (required)."""
    del info
    if train_images is None:
      raise ValueError("ZCA needs the train images to fit on (train_images=...).")
    return cls.fit(train_images, reg)

  def _constant(self, name, dtype):
    """Returns the array `name` as a TF constant of dtype (cached when eager; graphs get their own)."""
    key = (name, dtype)
    if key not in self._constants:
      self._constants[key] = [getattr(self, name).astype(dtype.as_numpy_dtype), None]
    entry = self._constants[key]
    if not tf.executing_eagerly():
      return tf.constant(entry[0])
    if entry[1] is None:
      entry[1] = tf.constant(entry[0])
    return entry[1]

  def _check_shape(self, x):
    if tuple(x.shape[-3:]) != self.image_shape:
      raise ValueError(f"ZCA fitted for images {self.image_shape}, got shape {tuple(x.shape)}.")

  @tf.autograph.experimental.do_not_convert
  def apply(self, x):
    """Returns (x − μ) W reshaped back; x [..., h, w, c] uint8 or float in [0, 1]."""
    x = to_float(x)
    self._check_shape(x)
    flat = tf.reshape(x, [-1, self.mean.size]) - self._constant("mean", x.dtype)
    return tf.reshape(flat @ self._constant("whiten", x.dtype), tf.shape(x))

  def invert(self, x):
    """Returns x W⁻¹ + μ reshaped back; x [..., h, w, c] float in model space."""
    x = tf.convert_to_tensor(x)
    self._check_shape(x)
    flat = tf.reshape(x, [-1, self.mean.size]) @ self._constant("unwhiten", x.dtype)
    return tf.reshape(flat + self._constant("mean", x.dtype), tf.shape(x))

  def to_dict(self):
    return {"kind": self.kind, "reg": self.reg, "file": self.file_name,
            "image_shape": list(self.image_shape)}

  def save(self, directory):
    """Writes mean, eigenvalues and eigenvectors (float64) to directory/file_name atomically.

    Returns:
      The path written.
    """
    path = os.path.join(directory, self.file_name)
    files.atomic_write(path, lambda f: np.savez(
        f, mean=self.mean, eigenvalues=self.eigenvalues, eigenvectors=self.eigenvectors,
        image_shape=np.array(self.image_shape), reg=np.array(self.reg)))
    return path

  @classmethod
  def load(cls, directory, file_name=ZCA_FILE):
    """Reads a ZCA written by save from directory/file_name."""
    path = os.path.join(directory, file_name)
    if not os.path.isfile(path):
      raise errors.MissingDataError(f"ZCA matrices not found at {path} (written by ZCA.save beside the "
                              "distilled set or expert buffer).")
    with np.load(path) as data:
      return cls(data["mean"], data["eigenvalues"], data["eigenvectors"], tuple(data["image_shape"]),
                 float(data["reg"]), file_name)

  @classmethod
  def from_dict(cls, d, directory=None):
    if directory is None:
      raise ValueError(f"ZCA preprocessing {d} needs the directory holding its {d.get('file', ZCA_FILE)}.")
    zca = cls.load(directory, d.get("file", ZCA_FILE))
    if zca.reg != float(d.get("reg", zca.reg)):
      raise errors.CorruptFileError(f"ZCA file in {directory} has reg {zca.reg}, the description says {d['reg']}.")
    return zca


PREPROCESSORS = {"normalize": Normalize, "zca": ZCA}


def build(kind, info, train_images=None, reg=0.1):
  """Builds a preprocessor for a dataset.

  Args:
    kind: a key of PREPROCESSORS.
    info: the dataset's sources.DatasetInfo (mean/std for "normalize").
    train_images: [n, h, w, c] uint8 or [0, 1] float train images, required for "zca".
    reg: ZCA regulariser.

  Returns:
    A Preprocessor.
  """
  if kind not in PREPROCESSORS:
    raise errors.UsageError(f"Unknown preprocessing {kind!r}; choose one of {', '.join(PREPROCESSORS)}.")
  return PREPROCESSORS[kind].from_dataset(info, train_images, reg)


def from_dict(d, directory=None):
  """Restores a preprocessor from `to_dict()` output; ZCA reads its file from directory."""
  kind = d.get("kind")
  if kind not in PREPROCESSORS:
    raise ValueError(f"Unknown preprocessing {kind!r} in {d}; choose one of {', '.join(PREPROCESSORS)}.")
  return PREPROCESSORS[kind].from_dict(d, directory)

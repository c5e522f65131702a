"""Network registry: `build(name, num_classes, image_shape, **kw)` for every architecture of the project."""

import contextlib
import functools

import keras
import tensorflow as tf

from tesla_tf import errors
from tesla_tf.models import classic
from tesla_tf.models.convnet import convnet
from tesla_tf.models.flat import FlatModel

ARCHITECTURES = {
    "convnet": convnet,
    "convnet_d3": functools.partial(convnet, depth=3),
    "convnet_d4": functools.partial(convnet, depth=4),
    "convnet_d5": functools.partial(convnet, depth=5),
    "alexnet": classic.alexnet,
    "vgg11": classic.vgg11,
    "resnet18": classic.resnet18,
    "resnet18_ap": classic.resnet18_ap,
}
# How the layers compute: "float32" = Keras's global policy (float64 when a test sets floatx), "bfloat16" =
# Keras's "mixed_bfloat16": float32 parameters, bfloat16 convolutions and activations (FlatModel.apply
# returns the logits in the parameters' dtype).
PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16"}


def build(name, num_classes, image_shape, seed=0, precision="float32", **kwargs):
  """Builds architecture `name` (case-insensitive) with PyTorch-style initial weights drawn from `seed`.

  Args:
    name: a key of ARCHITECTURES.
    num_classes: number of logits.
    image_shape: (h, w, c).
    seed: int seed of the initial weights.
    precision: a key of PRECISIONS.
    **kwargs: architecture options (e.g. `width`, `depth` for the ConvNet).
  Returns:
    A keras.Model from [b, h, w, c] images to [b, num_classes] logits.
  """
  key = name.lower()
  if key not in ARCHITECTURES:
    raise errors.UsageError(f"Unknown model {name!r}; expected one of {sorted(ARCHITECTURES)}.")
  if precision not in PRECISIONS:
    raise errors.UsageError(f"--precision must be one of {tuple(PRECISIONS)}, got {precision!r}.")
  with _dtype_policy(PRECISIONS[precision]):
    model = ARCHITECTURES[key](num_classes, tuple(image_shape), **kwargs)
  flat = FlatModel(model)
  flat.set_flat(flat.initial_flat(seed))
  return model


@contextlib.contextmanager
def _dtype_policy(policy):
  """Keras's global dtype policy set to `policy` (None: unchanged) while the layers are made: each layer
  keeps the policy it was made with."""
  if policy is None:
    yield
    return
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def soft_cross_entropy(labels, logits):
  """Batch mean of −Σ_c y_c log softmax(z)_c; written with log_softmax so it is smooth to any order."""
  return -tf.reduce_mean(tf.reduce_sum(labels * tf.nn.log_softmax(logits), axis=-1))

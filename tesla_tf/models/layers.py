"""Layers with correct (and lean) second derivatives, and PyTorch-style initialisation.

`tf.nn.moments`, `keras.ops.moments` and the Keras normalisation layers stop the gradient through the mean
inside the variance. First-order gradients stay right, second-order ones (through an inner SGD step, as in
trajectory matching) come out wrong. The instance norm here is written out by hand so that every op has its
true derivative to any order.
"""

import math

import keras
import numpy as np
import tensorflow as tf


class InstanceNorm(keras.layers.Layer):
  """Per-sample, per-channel normalisation over H and W with a learnable affine map.

  y = (x − mean) / sqrt(var + eps) · γ + β, mean and biased variance over the spatial axes of each sample
  and channel. Input and output are [b, h, w, c].
  """

  def __init__(self, epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def build(self, input_shape):
    channels = input_shape[-1]
    self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
    self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

  def call(self, x):
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    centred = x - mean
    var = _spatial_mean_square(centred)
    # γ folded into the per-(sample, channel) scale first: one full-size product instead of two, and
    # its derivatives are one full-size product and reduction fewer (~12 % of a ConvNet-3 SGD step).
    return centred * (tf.math.rsqrt(var + self.epsilon) * self.gamma) + self.beta

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


class ReLU(keras.layers.Layer):
  """max(x, 0): `tf.nn.relu`, with a first derivative that is lean to differentiate again.

  TF's own ReLU gradient (ReluGrad) has a second-order gradient that adds a zeros tensor the size of the
  activation, which grappler folds into a constant held for the life of the function: 69 MB for ConvNet-3
  at batch 100 and 32×32 in every trajectory-matching double-backward (with the rest of the graph
  scheduled around it, the tesla/exact peak drops by ~0.1 GB without it, docs/benchmarks.md). Here the
  gradient is where(y > 0, dy, 0): the same values, no constant, and what a second derivative keeps of it
  is the boolean mask (1 byte per element) — written dy · float(y > 0), it kept a float32 mask, and every
  unrolled MTT step one activation-sized float tensor more per layer (−16 % memory per step at
  ConvNet-128, docs/benchmarks.md).
  """

  def call(self, x):
    return _relu(x)


@tf.custom_gradient
def _spatial_mean_square(x):
  """mean(x²) over H and W of [b, h, w, c], keepdims; its gradient (2 / hw) · x · dv broadcasts the small
  dv in one product instead of materialising it at full size and a 2x beside it (TF's Mean and Square
  gradients), which a second derivative would keep."""
  hw = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
  v = tf.reduce_mean(tf.square(x), axis=[1, 2], keepdims=True)

  def grad(dv):
    return x * (dv * (2.0 / hw))
  return v, grad


@tf.custom_gradient
def _relu(x):
  y = tf.nn.relu(x)

  def grad(dy):
    return tf.where(y > 0, dy, tf.zeros([], dy.dtype))
  return y, grad


def torch_init(variables, seed):
  """PyTorch's default initial values for a model's trainable variables (what the published lrs assume).

  Kernels and biases ~ U(−1/√fan_in, 1/√fan_in), fan_in = k·k·in_channels or in_features (a bias takes
  the fan-in of the kernel of its layer); instance-norm γ = 1, β = 0.

  Args:
    variables: the model's trainable variables, each with a Keras `.path` ("layer/kernel", ...).
    seed: int; the same seed gives the same values.
  Returns:
    A list of tensors, one per variable, in the same order.
  """
  kernels = {v.path.rsplit("/", 1)[0]: v for v in variables if v.path.endswith("/kernel")}
  values = []
  for index, v in enumerate(variables):
    layer, kind = v.path.rsplit("/", 1)
    if kind in ("kernel", "bias"):
      fan_in = int(np.prod(kernels[layer].shape[:-1]))
      bound = 1.0 / math.sqrt(fan_in)
      values.append(tf.random.stateless_uniform(v.shape, seed=[seed, index], minval=-bound, maxval=bound,
                                                dtype=v.dtype))
    elif kind == "gamma":
      values.append(tf.ones(v.shape, v.dtype))
    elif kind == "beta":
      values.append(tf.zeros(v.shape, v.dtype))
    else:
      raise ValueError(f"No initialisation rule for variable {v.path!r}.")
  return values

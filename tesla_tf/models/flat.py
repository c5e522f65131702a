"""A Keras model seen as a pure function of one flat parameter vector.

Trajectory matching treats network parameters as a point θ ∈ R^P: experts are stored as [E+1, P] arrays,
students step θ directly and gradients flow through θ to second order. `FlatModel` maps θ onto the model's
trainable variables through `keras.Model.stateless_call`, so `apply(θ, x)` is an ordinary differentiable
function of the tensor θ (no variable is read or written). The flatten order is that of
`model.trainable_variables`; experts and students share it because they share this class.
"""

import numpy as np
import tensorflow as tf

from tesla_tf.models.layers import torch_init


class FlatModel:
  """A view of `model` as `apply(flat [P], images [b, h, w, c]) -> logits [b, classes]`."""

  def __init__(self, model):
    self.model = model
    self.shapes = [tuple(v.shape) for v in model.trainable_variables]
    self.sizes = [int(np.prod(s)) for s in self.shapes]
    self.num_params = int(sum(self.sizes))
    self.dtype = model.trainable_variables[0].dtype

  def layout(self):
    """[(variable path, shape)] in flat order — recorded in expert manifests to refuse foreign stores."""
    return [(v.path, list(s)) for v, s in zip(self.model.trainable_variables, self.shapes)]

  def unflatten(self, flat):
    """Splits flat [P] into tensors shaped like the trainable variables."""
    parts = tf.split(flat, self.sizes)
    return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]

  def flatten(self, tensors):
    """Concatenates per-variable tensors (values or gradients) into one [P] vector."""
    return tf.concat([tf.reshape(tf.convert_to_tensor(t), [-1]) for t in tensors], axis=0)

  def get_flat(self):
    """The model's current parameters as a [P] tensor."""
    return self.flatten([v.value for v in self.model.trainable_variables])

  def set_flat(self, flat):
    """Writes flat [P] into the model's trainable variables."""
    for variable, value in zip(self.model.trainable_variables, self.unflatten(flat)):
      variable.assign(tf.cast(value, variable.dtype))

  @tf.autograph.experimental.do_not_convert  # traced as written (no tensor-dependent Python control flow)
  def apply(self, flat, images, training=True):
    """Logits [b, classes] of the model with parameters `flat` — a pure, twice-differentiable function.

    The logits have flat's dtype whatever the layers compute in (bfloat16 under models.PRECISIONS).
    """
    non_trainable = [v.value for v in self.model.non_trainable_variables]
    logits, _ = self.model.stateless_call(self.unflatten(flat), non_trainable, images, training=training)
    return tf.cast(logits, flat.dtype)

  def initial_flat(self, seed):
    """A PyTorch-style initialisation [P] drawn from `seed` (int); the same seed gives the same vector."""
    return self.flatten(torch_init(self.model.trainable_variables, seed))

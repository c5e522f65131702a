"""The ConvNet of the dataset-distillation literature (REFERENCE §5), the one network definition used by
experts, students, teachers and evaluation."""

import keras

from tesla_tf.models.layers import InstanceNorm, ReLU

WIDTH = 128


def default_depth(image_shape):
  """Blocks that halve the map until it is at most 4×4 (log2(size) − 2 for powers of two): 3 for 28/32 px,
  4 for 64 px, 5 for 96 and 128 px."""
  size = max(image_shape[0], 32)
  depth = 0
  while size > 4:
    size //= 2
    depth += 1
  return depth


def convnet(num_classes, image_shape, depth=None, width=WIDTH):
  """ConvNet: `depth` × [conv3×3 → instance norm → ReLU → avg-pool 2×2], then a linear classifier.

  A 28×28 input is padded by 3 before the first convolution so that its map is 32×32 (REFERENCE §5).

  Args:
    num_classes: number of output logits.
    image_shape: (h, w, c) of the inputs.
    depth: number of blocks; by default from the image size (`default_depth`).
    width: channels of every block.
  Returns:
    An uncompiled keras.Model mapping [b, h, w, c] images to [b, num_classes] logits.
  """
  depth = depth or default_depth(image_shape)
  inputs = keras.Input(shape=tuple(image_shape))
  x = inputs
  for block in range(depth):
    if block == 0 and image_shape[0] == 28:
      x = keras.layers.ZeroPadding2D(3)(x)
      x = keras.layers.Conv2D(width, 3, padding="valid", name=f"conv{block}")(x)
    else:
      x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{block}")(x)
    x = InstanceNorm(name=f"norm{block}")(x)
    x = ReLU()(x)
    x = keras.layers.AveragePooling2D(2)(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(num_classes, name="classifier")(x)
  return keras.Model(inputs, outputs, name=f"convnet_d{depth}")

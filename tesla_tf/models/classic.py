"""Evaluation-only networks of the dataset-distillation benchmarks (REFERENCE §5): AlexNet, VGG11,
ResNet18 and ResNet18 with average-pool down-sampling, used to test how distilled data transfers across
architectures.

They follow the networks of the DC/DSA/MTT benchmark code, with our hand-written `InstanceNorm` wherever
those use batch norm: the Keras normalisation layers have wrong second derivatives, and batch statistics
would make a student's output depend on the rest of its batch. No model here has non-trainable variables.
Convolutions pad as PyTorch does (symmetric zero padding), so a stride-2 convolution samples the same
positions as in the reference code. Every builder takes `width_multiplier`, which scales all channel
counts (1.0 is the published network; smaller values give cheap variants for tests).
"""

import keras

from tesla_tf.models.layers import InstanceNorm, ReLU

ALEXNET_CHANNELS = (128, 192, 256, 192, 192)
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
RESNET18_CHANNELS = (64, 128, 256, 512)
RESNET18_STRIDES = (1, 2, 2, 2)
RESNET18_BLOCKS_PER_STAGE = 2


def _scaled(channels, width_multiplier):
  return max(1, int(round(channels * width_multiplier)))


def _check_size(image_shape, minimum, name):
  if min(image_shape[0], image_shape[1]) < minimum:
    raise ValueError(f"{name} needs images of at least {minimum}×{minimum} pixels, got {tuple(image_shape)}.")


def _conv(x, filters, kernel, name, stride=1, padding=0, use_bias=True):
  """Conv2D with PyTorch-style symmetric zero padding of `padding` pixels on each side."""
  if stride == 1 and 2 * padding == kernel - 1:
    return keras.layers.Conv2D(filters, kernel, padding="same", use_bias=use_bias, name=name)(x)
  if padding:
    x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
  return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=use_bias, name=name)(x)


def alexnet(num_classes, image_shape, width_multiplier=1.0):
  """AlexNet of the DC benchmark: five convolutions with ReLU and three max-pools, then a linear layer.

  conv5×5(128) → pool → conv5×5(192) → pool → conv3×3(256) → conv3×3(192) → conv3×3(192) → pool → linear;
  no normalisation. The first convolution pads by 2, or by 4 for a 28×28 input so that its map is 32×32;
  at 32×32 the classifier sees 192·4·4 features.

  Args:
    num_classes: number of output logits.
    image_shape: (h, w, c) of the inputs, at least 8×8.
    width_multiplier: scales every channel count.
  Returns:
    An uncompiled keras.Model mapping [b, h, w, c] images to [b, num_classes] logits.
  """
  _check_size(image_shape, 8, "alexnet")
  c1, c2, c3, c4, c5 = (_scaled(c, width_multiplier) for c in ALEXNET_CHANNELS)
  inputs = keras.Input(shape=tuple(image_shape))
  x = _conv(inputs, c1, 5, "conv0", padding=4 if image_shape[0] == 28 else 2)
  x = ReLU()(x)
  x = keras.layers.MaxPooling2D(2)(x)
  x = _conv(x, c2, 5, "conv1", padding=2)
  x = ReLU()(x)
  x = keras.layers.MaxPooling2D(2)(x)
  for index, channels in enumerate((c3, c4, c5), start=2):
    x = _conv(x, channels, 3, f"conv{index}", padding=1)
    x = ReLU()(x)
  x = keras.layers.MaxPooling2D(2)(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(num_classes, name="classifier")(x)
  return keras.Model(inputs, outputs, name="alexnet")


def vgg11(num_classes, image_shape, width_multiplier=1.0):
  """VGG11 of the DC benchmark: [conv3×3 → instance norm → ReLU] blocks and max-pools, then a linear layer.

  Configuration 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M (M = max-pool 2×2); the classifier
  sees 512·1·1 features at 32×32. A 28×28 input is padded by 3 in the first convolution so that its map is
  32×32.

  Args:
    num_classes: number of output logits.
    image_shape: (h, w, c) of the inputs, at least 32×32 (or exactly 28×28).
    width_multiplier: scales every channel count.
  Returns:
    An uncompiled keras.Model mapping [b, h, w, c] images to [b, num_classes] logits.
  """
  if image_shape[0] != 28:
    _check_size(image_shape, 32, "vgg11")
  inputs = keras.Input(shape=tuple(image_shape))
  x = inputs
  conv_index = 0
  for item in VGG11_CONFIG:
    if item == "M":
      x = keras.layers.MaxPooling2D(2)(x)
      continue
    padding = 3 if conv_index == 0 and image_shape[0] == 28 else 1
    x = _conv(x, _scaled(item, width_multiplier), 3, f"conv{conv_index}", padding=padding)
    x = InstanceNorm(name=f"norm{conv_index}")(x)
    x = ReLU()(x)
    conv_index += 1
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(num_classes, name="classifier")(x)
  return keras.Model(inputs, outputs, name="vgg11")


def _basic_block(x, filters, stride, avg_pool, name):
  """ResNet basic block: two 3×3 convolutions with instance norm and an identity or projected shortcut.

  With `avg_pool`, a block that halves the map convolves at stride 1 and down-samples by 2×2 average
  pooling: after the first convolution's ReLU on the main path, and between the 1×1 convolution and the
  norm on the shortcut (as the benchmark's ResNet-AP does).
  """
  in_filters = x.shape[-1]
  conv_stride = 1 if avg_pool else stride
  y = _conv(x, filters, 3, f"{name}_conv1", stride=conv_stride, padding=1, use_bias=False)
  y = InstanceNorm(name=f"{name}_norm1")(y)
  y = ReLU()(y)
  if avg_pool and stride > 1:
    y = keras.layers.AveragePooling2D(stride)(y)
  y = _conv(y, filters, 3, f"{name}_conv2", padding=1, use_bias=False)
  y = InstanceNorm(name=f"{name}_norm2")(y)

  shortcut = x
  if stride != 1 or in_filters != filters:
    shortcut = _conv(x, filters, 1, f"{name}_shortcut_conv", stride=conv_stride, use_bias=False)
    if avg_pool and stride > 1:
      shortcut = keras.layers.AveragePooling2D(stride)(shortcut)
    shortcut = InstanceNorm(name=f"{name}_shortcut_norm")(shortcut)
  return ReLU()(keras.layers.Add()([y, shortcut]))


def _resnet18(num_classes, image_shape, width_multiplier, avg_pool, name):
  _check_size(image_shape, 8, name)
  inputs = keras.Input(shape=tuple(image_shape))
  x = _conv(inputs, _scaled(RESNET18_CHANNELS[0], width_multiplier), 3, "stem_conv", padding=1,
            use_bias=False)
  x = InstanceNorm(name="stem_norm")(x)
  x = ReLU()(x)
  for stage, (channels, stride) in enumerate(zip(RESNET18_CHANNELS, RESNET18_STRIDES), start=1):
    for block in range(RESNET18_BLOCKS_PER_STAGE):
      x = _basic_block(x, _scaled(channels, width_multiplier), stride if block == 0 else 1, avg_pool,
                       name=f"stage{stage}_block{block}")
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(num_classes, name="classifier")(x)
  return keras.Model(inputs, outputs, name=name)


def resnet18(num_classes, image_shape, width_multiplier=1.0):
  """ResNet-18 for small images: 3×3 stem (stride 1, no max-pool), four stages of two basic blocks.

  Stages have 64, 128, 256, 512 channels and strides 1, 2, 2, 2; convolutions have no bias and are
  followed by instance norm; a 1×1 convolution + norm projects the shortcut when the shape changes; global
  average pooling feeds the linear classifier, so any input of at least 8×8 works (28, 32, 64, ...).

  Args:
    num_classes: number of output logits.
    image_shape: (h, w, c) of the inputs.
    width_multiplier: scales every channel count.
  Returns:
    An uncompiled keras.Model mapping [b, h, w, c] images to [b, num_classes] logits.
  """
  return _resnet18(num_classes, image_shape, width_multiplier, avg_pool=False, name="resnet18")


def resnet18_ap(num_classes, image_shape, width_multiplier=1.0):
  """ResNet-18 as `resnet18`, but down-sampling by 2×2 average pooling instead of stride-2 convolutions.

  Same parameters as `resnet18` (same variable shapes); only where the maps shrink differs.

  Args:
    num_classes: number of output logits.
    image_shape: (h, w, c) of the inputs.
    width_multiplier: scales every channel count.
  Returns:
    An uncompiled keras.Model mapping [b, h, w, c] images to [b, num_classes] logits.
  """
  return _resnet18(num_classes, image_shape, width_multiplier, avg_pool=True, name="resnet18_ap")

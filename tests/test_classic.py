"""Evaluation-only architectures: AlexNet, VGG11, ResNet18, ResNet18-AP."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import models
from tesla_tf.models.flat import FlatModel
from tests.helpers import float64, rel_error

NAMES = ("alexnet", "vgg11", "resnet18", "resnet18_ap")
SMALL = 1 / 16  # width multiplier of the cheap variants


def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _norm(c):
  return 2 * c  # γ, β


ALEXNET_32_10 = (_conv(5, 3, 128) + _conv(5, 128, 192) + _conv(3, 192, 256) + _conv(3, 256, 192)
                 + _conv(3, 192, 192) + (192 * 4 * 4 * 10 + 10))
VGG11_32_10 = (sum(_conv(3, cin, cout) + _norm(cout) for cin, cout in
                   [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
                    (512, 512)])
               + (512 * 1 * 1 * 10 + 10))


def _block(cin, cout):
  projection = _conv(1, cin, cout, bias=False) + _norm(cout) if cin != cout else 0
  return _conv(3, cin, cout, False) + _conv(3, cout, cout, False) + 2 * _norm(cout) + projection


RESNET18_32_10 = (_conv(3, 3, 64, False) + _norm(64)
                  + sum(_block(cin, cout) + _block(cout, cout)
                        for cin, cout in [(64, 64), (64, 128), (128, 256), (256, 512)])
                  + (512 * 10 + 10))


def test_hand_counts_are_the_known_numbers():
  # 5·5·3·128+128 = 9,728; 5·5·128·192+192 = 614,592; 3·3·192·256+256 = 442,624;
  # 3·3·256·192+192 = 442,560; 3·3·192·192+192 = 331,968; 3072·10+10 = 30,730.
  assert ALEXNET_32_10 == 9_728 + 614_592 + 442_624 + 442_560 + 331_968 + 30_730 == 1_872_202
  # conv(9·cin·cout + cout) + norm(2·cout): 1,920 + 74,112 + 295,680 + 590,592 + 1,181,184 + 3·2,360,832,
  # classifier 512·10+10 = 5,130.
  assert VGG11_32_10 == 1_920 + 74_112 + 295_680 + 590_592 + 1_181_184 + 3 * 2_360_832 + 5_130 == 9_231_114
  assert RESNET18_32_10 == 11_173_962  # the CIFAR ResNet-18 count (norm γ/β as many as batch norm's)


@pytest.mark.parametrize("name, expected", [
    ("alexnet", ALEXNET_32_10),
    ("vgg11", VGG11_32_10),
    ("resnet18", RESNET18_32_10),
    ("resnet18_ap", RESNET18_32_10),
])
def test_full_width_builds_with_expected_parameters(name, expected):
  model = models.build(name, 10, (32, 32, 3))
  count = FlatModel(model).num_params
  print(f"{name}: {count:,} parameters")
  assert count == expected
  assert model.output.shape[1:] == (10,)
  assert not model.non_trainable_variables
  banned = (keras.layers.BatchNormalization, keras.layers.GroupNormalization, keras.layers.LayerNormalization)
  assert not [layer for layer in model.layers if isinstance(layer, banned)]
  assert all(v.path.rsplit("/", 1)[1] in ("kernel", "bias", "gamma", "beta") for v in model.trainable_variables)


def test_classifier_feature_sizes():
  assert models.build("alexnet", 10, (32, 32, 3)).get_layer("classifier").kernel.shape == (192 * 4 * 4, 10)
  assert models.build("vgg11", 10, (32, 32, 3)).get_layer("classifier").kernel.shape == (512, 10)


@pytest.mark.parametrize("name", NAMES)
def test_flat_apply_equals_model_call(name):
  model = models.build(name, 10, (32, 32, 3), width_multiplier=SMALL, seed=1)
  x = tf.random.stateless_normal([2, 32, 32, 3], seed=[0, 1])
  fmodel = FlatModel(model)
  logits = fmodel.apply(fmodel.get_flat(), x)
  assert logits.shape == (2, 10)
  np.testing.assert_allclose(logits, model(x), atol=1e-5)


# Tiny inputs for the float64 second-order checks (VGG11 needs 32x32, or 28x28 padded to it; the ResNets
# keep 2x2 maps in their last stage at 16x16, so every instance norm still has a spatial variance).
SECOND_ORDER_SHAPES = {"alexnet": (16, 16, 1), "vgg11": (28, 28, 1), "resnet18": (16, 16, 1),
                       "resnet18_ap": (16, 16, 1)}


@pytest.mark.parametrize("name", NAMES)
def test_second_derivatives_match_finite_differences_of_the_gradient(name):
  """Double backward through the network, as the matching gradient does, against central differences of
  the (first-order) gradient in float64: the Hessian-vector product H·v in the parameters, and the mixed
  term u·∂(v·∇θ loss)/∂x by which images get their gradient through a student step. tf.nn.moments and the
  Keras normalisation layers pass first-order checks but fail these."""
  shape = SECOND_ORDER_SHAPES[name]
  with float64():
    model = models.build(name, 3, shape, width_multiplier=SMALL, seed=1)
  fmodel = FlatModel(model)
  assert fmodel.dtype == tf.float64
  rng = np.random.default_rng(0)
  # Noise on every parameter: γ ≠ 1 and β ≠ 0, so that the variance path of the norms matters.
  theta = fmodel.get_flat() + tf.constant(rng.normal(scale=0.1, size=fmodel.num_params))
  images = tf.constant(rng.normal(size=(2,) + shape))
  labels = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], tf.float64)
  v = rng.normal(size=fmodel.num_params)
  v = tf.constant(v / np.linalg.norm(v))
  u = rng.normal(size=images.shape)
  u = tf.constant(u / np.linalg.norm(u))

  def grad(params, x):
    with tf.GradientTape() as tape:
      tape.watch(params)
      loss = models.soft_cross_entropy(labels, fmodel.apply(params, x))
    return tape.gradient(loss, params)

  with tf.GradientTape(persistent=True) as outer:
    outer.watch([theta, images])
    directional = tf.reduce_sum(grad(theta, images) * v)
  hvp = outer.gradient(directional, theta).numpy()
  mixed = float(tf.reduce_sum(outer.gradient(directional, images) * u))

  eps = 1e-6
  fd_hvp = ((grad(theta + eps * v, images) - grad(theta - eps * v, images)) / (2 * eps)).numpy()
  fd_mixed = float(tf.reduce_sum((grad(theta, images + eps * u) - grad(theta, images - eps * u)) * v)
                   / (2 * eps))
  assert np.linalg.norm(fd_hvp) > 1e-3 and abs(fd_mixed) > 1e-4  # a test that can see a wrong term
  assert rel_error(hvp, fd_hvp) < 1e-6, (rel_error(hvp, fd_hvp), name)
  assert abs(mixed - fd_mixed) < 1e-5 * abs(fd_mixed), (mixed, fd_mixed)


@pytest.mark.parametrize("name", NAMES)
def test_28x28_grayscale(name):
  model = models.build(name, 10, (28, 28, 1), width_multiplier=SMALL)
  assert model(tf.zeros([1, 28, 28, 1])).shape == (1, 10)


def test_28x28_pads_the_first_conv_to_32():
  alex = models.build("alexnet", 10, (28, 28, 1))
  assert alex.get_layer("conv0").output.shape[1:3] == (32, 32)
  assert alex.get_layer("classifier").kernel.shape == (192 * 4 * 4, 10)
  vgg = models.build("vgg11", 10, (28, 28, 1))
  assert vgg.get_layer("conv0").output.shape[1:3] == (32, 32)
  assert vgg.get_layer("classifier").kernel.shape == (512, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet18_ap"])
def test_resnet_on_64x64(name):
  model = models.build(name, 200, (64, 64, 3), width_multiplier=SMALL)
  assert model.get_layer("stage4_block1_norm2").output.shape[1:3] == (8, 8)
  assert model(tf.zeros([1, 64, 64, 3])).shape == (1, 200)


def test_average_pool_variant_has_no_strided_convolutions():
  ap = models.build("resnet18_ap", 10, (32, 32, 3), width_multiplier=SMALL)
  strided = models.build("resnet18", 10, (32, 32, 3), width_multiplier=SMALL)
  assert all(layer.strides == (1, 1) for layer in ap.layers if isinstance(layer, keras.layers.Conv2D))
  assert any(layer.strides == (2, 2) for layer in strided.layers if isinstance(layer, keras.layers.Conv2D))
  # Same variables (the flat order may differ: the functional API orders layers by graph depth).
  assert sorted(FlatModel(ap).layout()) == sorted(FlatModel(strided).layout())


def test_too_small_images_are_refused():
  with pytest.raises(ValueError, match="vgg11"):
    models.build("vgg11", 10, (16, 16, 3))

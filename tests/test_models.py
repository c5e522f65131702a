"""ConvNet, hand-written instance norm, PyTorch-style init and FlatModel."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import models
from tesla_tf.models.convnet import convnet
from tesla_tf.models.flat import FlatModel
from tesla_tf.models import layers
from tesla_tf.models.layers import InstanceNorm, ReLU
from tests.helpers import central_difference, float64, rel_error


@pytest.mark.parametrize("classes, shape, name, expected", [
    (10, (32, 32, 3), "convnet", 320_010),          # CIFAR-10
    (100, (32, 32, 3), "convnet", 504_420),         # CIFAR-100
    (200, (64, 64, 3), "ConvNet_D4", 857_160),      # Tiny ImageNet
    (1000, (64, 64, 3), "convnet", 2_496_360),      # ImageNet-1K 64x64: depth follows the size
])
def test_parameter_counts_match_reference(classes, shape, name, expected):
  assert FlatModel(models.build(name, classes, shape)).num_params == expected


def test_convnet_128px_has_depth_5():
  model = models.build("convnet", 10, (128, 128, 3))
  assert model.name == "convnet_d5"
  assert [l.name for l in model.layers if isinstance(l, keras.layers.Conv2D)] == [f"conv{i}" for i in range(5)]
  assert model.get_layer("classifier").kernel.shape == (128 * 4 * 4, 10)  # 128 / 2⁵ = 4
  # conv0 3·3·3·128 + 128, conv1..4 4·(3·3·128·128 + 128), norms 5·2·128, classifier (128·4·4)·10 + 10
  expected = (3 * 3 * 3 * 128 + 128) + 4 * (3 * 3 * 128 * 128 + 128) + 5 * 2 * 128 + (128 * 4 * 4) * 10 + 10
  assert FlatModel(model).num_params == expected


def test_convnet_96px_depth_follows_default_depth():
  # 96 → 48 → 24 → 12 → 6 → 3: five halvings leave a 3 × 3 map (the first map at or below 4).
  model = models.build("convnet", 7, (96, 96, 1), width=16)
  assert model.name == "convnet_d5"
  assert model.get_layer("classifier").kernel.shape == (16 * 3 * 3, 7)
  # conv0 3·3·1·16 + 16, conv1..4 4·(3·3·16·16 + 16), norms 5·2·16, classifier (16·3·3)·7 + 7
  expected = (3 * 3 * 1 * 16 + 16) + 4 * (3 * 3 * 16 * 16 + 16) + 5 * 2 * 16 + (16 * 3 * 3) * 7 + 7
  assert FlatModel(model).num_params == expected
  assert model(tf.zeros([1, 96, 96, 1])).shape == (1, 7)


def test_fashion_mnist_first_conv_pads_to_32():
  model = models.build("convnet", 10, (28, 28, 1))
  assert model.get_layer("norm0").output.shape[1:3] == (32, 32)
  assert model.get_layer("classifier").kernel.shape == (2048, 10)


def test_unknown_model_is_refused():
  with pytest.raises(ValueError, match="resnet18"):
    models.build("resnet19", 10, (32, 32, 3))


def test_init_is_pytorch_style():
  model = models.build("convnet", 10, (32, 32, 3), seed=3)
  for v in model.trainable_variables:
    layer, kind = v.path.rsplit("/", 1)
    values = np.asarray(v)
    if kind in ("kernel", "bias"):
      fan_in = np.prod(model.get_layer(layer).kernel.shape[:-1])
      bound = 1 / math.sqrt(fan_in)
      assert np.abs(values).max() <= bound
      if values.size > 1000:  # U(-b, b): range near ±b, variance b²/3, mean ~0
        assert np.abs(values).max() > 0.99 * bound
        np.testing.assert_allclose(values.var(), bound**2 / 3, rtol=0.05)
        assert abs(values.mean()) < 0.02 * bound
    else:
      np.testing.assert_array_equal(values, 1.0 if kind == "gamma" else 0.0)
  again = FlatModel(models.build("convnet", 10, (32, 32, 3), seed=3)).get_flat()
  np.testing.assert_array_equal(FlatModel(model).get_flat(), again)
  other = FlatModel(models.build("convnet", 10, (32, 32, 3), seed=4)).get_flat()
  assert not np.allclose(again, other)


def test_flat_apply_equals_model_and_set_flat_roundtrips():
  model = convnet(5, (16, 16, 3), width=8)
  fmodel = FlatModel(model)
  x = tf.random.stateless_normal([3, 16, 16, 3], seed=[0, 1])
  np.testing.assert_allclose(fmodel.apply(fmodel.get_flat(), x), model(x), atol=1e-6)
  flat = fmodel.get_flat()
  fmodel.set_flat(flat)
  np.testing.assert_array_equal(fmodel.get_flat(), flat)
  new = fmodel.initial_flat(7)
  fmodel.set_flat(new)
  np.testing.assert_array_equal(fmodel.get_flat(), new)
  np.testing.assert_allclose(fmodel.apply(new, x), model(x), atol=1e-6)


def test_bfloat16_precision_computes_in_bfloat16_and_keeps_float32_parameters_and_gradients():
  """precision="bfloat16": every layer computes in bfloat16, θ, the logits and ∇θ stay float32 and close
  to the float32 model's (bfloat16 keeps 8 bits of mantissa: ~0.4 % per rounding)."""
  x = tf.random.stateless_normal([8, 16, 16, 3], seed=[0, 1])
  y = tf.one_hot(tf.range(8) % 5, 5)
  fp32 = FlatModel(models.build("convnet", 5, (16, 16, 3), width=16))
  bf16 = FlatModel(models.build("convnet", 5, (16, 16, 3), width=16, precision="bfloat16"))
  assert {layer.compute_dtype for layer in bf16.model.layers[1:]} == {"bfloat16"}
  assert {layer.compute_dtype for layer in fp32.model.layers[1:]} == {"float32"}
  assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
  theta = fp32.initial_flat(3)
  assert bf16.dtype == tf.float32 and bf16.num_params == fp32.num_params

  def logits_and_grad(fmodel):
    with tf.GradientTape() as tape:
      tape.watch(theta)
      logits = fmodel.apply(theta, x)
      loss = models.soft_cross_entropy(y, logits)
    return logits, tape.gradient(loss, theta)

  (z32, g32), (z16, g16) = logits_and_grad(fp32), logits_and_grad(bf16)
  assert z16.dtype == tf.float32 and g16.dtype == tf.float32
  assert 0 < rel_error(z16, z32) < 0.03  # different (bfloat16 did run) but close
  cos = float(tf.reduce_sum(g16 * g32) / (tf.norm(g16) * tf.norm(g32)))
  assert 0.99 < cos < 1.0 - 1e-6, cos
  with pytest.raises(ValueError, match="--precision must be one of"):
    models.build("convnet", 5, (16, 16, 3), precision="float16")


def test_instance_norm_hand_formula():
  x = np.random.default_rng(0).normal(size=(2, 4, 4, 3))
  layer = InstanceNorm()
  y = layer(x)
  m = x.mean(axis=(1, 2), keepdims=True)
  v = ((x - m) ** 2).mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5), atol=1e-5)


class MomentsNorm(InstanceNorm):
  """Instance norm through tf.nn.moments: right first derivatives, wrong second ones."""

  def call(self, x):
    mean, var = tf.nn.moments(x, axes=[1, 2], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + self.epsilon) * self.gamma + self.beta


def _image_gradient_after_one_step(norm_class, relu_class=ReLU):
  """Gradient wrt images of a loss taken after one inner SGD step (the shape of trajectory matching),
  and central finite differences of the same function at a few pixels, in float64."""
  with float64():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = norm_class()(x)
    x = relu_class()(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
  fmodel = FlatModel(model)
  rng = np.random.default_rng(0)
  theta0 = fmodel.initial_flat(0) + tf.constant(rng.normal(scale=0.1, size=fmodel.num_params))
  # gamma != 1 makes the variance path matter to second order
  target = tf.constant(rng.normal(size=fmodel.num_params))
  images = rng.normal(size=(4, 6, 6, 2))
  labels = tf.one_hot([0, 1, 2, 1], 3, dtype=tf.float64)

  def loss(x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as inner:
      inner.watch(theta0)
      ce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, fmodel.apply(theta0, x)))
    theta1 = theta0 - 0.5 * inner.gradient(ce, theta0)
    return tf.reduce_sum(tf.square(theta1 - target))

  x = tf.constant(images)
  with tf.GradientTape() as tape:
    tape.watch(x)
    value = loss(x)
  grad = tape.gradient(value, x).numpy()
  coords = [0, 17, 40, 71, 100, 143]
  fd = [central_difference(loss, images, i) for i in coords]
  return grad.flat[coords], np.array(fd)


@pytest.mark.parametrize("relu_class", [ReLU, keras.layers.ReLU])
def test_second_order_image_gradient_matches_finite_differences(relu_class):
  grad, fd = _image_gradient_after_one_step(InstanceNorm, relu_class)
  assert rel_error(grad, fd) < 1e-5


def test_relu_values_and_first_derivative_are_tf_relu():
  x = tf.constant(np.random.default_rng(0).normal(size=(3, 5, 5, 2)), tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ours, theirs = ReLU()(x), tf.nn.relu(x)
  np.testing.assert_array_equal(ours, theirs)
  weights = tf.constant(np.random.default_rng(1).normal(size=x.shape), tf.float32)
  np.testing.assert_array_equal(tape.gradient(ours, x, weights), tape.gradient(theirs, x, weights))


ACTIVATION = tf.TensorSpec([2, 4, 4, 3], tf.float32)


def _second_derivative_graph(relu):
  """The graph of a second derivative through `relu` of an activation-shaped input."""
  @tf.function(input_signature=[ACTIVATION, ACTIVATION])
  def second(x, v):
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        y = tf.reduce_sum(tf.square(relu(x)))
      s = tf.reduce_sum(inner.gradient(y, x) * v)
    return outer.gradient(s, x)
  return second.get_concrete_function().graph


def _activation_sized_constants(relu):
  """Used constant-filled tensors of the activation's shape in the graph of a second derivative through
  `relu`."""
  return [op.name for op in _second_derivative_graph(relu).get_operations()
          if op.type in ("ZerosLike", "Fill", "Const") and op.outputs[0].shape == ACTIVATION.shape
          and op.outputs[0].consumers()]  # unused ones are pruned before running


def _activation_sized_float_masks(relu):
  """Casts to float of the activation's shape in the graph of a second derivative through `relu`: a
  float mask that the derivative keeps (4 bytes per element instead of a boolean's 1)."""
  return [op.name for op in _second_derivative_graph(relu).get_operations()
          if op.type == "Cast" and op.outputs[0].shape == ACTIVATION.shape]


def test_relu_gradient_keeps_a_boolean_mask_not_a_float_one():
  # Unrolled MTT keeps every step's inner backward for the outer one: a float mask per layer per step was
  # 16 % of its memory per step at ConvNet-128 (docs/benchmarks.md).
  assert not _activation_sized_float_masks(ReLU())


def test_spatial_mean_square_is_the_plain_formula_to_second_order():
  """The instance norm's variance with its lean gradient against mean(x²) written plainly: values, the
  gradient and a Hessian-vector product agree in float64."""
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=(2, 5, 4, 3)))
  dv = tf.constant(rng.normal(size=(2, 1, 1, 3)))
  v = tf.constant(rng.normal(size=x.shape))
  plain = lambda t: tf.reduce_mean(tf.square(t), axis=[1, 2], keepdims=True)  # noqa: E731

  def derivatives(fn):
    with tf.GradientTape() as outer:
      outer.watch(x)
      with tf.GradientTape() as inner:
        inner.watch(x)
        value = fn(tf.sin(x) * x)  # not quadratic, so the second derivative depends on x
      grad = inner.gradient(value, x, output_gradients=dv)
      s = tf.reduce_sum(grad * v)
    return value, grad, outer.gradient(s, x)

  for ours, theirs in zip(derivatives(layers._spatial_mean_square), derivatives(plain)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_relu_second_derivative_builds_no_activation_sized_zeros():
  # What the layer is for: TF's ReluGrad differentiates into zeros_like(activation), which grappler turns
  # into a constant kept alive for the function's life; ours differentiates into a product.
  assert _activation_sized_constants(tf.nn.relu)
  assert not _activation_sized_constants(ReLU())


def test_moments_based_norm_gets_second_order_wrong():
  # The contrast that motivates the hand-written norm: tf.nn.moments stops the gradient through the mean
  # inside the variance, so the same check fails by a wide margin (first-order gradients would still pass).
  grad, fd = _image_gradient_after_one_step(MomentsNorm)
  assert rel_error(grad, fd) > 1e-2

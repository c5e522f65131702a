"""Block 0 of the expert step (batch 256, 32×32×128 after conv 0): norm + ReLU + 2×2 average pool, forward
and forward + backward, and the 128 → 128 conv at that size; TensorFlow (tesla_tf.models.layers) or
PyTorch (GroupNorm(128, 128), as the public ConvNet). Milliseconds, median of 11 calls after 2 warm-ups.
Usage: python block0_micro.py tf   (the project's .venv)   |   python block0_micro.py torch   (a PyTorch venv)
"""
import json
import os
import sys

from norm_variants import med  # this folder, first on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
which = sys.argv[1]


def tensorflow_block():
  sys.path.insert(0, ROOT)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf.models import layers  # pylint: disable=g-import-not-at-top
  norm, relu = layers.InstanceNorm(), layers.ReLU()
  norm.build([256, 32, 32, 128])
  x, kernel = tf.random.normal([256, 32, 32, 128]), tf.random.normal([3, 3, 128, 128])

  def block():
    return tf.reduce_sum(tf.nn.avg_pool2d(relu(norm(x)), 2, 2, "VALID"))

  def block_and_gradients():  # with respect to x, γ and β, as PyTorch's backward gives
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = block()
    return [tf.reduce_sum(g) for g in tape.gradient(y, [x, norm.gamma, norm.beta])]

  forward, backward = tf.function(block), tf.function(block_and_gradients)
  conv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME")))
  return (lambda: forward().numpy()), (lambda: [g.numpy() for g in backward()]), (lambda: conv().numpy())


def pytorch_block():
  import torch  # pylint: disable=g-import-not-at-top
  norm = torch.nn.GroupNorm(128, 128, affine=True)
  x = torch.randn(256, 128, 32, 32, requires_grad=True)
  kernel = torch.randn(128, 128, 3, 3)

  def block():
    return torch.nn.functional.avg_pool2d(torch.relu(norm(x)), 2, 2).sum()

  def forward():
    with torch.no_grad():
      return block()

  def backward():
    x.grad = None
    norm.zero_grad()
    block().backward()

  def conv():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, kernel, padding=1).sum()
  return forward, backward, conv


forward_fn, backward_fn, conv_fn = (tensorflow_block if which == "tf" else pytorch_block)()
print(json.dumps({"who": which, "fwd_ms": med(forward_fn), "fwd_bwd_ms": med(backward_fn),
                  "conv128_fwd_ms": med(conv_fn)}))

"""The instance norm of the expert step's block 0 (256×32×32×128) alone, forward and forward + backward
(gradient of sum(norm(x) · w) with respect to x), in milliseconds (median of 11 calls after 2 warm-ups):
  tf:    today's (tesla_tf.models.layers.InstanceNorm), an analytic custom gradient
         (dx = γ·r·(dy − mean dy − x̂·mean(dy·x̂))), and TensorFlow's FusedBatchNormV3 over the transposed
         view [1, h, w, b·c] (each sample's channel a batch-norm channel); the ReLU's forward + backward;
         and the second derivative the matching takes (today's and the analytic form's, batch 100).
  torch: GroupNorm(128, 128) (the public ConvNet's instance norm) and torch.relu (run it under jemalloc,
         as the public code's timings were).
Usage: python norm_variants.py tf | torch
"""
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, H, W, C = 256, 32, 32, 128
EPS = 1e-5


def med(fn, reps=11):
  """Milliseconds of fn(), the median of `reps` calls after 2 warm-ups."""
  fn()
  fn()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return round(statistics.median(times) * 1e3, 1)


def tensorflow_variants():
  sys.path.insert(0, ROOT)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf.models import layers  # pylint: disable=g-import-not-at-top
  x, w = tf.random.normal([B, H, W, C]), tf.random.normal([B, H, W, C])
  today = layers.InstanceNorm(epsilon=EPS)  # the project's layer itself, γ and β set away from 1 and 0
  today.build([B, H, W, C])
  today.gamma.assign(tf.random.normal([C]) * 0.1 + 1)
  today.beta.assign(tf.random.normal([C]) * 0.1)
  gamma, beta = tf.convert_to_tensor(today.gamma), tf.convert_to_tensor(today.beta)

  @tf.custom_gradient
  def analytic(x):
    centred = x - tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    r = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=[1, 2], keepdims=True) + EPS)
    xhat = centred * r

    def grad(dy):
      mean_dy_xhat = tf.reduce_mean(dy * xhat, axis=[1, 2], keepdims=True)
      return (r * gamma) * (dy - tf.reduce_mean(dy, axis=[1, 2], keepdims=True) - xhat * mean_dy_xhat)
    return xhat * gamma + beta, grad

  def fused(x):
    view = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, H, W, B * C])
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(view, tf.ones([B * C]), tf.zeros([B * C]), epsilon=EPS,
                                               is_training=True)
    return tf.transpose(tf.reshape(y, [H, W, B, C]), [2, 0, 1, 3]) * gamma + beta

  def timed(op):  # closures, not default arguments: tf.function would unwrap the custom_gradient
    def forward_and_backward():
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(op(x) * w)
      return tf.reduce_sum(tape.gradient(y, x))
    forward = tf.function(lambda: tf.reduce_sum(op(x) * w), autograph=False)
    backward = tf.function(forward_and_backward, autograph=False)
    return {"fwd_ms": med(lambda: forward().numpy()), "fwd_bwd_ms": med(lambda: backward().numpy())}

  out = {name: timed(op) for name, op in (("today", today), ("analytic", analytic), ("fused_batch_norm", fused),
                                           ("relu", layers.ReLU()))}
  def second_order(op):  # what the matching does: d/dx of <d/dx sum(sin(norm(x))·w), v>, batch 100
    x100, w100, v100 = x[:100], w[:100], w[100:200]

    def double_backward():
      with tf.GradientTape() as outer:
        outer.watch(x100)
        with tf.GradientTape() as inner:
          inner.watch(x100)
          y = tf.reduce_sum(tf.sin(op(x100)) * w100)
        z = tf.reduce_sum(inner.gradient(y, x100) * v100)
      return outer.gradient(z, x100)
    return tf.function(double_backward, autograph=False)

  today_second, analytic_second = second_order(today), second_order(analytic)
  out["double_bwd_ms"] = {"today": med(lambda: today_second().numpy()),
                          "analytic": med(lambda: analytic_second().numpy())}
  out["max_rel_diff_double_bwd_analytic_vs_today"] = float(
      tf.reduce_max(tf.abs(analytic_second() - today_second())) / tf.reduce_max(tf.abs(today_second())))
  out["max_abs_diff_analytic_fused_vs_today"] = [float(tf.reduce_max(tf.abs(f(x) - today(x))))
                                                 for f in (analytic, fused)]
  return out


def pytorch_variants():
  import torch  # pylint: disable=g-import-not-at-top
  x, w = torch.randn(B, C, H, W, requires_grad=True), torch.randn(B, C, H, W)
  out = {}
  for name, op in (("group_norm", torch.nn.GroupNorm(C, C)), ("relu", torch.relu)):
    def forward(op=op):
      with torch.no_grad():
        return (op(x) * w).sum()

    def forward_and_backward(op=op):
      x.grad = None
      (op(x) * w).sum().backward()
    out[name] = {"fwd_ms": med(forward), "fwd_bwd_ms": med(forward_and_backward)}
  return out


if __name__ == "__main__":
  print(json.dumps({"who": sys.argv[1], **(tensorflow_variants() if sys.argv[1] == "tf" else pytorch_variants())}))

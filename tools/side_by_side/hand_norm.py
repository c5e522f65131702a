"""Instance norm (optionally followed by ReLU) with hand-written first and second derivatives — MEASURED,
NOT LANDED (docs/benchmarks.md, 2026-12-08): one of three full-suite runs with it in the models died with
a SIGSEGV in a TF runtime thread (tf_Compute, libtensorflow_cc), not reproduced in five isolated runs;
kept here, a drop-in for `tesla_tf.models.layers.InstanceNorm.call`, until that is understood.

Written with plain TF ops and left to autodiff, the norm took ~10 passes over its activation forward and
~14 backward, one kernel per op, and was where the float32 step lost most to PyTorch's fused GroupNorm
(docs/benchmarks.md). Here each derivative is a few small XLA kernels of two kinds: elementwise ones
(fused into one read of their inputs and one write) and spatial means of a tensor already in memory (XLA
on CPU runs a mean with a fused producer several times slower than the two apart, so they stay apart).
Nothing is left to TF's autodiff but the third derivative, which no caller takes.

Per sample b and channel c, over the n = h·w positions i, with ⟨·⟩ the mean over i:
  μ = ⟨x⟩,  r = (⟨(x − μ)²⟩ + ε)^(−1/2),  x̂ = (x − μ) r,  z = γ x̂ + β,  y = relu(z) (or z)
First derivative, for dy (dz = dy · [y > 0] with the ReLU, else dy):
  dx = γ r P(dz),  dγ = Σ_b n ⟨dz x̂⟩,  dβ = Σ_b n ⟨dz⟩,  with P(v) = v − ⟨v⟩ − x̂ ⟨v x̂⟩.
Second derivative: the gradient of S = Σ gx·dx + gγ·dγ + gβ·dβ with respect to dy, x and γ:
  ∂S/∂dz = γ r P(gx) + gγ x̂ + gβ                  (∂S/∂dy: the same through the ReLU's mask)
  ∂S/∂γ  = Σ_b n r ⟨gx P(dz)⟩
  ∂S/∂x  = r (P(a) − x̂ γ r ⟨gx P(dz)⟩),  a = gγ dz − γ r (gx ⟨dz x̂⟩ + ⟨gx x̂⟩ dz)
(x enters through x̂ and r: ∂x̂_j/∂x_i = r (δ_ij − 1/n − x̂_i x̂_j / n), ∂r/∂x_i = −r² x̂_i / n.)
Every formula was tested against autodiff of the plain formula to second order in float64 (to 1e-10).
"""

import tensorflow as tf

_XLA = dict(jit_compile=True, autograph=False, reduce_retracing=True)


@tf.function(**_XLA)
def _mean(t):
  """⟨t⟩ over h and w of [b, h, w, c], keepdims; accumulated in float32 for 16-bit inputs."""
  if t.dtype in (tf.bfloat16, tf.float16):
    return tf.cast(tf.reduce_mean(tf.cast(t, tf.float32), [1, 2], keepdims=True), t.dtype)
  return tf.reduce_mean(t, [1, 2], keepdims=True)


def _through_relu(t, positive):
  """t where the ReLU passed its input (`positive`, a boolean mask), else 0; t itself without a ReLU."""
  return t if positive is None else tf.where(positive, t, tf.zeros([], t.dtype))


def _xhat(x, mean, r):
  return (x - mean) * r


@tf.function(**_XLA)
def _squared_deviation(x, mean):
  return tf.square(x - mean)


@tf.function(**_XLA)
def _affine(x, mean, scale, beta, relu):
  """The output, and with the ReLU its boolean mask: what the derivatives keep (1 byte, not y's 4)."""
  z = (x - mean) * scale + beta
  return (tf.nn.relu(z), z > 0) if relu else (z, None)


@tf.function(**_XLA)
def _dz_and_dz_xhat(dy, positive, x, mean, r):
  dz = _through_relu(dy, positive)
  return dz, dz * _xhat(x, mean, r)


@tf.function(**_XLA)
def _dx(dz, x, mean, r, gamma, dz_mean, dz_xhat):
  return (r * gamma) * (dz - dz_mean - _xhat(x, mean, r) * dz_xhat)


@tf.function(**_XLA)
def _gx_xhat_and_gx_pdz(gx, dy, positive, x, mean, r, dz_mean, dz_xhat):
  xhat = _xhat(x, mean, r)
  return gx * xhat, gx * (_through_relu(dy, positive) - dz_mean - xhat * dz_xhat)


@tf.function(**_XLA)
def _a_and_a_xhat(gx, dy, positive, x, mean, r, gamma, ggamma, dz_xhat, gx_xhat):
  dz = _through_relu(dy, positive)
  a = ggamma * dz - (r * gamma) * (gx * dz_xhat + gx_xhat * dz)
  return a, a * _xhat(x, mean, r)


@tf.function(**_XLA)
def _d_dy(gx, positive, x, mean, r, gamma, ggamma, gbeta, gx_mean, gx_xhat):
  xhat = _xhat(x, mean, r)
  return _through_relu((r * gamma) * (gx - gx_mean - xhat * gx_xhat) + ggamma * xhat + gbeta, positive)


@tf.function(**_XLA)
def _d_x(a, x, mean, r, a_mean, a_xhat, gamma_r_gx_pdz):
  return r * (a - a_mean - _xhat(x, mean, r) * (a_xhat + gamma_r_gx_pdz))


def _channel_sum(t, n):
  """Σ over b of n·t for per-(b, c) t [b, 1, 1, c]: a per-channel [c] total over all positions."""
  return tf.reduce_sum(t, [0, 1, 2]) * n


def instance_norm(x, gamma, beta, epsilon, relu=False):
  """relu(γ (x − μ) / sqrt(σ² + ε) + β) (or without the relu), μ and σ² over h and w of each sample and
  channel; differentiable twice with hand-written derivatives (module docstring).

  Args:
    x: [b, h, w, c] activations.
    gamma, beta: [c] scale and offset, x's dtype.
    epsilon: float added to the biased variance.
    relu: also apply max(·, 0), fused into the same kernels.
  Returns:
    [b, h, w, c], x's dtype.
  """

  @tf.custom_gradient
  def norm(x, gamma, beta):
    n = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
    mean = _mean(x)
    r = tf.math.rsqrt(_mean(_squared_deviation(x, mean)) + epsilon)
    y, positive = _affine(x, mean, r * gamma, beta, relu)

    def first(dy):
      @tf.custom_gradient
      def backward(dy, x, gamma):
        dz, dz_xhat_full = _dz_and_dz_xhat(dy, positive, x, mean, r)
        dz_mean, dz_xhat = _mean(dz), _mean(dz_xhat_full)
        grads = (_dx(dz, x, mean, r, gamma, dz_mean, dz_xhat), _channel_sum(dz_xhat, n),
                 _channel_sum(dz_mean, n))

        def second(gx, ggamma, gbeta):
          gx_xhat_full, gx_pdz_full = _gx_xhat_and_gx_pdz(gx, dy, positive, x, mean, r, dz_mean, dz_xhat)
          gx_mean, gx_xhat, gx_pdz = _mean(gx), _mean(gx_xhat_full), _mean(gx_pdz_full)
          a, a_xhat_full = _a_and_a_xhat(gx, dy, positive, x, mean, r, gamma, ggamma, dz_xhat, gx_xhat)
          d_dy = _d_dy(gx, positive, x, mean, r, gamma, ggamma, gbeta, gx_mean, gx_xhat)
          d_x = _d_x(a, x, mean, r, _mean(a), _mean(a_xhat_full), gamma * r * gx_pdz)
          return d_dy, d_x, _channel_sum(r * gx_pdz, n)
        return grads, second
      return backward(dy, x, gamma)
    return y, first
  return norm(x, gamma, beta)

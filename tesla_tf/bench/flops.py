"""FLOPs of one trajectory-matching iteration of the ConvNet (models/convnet.py), and the machine's own
rates to hold them against (bench/speed.py).

Counted: convolutions and matrix products only, 1 multiply-add = 2 FLOPs (norms, pools, ReLU, bias adds
and the DSA are left out: they run no convolution or matmul). For batch b, conv l of the `depth` blocks
(3×3, C_in,l → C_out = width, output map H_l × W_l) and the classifier (F = width · (final map)²
features, K classes):

  C_l = 2·b·H_l·W_l·9·C_in,l·C_out      ΣC = Σ_l C_l      D = 2·b·F·K

H_0 × W_0 is the input size (a 28×28 input is padded by 3 and convolved 'valid' to 32×32); every block
average-pools by 2 after its conv. Per student step:

  S   = 3ΣC − C_0 + 3D       SGD step: forward (ΣC + D), dW of every layer (ΣC + D), dX of every layer
                             but conv 0 (ΣC − C_0 + D; the input needs no gradient)
  B_t = 4ΣC − C_0 + 4D       second backward of tesla's s = ⟨λ, g(θ, x)⟩ w.r.t. x: per layer 2 for the
                             dW op (w.r.t. its input a and its dy), 1 for the dX op (w.r.t. dy; layers
                             ≥ 1), 1 for the forward op (w.r.t. a; conv 0 too, the images need it)
  B_e = B_t + 2ΣC − C_0 + 2D = 6ΣC − 2C_0 + 6D
                             exact also w.r.t. θ: +1 for the forward op (w.r.t. W), +1 for the dX op
                             (w.r.t. W; layers ≥ 1)

A double-backward is S + B (it recomputes the step). One iteration with N student steps:

  tesla    = (N − 1)·S + N·(S + B_t)
  exact    = (N − 1)·S + N·(S + B_e)
  unrolled = N·S + (N − 1)·B_e + B_t

— pass 1 of tesla/exact stops one step short, the last step's double-backward is fused with it
(matching.py); with row chunks it runs all N steps and recomputes the last (+S). Unrolled's backward
through step i is exact's second backward, except at step 0: θ̂_0 = θ*_t is a constant, so TensorFlow
computes no gradient w.r.t. it and step 0 costs B_t, not B_e (N·(S + B_e) would overcount by
2ΣC − C_0 + 2D). Every count here equals the FLOPs of the conv and matmul ops TensorFlow 2.21 executes
(oneDNN's fused ops, after grappler) for each per-step function and whole iteration, 16×16×3 and
28×28×1 inputs, DSA and row chunks included (tests/test_bench.py): no gradient that nothing needs is
computed (grappler prunes them), and nothing beyond these terms runs.

The counts import nothing; `machine_rates` imports TensorFlow when called.
"""

import time

KERNEL = 3  # every conv of the ConvNet is 3×3


def layer_costs(image_shape, width, depth, num_classes, batch):
  """Forward FLOPs of each conv and of the classifier.

  Args:
    image_shape: (h, w, c) of the inputs.
    width: channels of every block.
    depth: number of blocks (models.convnet.default_depth for the default).
    num_classes: K.
    batch: b.
  Returns:
    ([C_0, ..., C_{depth−1}], D).
  """
  h, w, channels = image_shape
  if h == 28:  # padded by 3, then 'valid' (models/convnet.py)
    h, w = h + 6 - KERNEL + 1, w + 6 - KERNEL + 1
  convs = []
  for _ in range(depth):
    convs.append(2 * batch * h * w * KERNEL * KERNEL * channels * width)
    channels, h, w = width, h // 2, w // 2
  return convs, 2 * batch * h * w * width * num_classes


def step_flops(image_shape, width, depth, num_classes, batch):
  """FLOPs of the per-step functions of matching.py (see the module docstring).

  Returns:
    {"sgd": S, "second_backward_tesla": B_t, "second_backward_exact": B_e, "double_backward_tesla":
    S + B_t, "double_backward_exact": S + B_e}.
  """
  convs, dense = layer_costs(image_shape, width, depth, num_classes, batch)
  total, first = sum(convs), convs[0]
  sgd = 3 * total - first + 3 * dense
  tesla = 4 * total - first + 4 * dense
  exact = tesla + 2 * total - first + 2 * dense
  return {"sgd": sgd, "second_backward_tesla": tesla, "second_backward_exact": exact,
          "double_backward_tesla": sgd + tesla, "double_backward_exact": sgd + exact}


def _two_passes(second_backward):
  def flops(units, steps, fused_last_step):
    pass1 = steps - 1 if fused_last_step else steps
    return pass1 * units["sgd"] + steps * (units["sgd"] + units[second_backward])
  return flops


ITERATIONS = {
    "unrolled": lambda units, steps, fused_last_step: (
        steps * units["sgd"] + (steps - 1) * units["second_backward_exact"]
        + units["second_backward_tesla"]),
    "tesla": _two_passes("second_backward_tesla"),
    "exact": _two_passes("second_backward_exact"),
}


def iteration_flops(image_shape, width, depth, num_classes, batch, steps, mode, fused_last_step=True):
  """FLOPs of one `matching_gradients` call (one outer iteration) with N = `steps` student steps.

  Args:
    image_shape, width, depth, num_classes, batch: as in `layer_costs` (batch = batch_syn).
    steps: N.
    mode: a key of ITERATIONS ("unrolled", "tesla", "exact").
    fused_last_step: tesla/exact fuse the last step with pass 1 (False with row_chunks > 1).
  Returns:
    int FLOPs.
  """
  units = step_flops(image_shape, width, depth, num_classes, batch)
  return ITERATIONS[mode](units, steps, fused_last_step)


# -- the machine's yardsticks --------------------------------------------------------------------------

def _best_rate(fn, flops, runs):
  """GFLOP/s of fn's best of `runs` timed calls after one untimed warm-up (which traces)."""
  fn().numpy()
  best = float("inf")
  for _ in range(runs):
    t0 = time.perf_counter()
    fn().numpy()
    best = min(best, time.perf_counter() - t0)
  return flops / best / 1e9


def machine_rates(runs=5, conv_batch=100, gemm_n=4096):
  """This process's TensorFlow rates on a 3×3 conv 128 → 128 at 16×16 ('same') and an n×n matmul, in
  float32 and bfloat16, each the best of `runs` calls of a tf.function after one warm-up.

  Args:
    runs: timed calls per yardstick.
    conv_batch: batch of the conv (ConvNet-3's middle layer at batch_syn 100 by default).
    gemm_n: n of the n×n by n×n matmul.
  Returns:
    {"conv_gflops", "gemm_gflops", "conv_gflops_bf16", "gemm_gflops_bf16"} in GFLOP/s.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  conv_flops = 2 * conv_batch * 16 * 16 * KERNEL * KERNEL * 128 * 128
  gemm_flops = 2 * gemm_n ** 3
  rates = {}
  for dtype, suffix in ((tf.float32, ""), (tf.bfloat16, "_bf16")):
    def normal(shape, seed, dtype=dtype):
      return tf.cast(tf.random.stateless_normal(shape, [seed, 0]), dtype)
    images, kernel = normal([conv_batch, 16, 16, 128], 1), normal([KERNEL, KERNEL, 128, 128], 2)
    left, right = normal([gemm_n, gemm_n], 3), normal([gemm_n, gemm_n], 4)
    # One element back to the host: the call waits for the op, without copying its output.
    conv = tf.function(lambda x=images, k=kernel: tf.nn.conv2d(x, k, 1, "SAME")[0, 0, 0, 0])
    gemm = tf.function(lambda a=left, b=right: tf.matmul(a, b)[0, 0])
    rates["conv_gflops" + suffix] = _best_rate(conv, conv_flops, runs)
    rates["gemm_gflops" + suffix] = _best_rate(gemm, gemm_flops, runs)
  return rates

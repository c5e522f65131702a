"""Trajectory-matching gradients in three modes: unrolled (MTT), tesla (first-order) and exact (adjoint).

Paper symbols, mapped once (REFERENCE §0, §3a):
  θ*_t  = `start`, θ*_{t+M} = `target` (M = expert_epochs, t < max_start_epoch)
  X̃, Ỹ = `images` [n, h, w, c], `labels` [n, C] (probability rows; one-hot for hard labels)
  α     = `syn_lr` (learned)                N = syn_steps = `schedule.shape[0]`
  X̃_i  = images[schedule[i]] after the DSA of step i (`augment_params` row i)
  g_i   = ∇_θ CE(θ̂_i; X̃_i, Ỹ_i);  θ̂_{i+1} = θ̂_i − α g_i;  θ̂_0 = θ*_t
  L     = ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²

Modes:
  unrolled  keeps the graph of all N steps and differentiates L: exact, memory linear in N.
  tesla     TESLA's two passes: pass 1 runs the steps without a graph and caches θ̂_i; pass 2 recomputes
            each step and takes ∂L/∂X̃_i ≈ −α ∂⟨λ_N, g_i⟩/∂X̃_i with λ_N = ∂L/∂θ̂_N held fixed — every
            Hessian term through θ̂_i is dropped, so it equals unrolled only for N = 1.
  exact     the same two passes, pass 2 in reverse order carrying the adjoint
            λ_i = λ_{i+1} − α ∂⟨λ_{i+1}, g_i⟩/∂θ̂_i = (I − αH_i) λ_{i+1}: the unrolled gradient at tesla's
            memory, for one more output of the same double-backward.
The pass-2 cache is the N parameter vectors, the schedule and the augmentation parameters — never N
augmented batches. Peak activation memory in tesla/exact is one step's double-backward, whatever N.
The last step is not recomputed: pass 1 stops one step short and that step's double-backward, run on a
tape that also yields θ̂_N, L and λ_N, starts pass 2 — so tesla/exact cost unrolled plus N − 1 (not N)
extra forward/backward passes (on one device; with `replicas` every step is recomputed).
"""

import collections

import tensorflow as tf

from tesla_tf import augment
from tesla_tf import errors
from tesla_tf import models

MatchResult = collections.namedtuple("MatchResult", ["loss", "images_grad", "lr_grad", "labels_grad"])


def make_schedule(num_rows, syn_steps, batch_syn, seed):
  """Row indices of every student step: minibatches popped from random permutations of the rows.

  Each permutation gives num_rows // batch_syn full minibatches (a ragged remainder is skipped, keeping
  shapes static); a new permutation starts when one is used up.

  Args:
    num_rows: n, the number of synthetic images.
    syn_steps: N.
    batch_syn: rows per step (≤ n).
    seed: stateless seed [2].
  Returns:
    int32 [N, batch_syn].
  """
  per_perm = num_rows // batch_syn
  if per_perm < 1:
    raise errors.UsageError(f"--batch_syn={batch_syn} exceeds the number of synthetic images ({num_rows}).")
  num_perms = -(-syn_steps // per_perm)
  keys = tf.random.stateless_uniform([num_perms, num_rows], seed=seed)
  perms = tf.cast(tf.argsort(keys, axis=1), tf.int32)[:, :per_perm * batch_syn]
  return tf.reshape(perms, [num_perms * per_perm, batch_syn])[:syn_steps]


# -- row splitting: one step's minibatch on equal shares of its rows ---------------------------------

def share_of_rows(structure, index, parts):
  """Share `index` of `parts` contiguous equal shares of every batch-leading tensor in `structure`.

  Tensors of rank ≥ 1 have the minibatch on axis 0 and are sliced (a strided slice: its gradient is dense,
  zero outside the share); scalars (the DSA "family") and None pass unchanged. The row count must be
  divisible by `parts` (checked by the callers, which name their flag).
  """
  def share(t):
    if t is None or t.shape.rank == 0:
      return t
    shares = tf.reshape(t, [parts, t.shape[0] // parts] + t.shape[1:].as_list())
    return shares[index]
  return tf.nest.map_structure(share, structure)


class AllRows:
  """A step on its whole minibatch: `mean_of(fn)` is fn with `share` the identity."""
  fuses_last_step = True

  def mean_of(self, fn):
    return lambda *args: fn(*args, share=lambda structure: structure)


class RowChunks:
  """A step on `parts` equal chunks of its rows, one after another, averaged: the same outputs (each is
  affine in the mean over the rows, and instance norm keeps rows independent) at ~1/parts the memory."""
  fuses_last_step = False  # the fused last step needs the whole minibatch's g

  def __init__(self, parts):
    self.parts = parts

  def mean_of(self, fn):
    def run(*args):
      def chunk(k):
        return fn(*args, share=lambda structure: share_of_rows(structure, k, self.parts))

      def add_chunk(k, total):
        return k + 1, tf.nest.map_structure(tf.add, total, chunk(k))

      first = chunk(tf.constant(0))
      # One chunk's activations alive at a time: the loop (and so chunk 1) waits for chunk 0, as pass 2
      # waits for the fused last step, and runs its iterations one by one.
      with tf.control_dependencies(tf.nest.flatten(first)):
        k = tf.identity(tf.constant(1))
      _, total = tf.while_loop(lambda k, _: k < self.parts, add_chunk, (k, first), parallel_iterations=1)
      return tf.nest.map_structure(lambda t: t / self.parts, total)
    return run


# -- one student step --------------------------------------------------------------------------------

class _Matching:
  """One matching problem: the student's steps from θ*_t on the schedule's minibatches, and L."""

  def __init__(self, fmodel, start, target, images, labels, syn_lr, schedule, augment_params, learn_labels,
               rows):
    dtype = images.dtype
    self.fmodel, self.schedule, self.augment_params = fmodel, schedule, augment_params
    self.start, self.target = tf.cast(start, dtype), tf.cast(target, dtype)
    self.images, self.labels, self.syn_lr = images, tf.cast(labels, dtype), tf.cast(syn_lr, dtype)
    self.start_dist = tf.reduce_sum(tf.square(self.start - self.target))
    self.learn_labels, self.rows = learn_labels, rows

  def batch(self, i):
    """(X̃ rows, Ỹ rows, DSA parameters) of step i."""
    idx = self.schedule[i]
    aug = None if self.augment_params is None else tf.nest.map_structure(lambda p: p[i], self.augment_params)
    return tf.gather(self.images, idx), tf.gather(self.labels, idx), aug

  def gradient(self, theta, x, y, aug, share=lambda structure: structure):
    """g = ∇_θ CE(θ; DSA(x), y) on this share of the rows, recorded by any enclosing tape."""
    x, y, aug = share((x, y, aug))
    if aug is not None:
      x = augment.apply(x, aug)
    with tf.GradientTape() as tape:
      tape.watch(theta)
      loss = models.soft_cross_entropy(y, self.fmodel.apply(theta, x))
    return tape.gradient(loss, theta)

  def loss_and_adjoint(self, theta_n):
    """L and λ_N = ∂L/∂θ̂_N."""
    return (tf.reduce_sum(tf.square(theta_n - self.target)) / self.start_dist,
            2.0 * (theta_n - self.target) / self.start_dist)

  def sgd_step(self, theta, x, y, aug, share):
    """θ − α·g."""
    return theta - self.syn_lr * self.gradient(theta, x, y, aug, share)

  def double_backward(self, theta, x, y, aug, adj, wrt_theta, share):
    """s = ⟨λ, g(θ, x, y)⟩ and its gradients w.r.t. x (and θ when `wrt_theta`, y if labels are learned).

    adj=None is the last step N − 1 fused with pass 1: g is computed once, θ̂_N = θ − αg gives L and
    λ_N (held fixed, outside the tape) halfway through, and that step is not recomputed. Returns
    (s, gradients), and (s, gradients, L, λ_N) when fused.
    """
    fused = adj is None
    with tf.GradientTape() as tape:
      tape.watch([theta, x, y])
      g = self.gradient(theta, x, y, aug, share)
      with tape.stop_recording():
        if fused:
          loss, adj = self.loss_and_adjoint(theta - self.syn_lr * g)
        else:
          # λ enters only after g is complete: the backward's ops that need nothing but λ (each layer's
          # input convolved with λ_W, the bias and β cotangents broadcast to full size) would otherwise
          # run first and hold their outputs through the forward and first backward (−0.1 to −0.2 GB
          # TF peak, docs/benchmarks.md).
          with tf.control_dependencies([g]):
            adj = tf.identity(adj)
      s = tf.reduce_sum(adj * g)
    sources = [x] + ([theta] if wrt_theta else []) + ([y] if self.learn_labels else [])
    grads = tape.gradient(s, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return (s, grads, loss, adj) if fused else (s, grads)


# -- the three modes -----------------------------------------------------------------------------------

def _unrolled(m, jit_compile=False):
  """MTT: one tape over all N steps (a Python loop, so N must be static), then a single backward pass."""
  del jit_compile  # not offered (check_options)
  with tf.GradientTape() as tape:
    tape.watch([m.images, m.labels, m.syn_lr])
    theta = m.start
    for i in range(m.schedule.shape[0]):
      theta = theta - m.syn_lr * m.gradient(theta, *m.batch(i))
    loss = tf.reduce_sum(tf.square(theta - m.target)) / m.start_dist
  images_grad, lr_grad, labels_grad = tape.gradient(
      loss, [m.images, m.syn_lr, m.labels], unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return MatchResult(loss, tf.convert_to_tensor(images_grad), lr_grad,
                     tf.convert_to_tensor(labels_grad) if m.learn_labels else None)


def _two_passes(m, carry_adjoint, jit_compile=False):
  """tesla (carry_adjoint=False) and exact (True): pass 1 caches θ̂_i without a graph, pass 2 recomputes
  each step's double-backward in reverse order, holding λ_N fixed (tesla) or carrying λ_i (exact)."""
  sgd_step = m.sgd_step
  double_backward = lambda theta, x, y, aug, adj, share: m.double_backward(  # noqa: E731
      theta, x, y, aug, adj, carry_adjoint, share)
  if jit_compile:
    sgd_step = tf.function(sgd_step, jit_compile=True, autograph=False)
    double_backward = tf.function(double_backward, jit_compile=True, autograph=False)
  sgd_step, double_backward = m.rows.mean_of(sgd_step), m.rows.mean_of(double_backward)
  num_steps = tf.shape(m.schedule)[0]
  fuse_last = m.rows.fuses_last_step  # else step N − 1 runs in pass 1 and is recomputed like the others

  # Pass 1: the student's steps, no graph kept; cache θ̂_i.
  def forward(i, theta, cache):
    cache = cache.write(i, theta)
    return i + 1, sgd_step(theta, *m.batch(i)), cache

  # parallel_iterations=1 everywhere: the default (10) lets the executor start up to 10 steps' forward
  # and double-backward at once wherever they do not depend on each other (all of tesla's pass 2, the
  # recomputation part of exact's), which makes peak memory grow with N up to 10 steps' worth — measured
  # 3.7 GB TF-allocator peak at N = 10 instead of 1.3 GB (docs/benchmarks.md).
  cache = tf.TensorArray(m.images.dtype, size=num_steps, element_shape=m.start.shape)
  pass1_steps = num_steps - 1 if fuse_last else num_steps
  _, theta, cache = tf.while_loop(lambda i, *_: i < pass1_steps, forward,
                                  (tf.constant(0), m.start, cache), parallel_iterations=1)

  # Pass 2: each step's double-backward, in reverse order. The image (and label) gradient rows of every
  # step are kept, N·batch_syn rows whatever the set's size, and summed into the set's shape once at the
  # end: accumulating a dense [n, ...] gradient step by step held two of them at a time (each
  # `tensor_scatter_nd_add` writes a new buffer) plus a zeros constant, and the segment sum is
  # deterministic on a GPU where the scatter runs through the host under op determinism (docs/scaling.md).
  def rows_array(like):
    return tf.TensorArray(like.dtype, size=num_steps,
                          element_shape=[m.schedule.shape[1]] + like.shape[1:].as_list())

  def accumulate(i, s, grads, adj, image_rows, lr_grad, label_rows):
    image_rows = image_rows.write(i, -m.syn_lr * grads[0])
    if m.learn_labels:
      label_rows = label_rows.write(i, -m.syn_lr * grads[-1])
    if carry_adjoint:
      adj = adj - m.syn_lr * grads[1]
    return adj, image_rows, lr_grad - s, label_rows

  def backward(i, adj, image_rows, lr_grad, label_rows):
    s, grads = double_backward(cache.read(i), *m.batch(i), adj)
    return (i - 1,) + accumulate(i, s, grads, adj, image_rows, lr_grad, label_rows)

  rows = (rows_array(m.images), tf.zeros([], m.images.dtype), rows_array(m.labels))
  last = num_steps - 1
  if fuse_last:
    s, grads, loss, adjoint = double_backward(theta, *m.batch(last), None)
    adjoint, *rows = accumulate(last, s, grads, adjoint, *rows)
    # Gate the loop's tensors on the whole fused step: TF lowers the while loop so that each variable
    # enters on its own, and the next step's recomputation (it needs only i until it reaches λ) would
    # otherwise run beside this double-backward — two steps' activations at once (+0.6 GB at N = 2).
    with tf.control_dependencies(grads):
      state = (tf.identity(last - 1), tf.identity(adjoint), rows[0], tf.identity(rows[1]), rows[2])
  else:
    loss, adjoint = m.loss_and_adjoint(theta)
    state = (last, adjoint) + rows
  _, _, image_rows, lr_grad, label_rows = tf.while_loop(
      lambda i, *_: i >= 0, backward, state, parallel_iterations=1)
  positions = tf.reshape(m.schedule, [-1])

  def summed(rows_, like):
    flat = tf.reshape(rows_.stack(), [-1] + like.shape[1:].as_list())
    return tf.math.unsorted_segment_sum(flat, positions, tf.shape(like)[0])
  return MatchResult(loss, summed(image_rows, m.images), lr_grad,
                     summed(label_rows, m.labels) if m.learn_labels else None)


MODES = {
    "unrolled": _unrolled,
    "tesla": lambda m, jit_compile=False: _two_passes(m, carry_adjoint=False, jit_compile=jit_compile),
    "exact": lambda m, jit_compile=False: _two_passes(m, carry_adjoint=True, jit_compile=jit_compile),
}


def check_options(mode, batch_syn, replicated=False, row_chunks=1):
  """Raises an error naming the flag unless `matching_gradients` can run this combination."""
  if mode not in MODES:
    raise errors.UsageError(f"--mode must be one of {tuple(MODES)}, got {mode!r}.")
  if replicated and mode == "unrolled":
    raise errors.UsageError("--mode=unrolled does not run under --strategy=mirrored; use tesla or exact.")
  if row_chunks != 1 and (mode == "unrolled" or replicated):
    raise errors.UsageError(f"--row_chunks={row_chunks} needs --mode=tesla or exact on one device "
                            f"(--strategy=none); use --row_chunks=1.")
  if row_chunks < 1 or batch_syn % row_chunks:
    raise errors.UsageError(f"--row_chunks={row_chunks} must be ≥ 1 and divide --batch_syn={batch_syn}.")


# Traced as written, also inside a caller's AutoGraph-converted tf.function: the loops are tf.while_loop
# already, and converting this module's source took seconds of every process's first trace.
@tf.autograph.experimental.do_not_convert
def matching_gradients(fmodel, start, target, images, labels, syn_lr, schedule, *, mode, augment_params=None,
                       learn_labels=False, jit_compile=False, replicas=None, row_chunks=1):
  """The matching loss L and its gradients w.r.t. the synthetic images, α and (optionally) the labels.

  Args:
    fmodel: a FlatModel (models/flat.py).
    start: θ*_t [P].  target: θ*_{t+M} [P].
    images: X̃ [n, h, w, c].  labels: Ỹ [n, C] probability rows.
    syn_lr: α, the student's step size, scalar.
    schedule: int32 [N, batch_syn] row indices of each step (`make_schedule`).
    mode: a key of MODES: "unrolled", "tesla" or "exact".
    augment_params: DSA parameters stacked on [N] (`augment.sample_steps`), or None for no DSA.
    learn_labels: also return ∂L/∂Ỹ.
    jit_compile: tesla/exact only — compile each step (pass 1's SGD step, pass 2's double-backward) with
      XLA. On TF 2.21 CPU it lowers peak RSS by ~0.5 GB for ConvNet-3 at batch 100 but is no faster (exact
      ~13 % slower, docs/benchmarks.md); off by default.
    replicas: tesla/exact only — a `replicas.Replicas` to split every step's minibatch over the devices
      of a tf.distribute strategy (same result as one device); None runs on the current device.
    row_chunks: tesla/exact only — run every step of both passes on this many equal chunks of its
      minibatch, one after another, and average (`RowChunks`). batch_syn must be divisible by it; not
      combined with `replicas`.
  Returns:
    MatchResult(loss scalar, images_grad [n, h, w, c], lr_grad scalar, labels_grad [n, C] or None).
  """
  check_options(mode, schedule.shape[1], replicas is not None, row_chunks)
  rows = replicas or (RowChunks(row_chunks) if row_chunks > 1 else AllRows())
  problem = _Matching(fmodel, start, target, images, labels, syn_lr, schedule, augment_params, learn_labels,
                      rows)
  return MODES[mode](problem, jit_compile=jit_compile)


def as_public_tesla(result):
  """`result` with the image gradient halved as the public TESLA code has it (it multiplies a tuple by 2,
  repeating the tuple instead of doubling the gradient). For comparisons with that code only."""
  return result._replace(images_grad=0.5 * result.images_grad)

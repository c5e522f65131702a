"""Trajectory-matching gradients in three modes: unrolled (MTT), tesla (first-order) and exact (adjoint).

Paper symbols, mapped once (REFERENCE §0, §3a):
  θ*_t  = `start`, θ*_{t+M} = `target` (M = expert_epochs, t < max_start_epoch)
  X̃, Ỹ = `images` [n, h, w, c], `labels` [n, C] (probability rows; one-hot for hard labels)
  α     = `lr` (syn_lr, learned)           N = syn_steps = `schedule.shape[0]`
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

MODES = ("unrolled", "tesla", "exact")

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


def check_options(mode, batch_syn, replicated=False, row_chunks=1):
  """Raises an error naming the flag unless `matching_gradients` can run this combination."""
  if mode not in MODES:
    raise errors.UsageError(f"--mode must be one of {MODES}, got {mode!r}.")
  if replicated and mode == "unrolled":
    raise errors.UsageError("--mode=unrolled does not run under --strategy=mirrored; use tesla or exact.")
  if row_chunks != 1 and (mode == "unrolled" or replicated):
    raise errors.UsageError(f"--row_chunks={row_chunks} needs --mode=tesla or exact on one device "
                              f"(--strategy=none); use --row_chunks=1.")
  if row_chunks < 1 or batch_syn % row_chunks:
    raise errors.UsageError(f"--row_chunks={row_chunks} must be ≥ 1 and divide --batch_syn={batch_syn}.")


def matching_gradients(fmodel, start, target, images, labels, lr, schedule, *, mode, augment_params=None,
                       learn_labels=False, jit_compile=False, replicas=None, row_chunks=1):
  """The matching loss L and its gradients w.r.t. the synthetic images, α and (optionally) the labels.

  Args:
    fmodel: a FlatModel (models/flat.py).
    start: θ*_t [P].  target: θ*_{t+M} [P].
    images: X̃ [n, h, w, c].  labels: Ỹ [n, C] probability rows.
    lr: α, scalar.
    schedule: int32 [N, batch_syn] row indices of each step (`make_schedule`).
    mode: "unrolled", "tesla" or "exact".
    augment_params: DSA parameters stacked on [N] (`augment.sample_steps`), or None for no DSA.
    learn_labels: also return ∂L/∂Ỹ.
    jit_compile: tesla/exact only — compile each step (pass 1's SGD step, pass 2's double-backward) with
      XLA. On TF 2.21 CPU it lowers peak RSS by ~0.5 GB for ConvNet-3 at batch 100 but is no faster (exact
      ~13 % slower, docs/benchmarks.md); off by default.
    replicas: tesla/exact only — a `replicas.Replicas` to split every step's minibatch over the devices
      of a tf.distribute strategy (same result as one device); None runs on the current device.
    row_chunks: tesla/exact only — run every step of both passes on this many equal chunks of its
      minibatch, one after another, and average: the same gradients (the loss is a mean over rows, and
      instance norm keeps rows independent) at about 1/row_chunks of the activation memory. batch_syn must
      be divisible by it; not combined with `replicas`.
  Returns:
    MatchResult(loss scalar, images_grad [n, h, w, c], lr_grad scalar, labels_grad [n, C] or None).
  """
  check_options(mode, schedule.shape[1], replicas is not None, row_chunks)
  dtype = images.dtype
  start, target = tf.cast(start, dtype), tf.cast(target, dtype)
  labels, lr = tf.cast(labels, dtype), tf.cast(lr, dtype)
  start_dist = tf.reduce_sum(tf.square(start - target))

  def batch(i):
    idx = schedule[i]
    aug = None if augment_params is None else tf.nest.map_structure(lambda p: p[i], augment_params)
    return idx, tf.gather(images, idx), tf.gather(labels, idx), aug

  def step_gradient(theta, x, y, aug, chunk=None):
    """g = ∇_θ CE(θ; DSA(x), y), recorded by any enclosing tape (on this replica's rows, if replicated;
    on rows chunk of row_chunks, if given)."""
    if replicas is not None:
      x, y, aug = replicas.local_rows(x, y, aug)
    if chunk is not None:
      x, y, aug = share_of_rows((x, y, aug), chunk, row_chunks)
    if aug is not None:
      x = augment.apply(x, aug)
    with tf.GradientTape() as tape:
      tape.watch(theta)
      loss = models.soft_cross_entropy(y, fmodel.apply(theta, x))
    return tape.gradient(loss, theta)

  if mode == "unrolled":
    return _unrolled(start, target, images, labels, lr, schedule, start_dist, batch, step_gradient,
                     learn_labels)

  exact = mode == "exact"
  num_steps = tf.shape(schedule)[0]

  def loss_and_adjoint(theta_n):
    """L and λ_N = ∂L/∂θ̂_N."""
    return (tf.reduce_sum(tf.square(theta_n - target)) / start_dist,
            2.0 * (theta_n - target) / start_dist)

  def sgd_step(theta, x, y, aug, chunk=None):
    return theta - lr * step_gradient(theta, x, y, aug, chunk)

  def double_backward(theta, x, y, aug, adj=None, chunk=None):
    """s = ⟨λ, g(θ, x, y)⟩ and its gradients w.r.t. x (and θ in exact mode, y if labels are learned).

    adj=None is the last step N − 1 fused with pass 1: g is computed once, θ̂_N = θ − αg gives L and
    λ_N (held fixed, outside the tape) halfway through, and that step is not recomputed. Returns
    (s, gradients), and (s, gradients, L, λ_N) when fused.
    """
    fused = adj is None
    with tf.GradientTape() as tape:
      tape.watch([theta, x, y])
      g = step_gradient(theta, x, y, aug, chunk)
      with tape.stop_recording():
        if fused:
          loss, adj = loss_and_adjoint(theta - lr * g)
        else:
          # λ enters only after g is complete: the backward's ops that need nothing but λ (each layer's
          # input convolved with λ_W, the bias and β cotangents broadcast to full size) would otherwise
          # run first and hold their outputs through the forward and first backward (−0.1 to −0.2 GB
          # TF peak, docs/benchmarks.md).
          with tf.control_dependencies([g]):
            adj = tf.identity(adj)
      s = tf.reduce_sum(adj * g)
    sources = [x] + ([theta] if exact else []) + ([y] if learn_labels else [])
    grads = tape.gradient(s, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return (s, grads, loss, adj) if fused else (s, grads)

  if jit_compile:
    sgd_step = tf.function(sgd_step, jit_compile=True)
    double_backward = tf.function(double_backward, jit_compile=True)
  if replicas is not None:  # each replica on its share of the rows; outputs averaged (replicas.py)
    sgd_step, double_backward = replicas.mean_of(sgd_step), replicas.mean_of(double_backward)
  if row_chunks > 1:
    sgd_step, double_backward = _chunk_mean(sgd_step, row_chunks), _chunk_mean(double_backward, row_chunks)
  # The fused last step needs the full minibatch's g before its double-backward; a replica or a chunk
  # sees only its share, so then step N − 1 runs in pass 1 and is recomputed in pass 2 like the others.
  fuse_last = replicas is None and row_chunks == 1

  # Pass 1: the student's steps, no graph kept; cache θ̂_i.
  def forward(i, theta, cache):
    _, x, y, aug = batch(i)
    cache = cache.write(i, theta)
    return i + 1, sgd_step(theta, x, y, aug), cache

  # parallel_iterations=1 everywhere: the default (10) lets the executor start up to 10 steps' forward
  # and double-backward at once wherever they do not depend on each other (all of tesla's pass 2, the
  # recomputation part of exact's), which makes peak memory grow with N up to 10 steps' worth — measured
  # 3.7 GB TF-allocator peak at N = 10 instead of 1.3 GB (docs/benchmarks.md).
  cache = tf.TensorArray(dtype, size=num_steps, element_shape=start.shape)
  pass1_steps = num_steps - 1 if fuse_last else num_steps
  _, theta, cache = tf.while_loop(lambda i, *_: i < pass1_steps, forward,
                                  (tf.constant(0), start, cache), parallel_iterations=1)

  # Pass 2: recompute each step's double-backward; in exact mode, in reverse order, carrying λ.
  def accumulate(i, s, grads, adj, images_grad, lr_grad, labels_grad):
    idx = schedule[i]
    images_grad = tf.tensor_scatter_nd_add(images_grad, idx[:, None], -lr * grads[0])
    if learn_labels:
      labels_grad = tf.tensor_scatter_nd_add(labels_grad, idx[:, None], -lr * grads[-1])
    if exact:
      adj = adj - lr * grads[1]
    return adj, images_grad, lr_grad - s, labels_grad

  def backward(i, adj, images_grad, lr_grad, labels_grad):
    _, x, y, aug = batch(i)
    s, grads = double_backward(cache.read(i), x, y, aug, adj)
    return (i - 1,) + accumulate(i, s, grads, adj, images_grad, lr_grad, labels_grad)

  state = (tf.zeros_like(images), tf.zeros([], dtype), tf.zeros_like(labels))
  last = num_steps - 1
  if fuse_last:
    _, x, y, aug = batch(last)
    s, grads, loss, adjoint = double_backward(theta, x, y, aug)
    state = (last - 1,) + accumulate(last, s, grads, adjoint, *state)
    # Gate every loop variable on the whole fused step: TF lowers the while loop so that each variable
    # enters on its own, and the next step's recomputation (it needs only i until it reaches λ) would
    # otherwise run beside this double-backward — two steps' activations at once (+0.6 GB at N = 2).
    with tf.control_dependencies(grads):
      state = tuple(tf.identity(t) for t in state)
  else:
    loss, adjoint = loss_and_adjoint(theta)
    state = (last, adjoint) + state
  _, _, images_grad, lr_grad, labels_grad = tf.while_loop(
      lambda i, *_: i >= 0, backward, state, parallel_iterations=1)
  return MatchResult(loss, images_grad, lr_grad, labels_grad if learn_labels else None)


def _chunk_mean(fn, row_chunks):
  """fn(*args, chunk=k) for k = 0 … row_chunks − 1, one after another, averaged (every output is affine
  in the mean over the minibatch rows, so the average is fn on all rows)."""
  def run(*args):
    def add_chunk(k, total):
      return k + 1, tf.nest.map_structure(tf.add, total, fn(*args, chunk=k))

    first = fn(*args, chunk=tf.constant(0))
    # One chunk's activations alive at a time: the loop (and so chunk 1) waits for chunk 0, as pass 2
    # waits for the fused last step, and runs its iterations one by one.
    with tf.control_dependencies(tf.nest.flatten(first)):
      k = tf.identity(tf.constant(1))
    _, total = tf.while_loop(lambda k, _: k < row_chunks, add_chunk, (k, first), parallel_iterations=1)
    return tf.nest.map_structure(lambda t: t / row_chunks, total)
  return run


def _unrolled(start, target, images, labels, lr, schedule, start_dist, batch, step_gradient, learn_labels):
  """MTT: one tape over all N steps (a Python loop, so N must be static), then a single backward pass."""
  with tf.GradientTape() as tape:
    tape.watch([images, labels, lr])
    theta = start
    for i in range(schedule.shape[0]):
      _, x, y, aug = batch(i)
      theta = theta - lr * step_gradient(theta, x, y, aug)
    loss = tf.reduce_sum(tf.square(theta - target)) / start_dist
  images_grad, lr_grad, labels_grad = tape.gradient(
      loss, [images, lr, labels], unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return MatchResult(loss, tf.convert_to_tensor(images_grad), lr_grad,
                     tf.convert_to_tensor(labels_grad) if learn_labels else None)


def as_public_tesla(result):
  """`result` with the image gradient halved as the public TESLA code has it (it multiplies a tuple by 2,
  repeating the tuple instead of doubling the gradient). For comparisons with that code only."""
  return result._replace(images_grad=0.5 * result.images_grad)

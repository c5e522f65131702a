"""Matching gradients on several devices: each student step's minibatch split over MirroredStrategy replicas.

`matching.matching_gradients(..., replicas=Replicas(strategy))` keeps its two passes and their
tf.while_loops on the host (the cross-replica context) and hands the two row-wise computations of every
step — pass 1's SGD step θ − α·g and pass 2's double-backward (s = ⟨λ, g⟩ and its gradients) — to
`Replicas.mean_of`, which runs them on every replica with `strategy.run` and averages the results.
Inside, `Replicas.share` gives replica r its contiguous share r of the minibatch rows (images,
labels and the per-sample DSA parameters alike; batch_syn must be divisible by the number of replicas).

Why the average is the single-device result: g is the gradient of a mean over the minibatch rows, and
with equal shares that mean is the mean of the R share means. Everything a step returns is affine in
that loss (θ − α·g, s, ∂s/∂θ̂, ∂s/∂X̃, ∂s/∂Ỹ), so it is the mean over replicas of the same quantity
computed on one share: the all-reduced parameter gradient, s = Σ_r s_r with s_r = ⟨λ, g_r⟩ / R, the
θ-side adjoint Σ_r ∂s_r/∂θ̂ (so λ stays one value for all replicas), and image/label gradients whose
rows are disjoint per replica (a replica's gradient is zero outside its share).

Why the reduction is not an all-reduce inside one `strategy.run` around the whole matching call:
MirroredStrategy all-reduces through `merge_call`, which TF refuses inside a tf.while_loop body
("merge_call called while defining a new graph or a tf.function"), and the loops are what keeps
tesla/exact at constant memory in N. A `strategy.run` per step inside the loop body has no such limit.
"""

import tensorflow as tf

from tesla_tf import errors
from tesla_tf.distill import matching

STRATEGIES = ("none", "mirrored")


class Replicas:
  """Runs row-wise matching computations on the replicas of a tf.distribute strategy (a row splitter
  like matching.AllRows and matching.RowChunks)."""
  fuses_last_step = False  # a replica sees only its share of the last step's g

  def __init__(self, strategy):
    self.strategy = strategy
    self.num_replicas = strategy.num_replicas_in_sync

  def check_batch(self, batch_syn):
    """Raises a ValueError naming --batch_syn unless it splits into equal shares, one per replica."""
    if batch_syn % self.num_replicas:
      raise errors.UsageError(f"--batch_syn={batch_syn} (rows per student step) must be divisible by the "
                       f"{self.num_replicas} replicas of --strategy=mirrored; choose a multiple of "
                       f"{self.num_replicas}.")

  def share(self, structure):
    """This replica's contiguous share of every batch-leading tensor (`matching.share_of_rows`)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync != self.num_replicas:
      raise RuntimeError("Replicas.share must run inside a function given to Replicas.mean_of.")
    self.check_batch(tf.nest.flatten(structure)[0].shape[0])
    return matching.share_of_rows(structure, context.replica_id_in_sync_group, self.num_replicas)

  def mean_of(self, fn):
    """fn(*args, share=self.share) run on every replica (its args given to each unchanged), every output
    averaged over the replicas. fn must be affine in a mean over the minibatch rows."""
    def run(*args):
      # A plain Python callable: strategy.run clones a tf.function argument (jit_compile included) over
      # all replicas at once; through a lambda each replica calls fn (compiled or not) on its own device.
      outputs = self.strategy.run(lambda *a: fn(*a, share=self.share), args)
      if self.num_replicas == 1:
        return outputs
      return tf.nest.map_structure(
          lambda v: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None), outputs)
    return run


def devices():
  """The devices of --strategy=mirrored: every local GPU, or every logical CPU device without a GPU."""
  gpus = tf.config.list_logical_devices("GPU")
  return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def build(name, batch_syn):
  """None for --strategy=none; a Replicas over `devices()` for "mirrored" (batch_syn checked)."""
  if name not in STRATEGIES:
    raise errors.UsageError(f"--strategy must be one of {STRATEGIES}, got {name!r}.")
  if name == "none":
    return None
  replicas = Replicas(tf.distribute.MirroredStrategy(devices()))
  replicas.check_batch(batch_syn)
  return replicas

"""Training one expert on several workers: tf.distribute.MultiWorkerMirroredStrategy from TF_CONFIG.

`experts.train_experts(ExpertConfig(strategy="multi_worker", ...))` runs the same call on every worker of
the TF_CONFIG cluster; this module holds what that needs: the strategy (created before any other TF op),
who the chief is (the only writer of the store), how the input is sharded and how a lost worker is
reported. The training step itself (experts.TrainStep) is the project's own `strategy.run` loop: Keras 3
`fit` does not run under this strategy (keras-team/keras#20585), and nothing here patches Keras.
"""

import contextlib
import json
import os

import tensorflow as tf

from tesla_tf import errors


class StrategyError(errors.UsageError):
  """The distribution strategy cannot be set up (missing TF_CONFIG, TF already running...)."""


_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')


def _single_process():
  return tf.distribute.get_strategy()


def _multi_worker():
  """MultiWorkerMirroredStrategy over the cluster in TF_CONFIG; must run before any other TF op."""
  text = os.environ.get("TF_CONFIG")
  if not text:
    raise StrategyError("--strategy=multi_worker reads the cluster from the TF_CONFIG environment "
                        "variable, which is not set. Set it on every worker, with that worker's task "
                        f"index, e.g. TF_CONFIG='{_TF_CONFIG_EXAMPLE}'.")
  try:
    tf_config = json.loads(text)
  except json.JSONDecodeError as e:
    raise StrategyError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {_TF_CONFIG_EXAMPLE}.") from e
  if not isinstance(tf_config, dict) or not {"cluster", "task"} <= set(tf_config):
    raise StrategyError(f"TF_CONFIG needs a 'cluster' and a 'task', e.g. {_TF_CONFIG_EXAMPLE}; got {text}.")
  try:
    return tf.distribute.MultiWorkerMirroredStrategy()
  except RuntimeError as e:
    raise StrategyError(
        f"MultiWorkerMirroredStrategy could not be created ({e}). TensorFlow sets up collective ops only "
        "before its first op runs: call train_experts with strategy='multi_worker' first thing in a fresh "
        "process, as tools/train_experts.py does.") from e


# ExpertConfig.strategy (--strategy) → a function returning the tf.distribute strategy.
STRATEGIES = {"none": _single_process, "multi_worker": _multi_worker}


def is_chief(strategy):
  """True in the one process that writes: the "chief" task, else worker 0, else a lone process."""
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  return (resolver.task_type == "worker" and resolver.task_id == 0
          and "chief" not in resolver.cluster_spec().jobs)


def from_chief(strategy, values):
  """The chief's int list `values`, on every worker: an all-reduce to which only replica 0 contributes."""
  if strategy.num_replicas_in_sync == 1:
    return list(values)
  mine = tf.constant([int(v) for v in values], tf.int64)

  def contribution():
    first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
    return mine * tf.cast(first, tf.int64)
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)
  return [int(v) for v in total.numpy()]


@contextlib.contextmanager
def lost_workers_reported(strategy):
  """Turns the collective abort that follows another worker's failure into a StrategyError saying so."""
  try:
    yield
  except tf.errors.UnavailableError as e:
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
      raise
    raise StrategyError(
        "Another worker of the TF_CONFIG cluster stopped or cannot be reached, so this one stopped too "
        f"({' '.join(e.message.split())[:300]}). See that worker's log for its error. No unfinished "
        "expert was written: rerun the same command on every worker to resume.") from e


def sharded_by_data(ds):
  """`ds` with auto-shard policy DATA, for the multi-worker strategy (no effect in a single process).

  Every worker then runs the whole pipeline with the same seeds, each global batch of batch_size is split
  into per-replica slices and each worker keeps its own: disjoint shares, the same number of steps on every
  worker (a worker with one step more would wait forever in the gradient all-reduce), and the very batches
  a single process would train on. FILE sharding (the AUTO default on file-backed TFDS data) gives workers
  unequal file counts and so unequal steps; sharding before the shuffle changes the batches. The price,
  every worker preprocessing and augmenting the whole global batch, is small: on CPU the input pipeline
  runs ~100x faster than the training step (docs/experts_benchmark.md).
  """
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return ds.with_options(options)

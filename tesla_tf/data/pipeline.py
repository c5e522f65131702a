"""tf.data pipelines from (uint8 image, label) datasets to model-space batches.

Train: shuffle (seeded, reshuffled every epoch) → [repeat] → batch (drop remainder: static shapes) →
preprocess (normalise or ZCA, on whole batches) → DSA with one stateless seed per batch →
[tf.data service] → prefetch. Eval: batch (remainder kept) → preprocess → prefetch.
Arrays held in memory skip the shuffle buffer: each epoch is one seeded permutation of the row indices,
and whole batches of rows are gathered, so an element of the source is a batch, not an example — what
the tf.data service splits in "distributed_epoch" mode (a request per example cost 5–10× the time,
docs/experts_benchmark.md).

Augmentation seeds come from `tf.data.Dataset.random(seed)`, re-randomised each epoch: two pipelines
built with the same seed yield the same batches epoch after epoch, and no two epochs share seeds.
"""

import numpy as np
import tensorflow as tf

from tesla_tf import augment
from tesla_tf.data import service

_MAX_SHUFFLE_BUFFER = 60_000
_DEFAULT_SHUFFLE_BUFFER = 10_000


def _shuffle_buffer(ds, shuffle_buffer):
  """The whole dataset when it is known to fit in _MAX_SHUFFLE_BUFFER, else a default buffer."""
  if shuffle_buffer is not None:
    return int(shuffle_buffer)
  n = int(ds.cardinality())
  return n if 0 < n <= _MAX_SHUFFLE_BUFFER else _DEFAULT_SHUFFLE_BUFFER


def _preprocess_fn(preprocessor):
  return lambda x, y: (preprocessor.apply(x), tf.cast(y, tf.int32))


def _gathered_batches(arrays, batch_size, seed, repeat):
  """Batches of rows of in-memory (images, labels), each epoch a permutation of the rows cut into
  n // batch_size batches of row indices, each gathered.

  repeat: the source is the global batch index k (splittable: the tf.data service hands each worker
  batch indices), epoch k // per_epoch permuted by the stateless seed (seed, epoch). Once: one epoch
  whose permutation seed is drawn anew for every iteration of the dataset (a new epoch each time).
  """
  images, labels = (tf.convert_to_tensor(a) for a in arrays)  # tensors: captured, not copied
  n = int(labels.shape[0])
  per_epoch = n // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size={batch_size} exceeds the {n} examples.")

  def rows(epoch_seed):
    return tf.reshape(tf.random.experimental.stateless_shuffle(tf.range(n), seed=epoch_seed)
                      [:per_epoch * batch_size], [per_epoch, batch_size])

  if repeat:
    # Each batch index is a split the dispatcher may hand to any worker, so a batch's rows follow from
    # (seed, k) alone: the epoch's permutation is recomputed per batch (1.4 ms at n = 55,000 on a
    # 2-core Xeon, against a 0.3-0.6 s expert step at width 128), not kept between elements.
    batch_rows = tf.data.Dataset.range(2 ** 62).map(
        lambda k: rows(tf.stack([tf.constant(seed, tf.int64), k // per_epoch]))[k % per_epoch],
        num_parallel_calls=tf.data.AUTOTUNE)
  else:
    epoch_seed = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2).take(1)
    batch_rows = epoch_seed.flat_map(lambda s: tf.data.Dataset.from_tensor_slices(rows(s)))
  return batch_rows.map(lambda r: (tf.gather(images, r), tf.gather(labels, r)),
                        num_parallel_calls=tf.data.AUTOTUNE)


def train_pipeline(ds, preprocessor, batch_size, *, seed, dsa_strategy=augment.STRATEGY,
                   shuffle_buffer=None, repeat=False, data_service=None, job_name=None,
                   processing_mode="distributed_epoch"):
  """Builds the training input pipeline.

  Args:
    ds: dataset of (uint8 or [0, 1] float image [h, w, c] with static shape, integer label []), or a
      pair of arrays or tensors (images [n, h, w, c], labels [n]) held in memory (gathered by batch; the
      shuffle is a full permutation, `shuffle_buffer` does not apply; through the service: `repeat`).
    preprocessor: a preprocess.Preprocessor (pixels → model space).
    batch_size: examples per batch; the last partial batch of an epoch is dropped.
    seed: integer seed of the shuffle and of the augmentation seeds.
    dsa_strategy: DSA strategy for `augment.sample` ("none" = no augmentation).
    shuffle_buffer: shuffle buffer size; None = the whole dataset up to 60,000 examples, else 10,000.
    repeat: repeat forever (batches then span epoch boundaries).
    data_service: dispatcher address "grpc://host:port" to run the pipeline on tf.data service
      workers (from the `--data_service` flag), or None to run it here.
    job_name: tf.data service job shared by consumers with the same name.
    processing_mode: service.PROCESSING_MODES; "distributed_epoch" gives one epoch per iteration
      (each worker drops its own partial batch, so up to batch_size - 1 examples per worker are
      skipped per epoch), "parallel_epochs" one epoch per worker (identical ones: same seeds).

  Returns:
    Dataset of (float images [batch_size, h, w, c] in model space, int32 labels [batch_size]).
  """
  if data_service is not None:
    service.check_address(data_service, "--data_service")
  augment.parse_strategy(dsa_strategy)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  shuffle_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
  if isinstance(ds, tuple):
    if data_service is not None and not repeat:  # its one epoch seed would be drawn on every worker
      raise ValueError("In-memory arrays go through the tf.data service with repeat=True only.")
    ds = _gathered_batches(ds, batch_size, shuffle_seed, repeat)
  else:
    ds = ds.shuffle(_shuffle_buffer(ds, shuffle_buffer), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
      ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(_preprocess_fn(preprocessor), num_parallel_calls=tf.data.AUTOTUNE)
  if dsa_strategy != "none":
    seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True).batch(2)

    def dsa(batch, batch_seed):
      images, labels = batch
      params = augment.sample(dsa_strategy, images.shape, batch_seed)
      return augment.apply(images, params), labels
    ds = tf.data.Dataset.zip((ds, seeds)).map(dsa, num_parallel_calls=tf.data.AUTOTUNE)
  if data_service is not None:
    ds = service.distribute(ds, data_service, job_name, processing_mode)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(ds, preprocessor, batch_size):
  """Builds the evaluation input pipeline: no shuffle, no augmentation, last partial batch kept.

  Args:
    ds: dataset of (uint8 or [0, 1] float image [h, w, c], integer label []).
    preprocessor: a preprocess.Preprocessor.
    batch_size: examples per batch.

  Returns:
    Dataset of (float images [b, h, w, c] in model space, int32 labels [b]), b <= batch_size.
  """
  ds = ds.batch(batch_size).map(_preprocess_fn(preprocessor), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)

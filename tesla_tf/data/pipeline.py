"""tf.data pipelines from (uint8 image, label) datasets to model-space batches.

Train: shuffle (seeded, reshuffled every epoch) → [repeat] → batch (drop remainder: static shapes) →
preprocess (normalise or ZCA, on whole batches) → DSA with one stateless seed per batch →
[tf.data service] → prefetch. Eval: batch (remainder kept) → preprocess → prefetch.

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


def train_pipeline(ds, preprocessor, batch_size, *, seed, dsa_strategy=augment.STRATEGY,
                   shuffle_buffer=None, repeat=False, data_service=None, job_name=None,
                   processing_mode="distributed_epoch"):
  """Builds the training input pipeline.

  Args:
    ds: dataset of (uint8 or [0, 1] float image [h, w, c] with static shape, integer label []).
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

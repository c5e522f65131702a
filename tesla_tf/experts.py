"""Expert training (REFERENCE §1): the trajectories the distiller streams from a store.

An expert is a network trained on real data with plain SGD; its trajectory is the [E+1, P] float32 array
of its flat parameters (`FlatModel.get_flat`) at initialisation and after every epoch. `train_experts`
trains experts `expert_start .. expert_start + num_experts - 1` and writes each one into a
`TrajectoryStore`.

The training loop is the project's own (`TrainStep`), not `keras.Model.fit`: one `tf.function` step run
with `strategy.run` under any tf.distribute strategy (the default one, MirroredStrategy,
MultiWorkerMirroredStrategy). Keras 3 `fit` does not run under MultiWorkerMirroredStrategy
(keras-team/keras#20585); this loop needs no private Keras module for it. A step computes what a `fit`
step computed, bitwise (cross-entropy from logits averaged over the batch, plain SGD). Epoch e reads the
train pipeline's e-th pass; `fit` drew one spare pass after every epoch, so from epoch 2 on its
trajectories differ from these in which shuffles and augmentations each epoch saw.

The store itself (layout, manifest, reads) is tesla_tf/store.py.

One large expert can also be trained by several workers at once (`strategy="multi_worker"`,
`tf.distribute.MultiWorkerMirroredStrategy` configured by TF_CONFIG): every worker runs the same call,
the chief alone writes the store.
"""

import contextlib
import dataclasses
import functools
import itertools
import os
import socket
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tesla_tf import augment
from tesla_tf import errors
from tesla_tf import files
from tesla_tf import models
from tesla_tf import multi_worker
from tesla_tf import store as store_lib
from tesla_tf.data import holdout
from tesla_tf.data import pipeline
from tesla_tf.data import preprocess
from tesla_tf.data import sources
from tesla_tf.models.flat import FlatModel

_EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
  """Settings of `train_experts` (tools/train_experts.py flags, REFERENCE §1 defaults).

  Attributes:
    dataset: a key of sources.DATASETS, "folder" or "tfds:<name>[:<version>]" (sources.get_info).
    store_dir: the trajectory store directory.
    data_dir: where the dataset is (None = the loader's defaults).
    image_size, image_key, label_key, train_split, test_split: how a folder or tfds: dataset is read
      (sources.OPTIONS; None = its own); the store records them for distillation and evaluation.
    model: a key of models.ARCHITECTURES.
    model_kwargs: architecture options, a dict or tuple of (name, value) pairs (e.g. width, depth).
    preprocessing: "normalize" or "zca".
    num_experts: how many experts this call trains.
    expert_start: index of the first one (disjoint ranges let several processes fill one store).
    epochs: E, training epochs per expert.
    lr_teacher: SGD learning rate (momentum 0, no weight decay).
    batch_size: train batch size.
    dsa_strategy: DSA strategy or "none".
    seed: base seed; expert i's init and data seeds derive from (seed, i).
    data_service: tf.data service dispatcher "grpc://host:port", or None to read data here.
    max_train_examples: use a seeded random subset of the train set of this size (None = all).
    validation_size: train examples held out of expert training for validation (data/holdout.py; None =
      the dataset's default, 0 = none); the store records the split for distillation and evaluation.
    max_test_examples: evaluate on a seeded random subset of the test set of this size (None = all).
    verbose: 0 silent; above 0 one log line per epoch (train loss and accuracy, test accuracy, seconds).
    strategy: a key of STRATEGIES: "none" (this process alone) or "multi_worker" (one expert trained by
      the workers of TF_CONFIG; batch_size is the global batch).
    precision: a key of models.PRECISIONS: "float32", or "bfloat16" (layers compute in bfloat16,
      variables, gradients, updates and the trajectory stay float32).
  """
  dataset: str
  store_dir: str
  data_dir: str | None = None
  model: str = "convnet"
  model_kwargs: tuple = ()
  preprocessing: str = "normalize"
  num_experts: int = 1
  expert_start: int = 0
  epochs: int = 50
  lr_teacher: float = 0.01
  batch_size: int = 256
  dsa_strategy: str = augment.STRATEGY
  seed: int = 0
  data_service: str | None = None
  max_train_examples: int | None = None
  max_test_examples: int | None = None
  validation_size: int | None = None
  verbose: int = 1
  strategy: str = "none"
  image_size: int | None = None
  image_key: str | None = None
  label_key: str | None = None
  train_split: str | None = None
  test_split: str | None = None
  precision: str = "float32"

  def __post_init__(self):
    kwargs = self.model_kwargs
    object.__setattr__(self, "model_kwargs", tuple(sorted(dict(kwargs).items())))
    self.info  # pylint: disable=pointless-statement  (resolves the dataset: refuses a bad one now)
    if self.model.lower() not in models.ARCHITECTURES:
      raise errors.UsageError(f"Unknown model {self.model!r} (--model); expected one of "
                              f"{sorted(models.ARCHITECTURES)}.")
    if self.preprocessing not in preprocess.PREPROCESSORS:
      raise errors.UsageError(f"Unknown preprocessing {self.preprocessing!r} (--preprocessing); "
                              f"expected one of {sorted(preprocess.PREPROCESSORS)}.")
    augment.parse_strategy(self.dsa_strategy)
    if self.precision not in models.PRECISIONS:
      raise errors.UsageError(f"Unknown precision {self.precision!r} (--precision); expected one of "
                              f"{sorted(models.PRECISIONS)}.")
    if self.strategy not in multi_worker.STRATEGIES:
      raise errors.UsageError(f"Unknown strategy {self.strategy!r} (--strategy); expected one of "
                              f"{sorted(multi_worker.STRATEGIES)}.")
    if self.strategy == "multi_worker" and self.data_service is not None:
      raise errors.UsageError("--strategy=multi_worker reads its input locally on every worker; it does "
                              "not combine with --data_service.")
    for name, low in (("num_experts", 1), ("expert_start", 0), ("epochs", 1), ("batch_size", 1)):
      if getattr(self, name) < low:
        raise errors.UsageError(f"{name} must be >= {low}, got {getattr(self, name)}.")
    if not self.lr_teacher > 0:
      raise errors.UsageError(f"lr_teacher must be > 0, got {self.lr_teacher}.")
    if self.max_test_examples is not None and self.max_test_examples < 1:
      raise errors.UsageError(f"max_test_examples must be >= 1, got {self.max_test_examples}.")
    if self.max_train_examples is not None and self.max_train_examples < self.batch_size:
      raise errors.UsageError(f"max_train_examples={self.max_train_examples} is smaller than one batch "
                              f"(batch_size={self.batch_size}).")


  @functools.cached_property
  def info(self):
    """The dataset's sources.DatasetInfo, resolved with the read options."""
    options = {name: getattr(self, name) for name in sources.OPTIONS}
    return sources.get_info(self.dataset, self.data_dir, **options)

def expert_seeds(seed, index):
  """(init seed, data seed) of expert `index`: a pure function of (seed, index)."""
  init_seed, data_seed = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
  return int(init_seed), int(data_seed)


@dataclasses.dataclass(frozen=True)
class ExpertData:
  """The data every expert of a store uses.

  Attributes:
    train: the train examples for pipeline.train_pipeline: a dataset of (uint8 image, int label), or
      (images, labels) tensors when they are held in memory.
    num_train: number of examples in `train`.
    test: dataset of (uint8 image, int label) test examples.
    preprocessor: the store's preprocessing.
  """
  train: tf.data.Dataset | tuple
  num_train: int
  test: tf.data.Dataset
  preprocessor: object


def _count(ds):
  count = int(ds.cardinality())
  return count if count >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def _subset(config, split, size):
  """A seeded random subset of `size` examples of a split (all if smaller), as numpy (images, labels)."""
  rng = np.random.default_rng(config.seed)
  if config.info.in_memory:  # in memory already: index it directly
    images, labels = sources.load_numpy(config.info, split, config.data_dir)
    positions = np.sort(rng.choice(len(labels), min(size, len(labels)), replace=False))
    return images[positions], labels[positions]
  ds = sources.load(config.info, split, config.data_dir)
  count = _count(ds)
  return sources.take_positions(ds, np.sort(rng.choice(count, min(size, count), replace=False)))


def store_holdout(config):
  """The validation split of the store `config` trains (data/holdout.py)."""
  return holdout.for_dataset(config.info, config.validation_size, config.seed)


def _train_examples(config):
  """(train examples, count, numpy images or None): the train split minus the validation split, or a
  seeded subset of that rest of max_train_examples examples; a dataset, or (images, labels) tensors when
  they are loaded into memory."""
  info = config.info
  split = store_holdout(config)
  in_memory = info.in_memory or config.preprocessing == "zca" or config.max_train_examples is not None
  if split.size == 0 and not in_memory:
    ds = sources.load(info, "train", config.data_dir)
    return ds, _count(ds), None
  arrays = sources.load_numpy(info, "train", config.data_dir) if info.in_memory else None
  index = (sources.build_class_index(arrays[1], info.num_classes) if arrays is not None
           else holdout.train_index(info, config.data_dir, config.store_dir))
  rest, _ = split.split(index)
  keep = holdout.positions_of(rest)
  if config.max_train_examples is not None:
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.choice(keep, min(config.max_train_examples, len(keep)), replace=False))
  if not in_memory:
    ds = holdout.keep_positions(sources.load(info, "train", config.data_dir), keep,
                                sum(len(p) for p in index))
    return ds, len(keep), None
  if arrays is not None:
    images, labels = arrays[0][keep], arrays[1][keep]
  else:
    images, labels = sources.take_positions(sources.load(info, "train", config.data_dir), keep)
  # Tensors once: every pipeline built on them captures them instead of copying arrays into its graph.
  return (tf.constant(images), tf.constant(labels)), len(labels), images


def _test_examples(config):
  if config.max_test_examples is None:
    return sources.load(config.info, "test", config.data_dir)
  return tf.data.Dataset.from_tensor_slices(_subset(config, "test", config.max_test_examples))


def _store_preprocessor(config, info, train_images):
  """The store's preprocessing: ZCA is fitted once and saved in the store before its manifest; a dataset
  read from the data (folder, tfds:) gets its mean/std computed here (sources.statistics, which also
  names any unreadable image of a folder) and recorded in the manifest."""
  if os.path.isfile(os.path.join(config.store_dir, store_lib.MANIFEST)):
    existing = store_lib.TrajectoryStore(config.store_dir).manifest.preprocessing
    if existing.get("kind") != config.preprocessing:  # refuse before touching the store's files
      raise store_lib.StoreMismatchError(
          f"Trajectory store {config.store_dir} was made for other settings (preprocessing: store has "
          f"{existing.get('kind')!r}, asked for {config.preprocessing!r}). Use another --store_dir, or "
          "the store's settings.")
    return preprocess.from_dict(existing, config.store_dir)
  if not info.mean:
    mean, std = sources.statistics(info, config.data_dir)
    info = dataclasses.replace(info, mean=mean, std=std)
  preprocessor = preprocess.build(config.preprocessing, info, train_images)
  if config.preprocessing == "zca":
    os.makedirs(config.store_dir, exist_ok=True)
    target = os.path.join(config.store_dir, preprocessor.file_name)
    with tempfile.TemporaryDirectory(dir=config.store_dir) as staging:
      # The first process to fit publishes its file; the others check that theirs agrees.
      if files.publish_once(preprocessor.save(staging), target):
        os.chmod(target, 0o644)  # readable by the distiller's account like the experts
      else:
        stored = preprocess.ZCA.load(config.store_dir, preprocessor.file_name)
        if not np.allclose(stored.whiten, preprocessor.whiten, atol=1e-4):
          raise store_lib.StoreMismatchError(
              f"{target} holds a ZCA fitted on other data than --dataset={config.dataset} with "
              f"--max_train_examples={config.max_train_examples}; remove it or use another --store_dir.")
  return preprocessor


def manifest_fields(config, flat_model, preprocessor):
  """The manifest of a store of experts trained with `config`."""
  info = config.info
  return {"dataset": config.dataset, "num_classes": info.num_classes, "image_shape": info.image_shape,
          "class_names": list(info.class_names), "data_options": info.data_options,
          "model": config.model.lower(), "model_kwargs": dict(config.model_kwargs),
          "num_params": flat_model.num_params, "layout": flat_model.layout(),
          "preprocessing": preprocessor.to_dict(), "epochs": config.epochs,
          "lr_teacher": config.lr_teacher, "momentum": 0.0, "batch_size": config.batch_size,
          "dsa_strategy": config.dsa_strategy, "seed": config.seed,
          "max_train_examples": config.max_train_examples, "holdout": store_holdout(config).to_dict(),
          "precision": config.precision}


def open_store(config):
  """Creates or opens the store of `config` and loads its data.

  Returns:
    (TrajectoryStore, ExpertData); the preprocessor is the one saved in the store.
  """
  info = config.info
  train, num_train, train_images = _train_examples(config)
  preprocessor = _store_preprocessor(config, info, train_images)
  probe = FlatModel(models.build(config.model, info.num_classes, info.image_shape,
                                 **dict(config.model_kwargs)))
  store = store_lib.TrajectoryStore.create_or_open(config.store_dir,
                                                   manifest_fields(config, probe, preprocessor))
  return store, ExpertData(train, num_train, _test_examples(config), store.preprocessor())


def build_expert(config, index):
  """Expert `index`'s network at its initial weights (seed from (config.seed, index)); `TrainStep`
  trains it."""
  info = config.info
  return models.build(config.model, info.num_classes, info.image_shape, precision=config.precision,
                      seed=expert_seeds(config.seed, index)[0], **dict(config.model_kwargs))


def _loss_terms(labels, logits):
  """(per-example cross-entropy from logits [b], number of correct argmax predictions, float32 scalar).

  Integer labels are class indices (sparse CE); float labels are probability rows (CE with soft targets,
  correct = the argmax of the row). Logits of a bfloat16 model are cast up first: the loss is float32.
  """
  logits = tf.cast(logits, tf.float32)
  if labels.dtype.is_integer:
    target = tf.cast(labels, tf.int32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
  else:
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype),
                                                          logits=logits)
    target = tf.argmax(labels, axis=-1, output_type=tf.int32)
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  return per_example, tf.reduce_sum(tf.cast(tf.equal(predicted, target), tf.float32))


class TrainStep:
  """The expert recipe's training and evaluation steps for `model` under a tf.distribute strategy.

  A train step, on a batch of `strategy.experimental_distribute_dataset`: each replica computes logits
  and the cross-entropy of its share, averaged over the GLOBAL batch (`tf.nn.compute_average_loss`), and
  its gradients; one all-reduce (SUM) gives every replica the gradient of the global batch mean, and plain
  SGD (momentum 0, no weight decay) updates the variables: θ ← θ − lr·g, the same on every replica and
  worker. With the default strategy (one replica) the all-reduce is the identity.

  Both steps return float32 [3] = (sum of per-example losses, correct predictions, examples) over all
  replicas and workers; `run` totals them over a pass.

  Attributes:
    model: the keras.Model, built under `strategy.scope()`.
    strategy: the tf.distribute strategy.
    learning_rate: SGD learning rate.
    global_batch_size: examples per global train batch, or None to count them at every step (one more
      all-reduce); the train pipeline drops partial batches, so its static batch size is the count.
    jit_compile: compile the steps with XLA (tools/benchmark_jit.py measures it; off by default).
  """

  def __init__(self, model, strategy=None, learning_rate=0.01, global_batch_size=None, jit_compile=False):
    self.model = model
    self.strategy = strategy or tf.distribute.get_strategy()
    self.learning_rate = float(learning_rate)
    self.global_batch_size = None if global_batch_size is None else int(global_batch_size)
    self._variables = list(model.trainable_variables)
    self.train = tf.function(self._train, reduce_retracing=True, jit_compile=jit_compile, autograph=False)
    self.evaluate = tf.function(self._evaluate, reduce_retracing=True, jit_compile=jit_compile, autograph=False)

  def _replica_train(self, images, labels):
    context = tf.distribute.get_replica_context()
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    global_batch = self.global_batch_size
    if global_batch is None:
      global_batch = tf.cast(context.all_reduce(tf.distribute.ReduceOp.SUM, count), tf.int32)
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)
      per_example, correct = _loss_terms(labels, logits)
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
    gradients = tape.gradient(loss, self._variables)
    stats = tf.stack([tf.reduce_sum(per_example), correct, count])
    *gradients, stats = context.all_reduce(tf.distribute.ReduceOp.SUM, [*gradients, stats])
    context.merge_call(self._apply_sgd, args=(gradients,))
    return stats

  def _apply_sgd(self, strategy, gradients):
    """In cross-replica context: θ ← θ − lr·g on every copy of every variable (g is already summed)."""
    def sgd(variable, gradient):
      return variable.assign_sub(gradient * self.learning_rate)
    for variable, gradient in zip(self._variables, gradients):
      strategy.extended.update(variable.value, sgd, args=(gradient,), group=False)

  def _replica_evaluate(self, images, labels):
    per_example, correct = _loss_terms(labels, self.model(images, training=False))
    stats = tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)])
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, stats)

  def _train(self, batch):
    stats = self.strategy.run(self._replica_train, args=tuple(batch))
    return self.strategy.experimental_local_results(stats)[0]  # all-reduced: the same on every replica

  def _evaluate(self, batch):
    stats = self.strategy.run(self._replica_evaluate, args=tuple(batch))
    return self.strategy.experimental_local_results(stats)[0]

  def run(self, batches, train=True):
    """(mean loss, accuracy) over the distributed `batches`, training on each (`train`) or evaluating.

    The loss and accuracy of a training pass are those of every batch before its update, as `fit`
    reported them.
    """
    step = self.train if train else self.evaluate
    totals = np.zeros(3, np.float64)
    for batch in batches:
      totals += step(batch).numpy()
    if totals[2] == 0:
      raise errors.MissingDataError("The expert's input pipeline yielded no examples.")
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def train_expert(config, index, data, strategy=None):
  """Trains expert `index` with the expert recipe (`TrainStep`), recording its trajectory.

  Args:
    config: ExpertConfig.
    index: expert index (its seeds derive from (config.seed, index)).
    data: ExpertData.
    strategy: tf.distribute strategy to build and train the model in (None = the current one); under
      MultiWorkerMirroredStrategy every worker calls this with the same arguments.

  Returns:
    (trained keras.Model, trajectory float32 [E+1, P], info dict).
  """
  strategy = strategy or tf.distribute.get_strategy()
  init_seed, data_seed = expert_seeds(config.seed, index)
  # One repeated pipeline serves the whole training, num_train // batch_size steps per epoch: here and
  # through the service (one job; a fresh job per epoch would restart the workers' shuffle and
  # augmentation seeds and repeat epoch 1's batches) alike, so both train on the same batches.
  train = pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=data_seed,
                                  dsa_strategy=config.dsa_strategy, repeat=True,
                                  data_service=config.data_service)
  train = multi_worker.sharded_by_data(train)
  test = multi_worker.sharded_by_data(pipeline.eval_pipeline(data.test, data.preprocessor, _EVAL_BATCH))
  with strategy.scope():
    model = build_expert(config, index)
  # The train pipeline drops partial batches: its static batch size is every global batch's.
  step = TrainStep(model, strategy, config.lr_teacher, global_batch_size=train.element_spec[0].shape[0])
  train_batches = strategy.experimental_distribute_dataset(train)
  test_batches = strategy.experimental_distribute_dataset(test)
  train_iterator = iter(train_batches)
  # Every worker records (the variables are mirrored, identical on all of them); the caller decides who
  # writes.
  flat = FlatModel(model)
  snapshots = [flat.get_flat().numpy().astype(np.float32)]
  logs = {"loss": [], "accuracy": [], "test_loss": [], "test_accuracy": []}
  start = time.time()
  for epoch in range(1, config.epochs + 1):
    epoch_start = time.time()
    loss, accuracy = step.run(itertools.islice(train_iterator, data.num_train // config.batch_size))
    snapshots.append(flat.get_flat().numpy().astype(np.float32))
    test_loss, test_accuracy = step.run(test_batches, train=False)
    for key, value in zip(logs, (loss, accuracy, test_loss, test_accuracy)):
      logs[key].append(round(value, 6))
    if config.verbose > 0:
      logging.info("Expert %d epoch %d/%d: train loss %.4f accuracy %.4f, test loss %.4f accuracy %.4f, "
                   "%.1f s", index, epoch, config.epochs, loss, accuracy, test_loss, test_accuracy,
                   time.time() - epoch_start)
  expert_info = {
      "init_seed": init_seed, "data_seed": data_seed, "wall_time_s": round(time.time() - start, 3),
      "test_accuracy": logs["test_accuracy"], "test_loss": logs["test_loss"],
      "train_accuracy": logs["accuracy"], "train_loss": logs["loss"],
      "num_train": data.num_train, "data_service": config.data_service, "host": socket.gethostname(),
      "strategy": config.strategy, "replicas": strategy.num_replicas_in_sync}
  return model, np.stack(snapshots), expert_info


def train_experts(config):
  """Trains experts expert_start .. expert_start + num_experts - 1 into the store, skipping finished ones.

  With strategy "multi_worker" every worker of TF_CONFIG makes this same call. Only the chief opens and
  writes config.store_dir; the other workers open a private store in a temporary directory (its manifest,
  and a ZCA fitted on the same data, are thrown away at the end) and follow the chief's choice of which
  experts to train.

  Args:
    config: ExpertConfig.

  Returns:
    The TrajectoryStore; None on a non-chief worker.
  """
  # MultiWorkerMirroredStrategy configures collective ops, which TF allows only before its first op runs:
  # it is created before anything below touches TF.
  strategy = multi_worker.STRATEGIES[config.strategy]()
  chief = multi_worker.is_chief(strategy)
  scratch = (contextlib.nullcontext(config.store_dir) if chief
             else tempfile.TemporaryDirectory(prefix="tesla_tf_worker_"))
  with scratch as store_dir, multi_worker.lost_workers_reported(strategy):
    store, data = open_store(dataclasses.replace(config, store_dir=store_dir))
    indices = range(config.expert_start, config.expert_start + config.num_experts)
    # Workers train expert after expert in lockstep, so they all skip what the chief's store has.
    finished = multi_worker.from_chief(strategy, [store.is_finished(i) for i in indices])
    for index, done in zip(indices, finished):
      if done:
        logging.info("Expert %d already in %s, skipped.", index, config.store_dir)
        continue
      _, trajectory, info = train_expert(config, index, data, strategy)
      if chief:
        store.write(index, trajectory, info)
      keras.backend.clear_session()
  return store if chief else None

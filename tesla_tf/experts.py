"""Expert training (REFERENCE §1): the trajectories the distiller streams from a store.

An expert is a network trained on real data with plain SGD; its trajectory is the [E+1, P] float32 array
of its flat parameters (`FlatModel.get_flat`) at initialisation and after every epoch. `train_experts`
trains experts `expert_start .. expert_start + num_experts - 1` with `keras.Model.fit` and a
`TrajectoryRecorder` callback, and writes each one into a `TrajectoryStore`.

The store itself (layout, manifest, reads) is tesla_tf/store.py.

One large expert can also be trained by several workers at once (`strategy="multi_worker"`,
`tf.distribute.MultiWorkerMirroredStrategy` configured by TF_CONFIG): every worker runs the same call,
the chief alone writes the store.
"""

import contextlib
import dataclasses
import os
import socket
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tesla_tf import augment
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
    dataset: a key of sources.DATASETS.
    store_dir: the trajectory store directory.
    data_dir: where the dataset is (None = the loader's defaults).
    model: a key of models.ARCHITECTURES.
    model_kwargs: architecture options, a dict or tuple of (name, value) pairs (e.g. width, depth).
    preprocessing: "normalize" or "zca".
    num_experts: how many experts this call trains.
    expert_start: index of the first one (disjoint ranges let several processes fill one store).
    epochs: E, training epochs per expert.
    lr_teacher: SGD learning rate (momentum 0, no weight decay).
    batch_size: train batch size.
    augment_strategy: DSA strategy or "none".
    seed: base seed; expert i's init and data seeds derive from (seed, i).
    data_service: tf.data service dispatcher "grpc://host:port", or None to read data here.
    max_train_examples: use a seeded random subset of the train set of this size (None = all).
    validation_size: train examples held out of expert training for validation (data/holdout.py; None =
      the dataset's default, 0 = none); the store records the split for distillation and evaluation.
    max_test_examples: evaluate on a seeded random subset of the test set of this size (None = all).
    verbose: Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch).
    strategy: a key of STRATEGIES: "none" (this process alone) or "multi_worker" (one expert trained by
      the workers of TF_CONFIG; batch_size is the global batch).
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
  augment_strategy: str = augment.STRATEGY
  seed: int = 0
  data_service: str | None = None
  max_train_examples: int | None = None
  max_test_examples: int | None = None
  validation_size: int | None = None
  verbose: int = 1
  strategy: str = "none"

  def __post_init__(self):
    kwargs = self.model_kwargs
    object.__setattr__(self, "model_kwargs", tuple(sorted(dict(kwargs).items())))
    sources.get_info(self.dataset)
    if self.model.lower() not in models.ARCHITECTURES:
      raise ValueError(f"Unknown model {self.model!r} (--model); expected one of "
                       f"{sorted(models.ARCHITECTURES)}.")
    if self.preprocessing not in preprocess.PREPROCESSORS:
      raise ValueError(f"Unknown preprocessing {self.preprocessing!r} (--preprocessing); expected one "
                       f"of {sorted(preprocess.PREPROCESSORS)}.")
    augment.parse_strategy(self.augment_strategy)
    if self.strategy not in multi_worker.STRATEGIES:
      raise ValueError(f"Unknown strategy {self.strategy!r} (--strategy); expected one of "
                       f"{sorted(multi_worker.STRATEGIES)}.")
    if self.strategy == "multi_worker" and self.data_service is not None:
      raise ValueError("--strategy=multi_worker reads its input locally on every worker; it does not "
                       "combine with --data_service.")
    for name, low in (("num_experts", 1), ("expert_start", 0), ("epochs", 1), ("batch_size", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}.")
    if not self.lr_teacher > 0:
      raise ValueError(f"lr_teacher must be > 0, got {self.lr_teacher}.")
    if self.max_test_examples is not None and self.max_test_examples < 1:
      raise ValueError(f"max_test_examples must be >= 1, got {self.max_test_examples}.")
    if self.max_train_examples is not None and self.max_train_examples < self.batch_size:
      raise ValueError(f"max_train_examples={self.max_train_examples} is smaller than one batch "
                       f"(batch_size={self.batch_size}).")


def expert_seeds(seed, index):
  """(init seed, data seed) of expert `index`: a pure function of (seed, index)."""
  init_seed, data_seed = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
  return int(init_seed), int(data_seed)


class TrajectoryRecorder(keras.callbacks.Callback):
  """Records the flat parameters at the start of training (epoch 0) and after every epoch.

  Attributes:
    snapshots: list of float32 [P] numpy arrays.
  """

  def __init__(self, flat_model):
    super().__init__()
    self.flat_model = flat_model
    self.snapshots = []

  def _record(self):
    self.snapshots.append(self.flat_model.get_flat().numpy().astype(np.float32))

  def on_train_begin(self, logs=None):
    self.snapshots = []
    self._record()

  def on_epoch_end(self, epoch, logs=None):
    self._record()

  def trajectory(self):
    """float32 [E+1, P]."""
    return np.stack(self.snapshots)


@dataclasses.dataclass(frozen=True)
class ExpertData:
  """The data every expert of a store uses.

  Attributes:
    train: dataset of (uint8 image, int label) examples.
    num_train: number of examples in `train`.
    test: dataset of (uint8 image, int label) test examples.
    preprocessor: the store's preprocessing.
  """
  train: tf.data.Dataset
  num_train: int
  test: tf.data.Dataset
  preprocessor: object


def _count(ds):
  count = int(ds.cardinality())
  return count if count >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def _subset(config, split, size):
  """A seeded random subset of `size` examples of a split (all if smaller), as numpy (images, labels)."""
  rng = np.random.default_rng(config.seed)
  if sources.get_info(config.dataset).in_memory:  # in memory already: index it directly
    images, labels = sources.load_numpy(config.dataset, split, config.data_dir)
    positions = np.sort(rng.choice(len(labels), min(size, len(labels)), replace=False))
    return images[positions], labels[positions]
  ds = sources.load(config.dataset, split, config.data_dir)
  count = _count(ds)
  return sources.take_positions(ds, np.sort(rng.choice(count, min(size, count), replace=False)))


def store_holdout(config):
  """The validation split of the store `config` trains (data/holdout.py)."""
  return holdout.for_dataset(config.dataset, config.validation_size, config.seed)


def _train_examples(config):
  """(train dataset, count, numpy images or None): the train split minus the validation split, or a
  seeded subset of that rest of max_train_examples examples."""
  info = sources.get_info(config.dataset)
  split = store_holdout(config)
  in_memory = info.in_memory or config.preprocessing == "zca" or config.max_train_examples is not None
  if split.size == 0 and not in_memory:
    ds = sources.load(config.dataset, "train", config.data_dir)
    return ds, _count(ds), None
  arrays = sources.load_numpy(config.dataset, "train", config.data_dir) if info.in_memory else None
  index = (sources.build_class_index(arrays[1], info.num_classes) if arrays is not None
           else holdout.train_index(config.dataset, config.data_dir, config.store_dir))
  rest, _ = split.split(index)
  keep = holdout.positions_of(rest)
  if config.max_train_examples is not None:
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.choice(keep, min(config.max_train_examples, len(keep)), replace=False))
  if not in_memory:
    ds = holdout.keep_positions(sources.load(config.dataset, "train", config.data_dir), keep,
                                sum(len(p) for p in index))
    return ds, len(keep), None
  if arrays is not None:
    images, labels = arrays[0][keep], arrays[1][keep]
  else:
    images, labels = sources.take_positions(sources.load(config.dataset, "train", config.data_dir), keep)
  return tf.data.Dataset.from_tensor_slices((images, labels)), len(labels), images


def _test_examples(config):
  if config.max_test_examples is None:
    return sources.load(config.dataset, "test", config.data_dir)
  return tf.data.Dataset.from_tensor_slices(_subset(config, "test", config.max_test_examples))


def _store_preprocessor(config, info, train_images):
  """The store's preprocessing: ZCA is fitted once and saved in the store before its manifest."""
  if os.path.isfile(os.path.join(config.store_dir, store_lib.MANIFEST)):
    existing = store_lib.TrajectoryStore(config.store_dir).manifest.preprocessing
    if existing.get("kind") != config.preprocessing:  # refuse before touching the store's files
      raise store_lib.StoreMismatchError(
          f"Trajectory store {config.store_dir} was made for other settings (preprocessing: store has "
          f"{existing.get('kind')!r}, asked for {config.preprocessing!r}). Use another --store_dir, or "
          "the store's settings.")
    if existing["kind"] == "zca":
      return preprocess.from_dict(existing, config.store_dir)
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
  info = sources.get_info(config.dataset)
  return {"dataset": config.dataset, "num_classes": info.num_classes, "image_shape": info.image_shape,
          "model": config.model.lower(), "model_kwargs": dict(config.model_kwargs),
          "num_params": flat_model.num_params, "layout": flat_model.layout(),
          "preprocessing": preprocessor.to_dict(), "epochs": config.epochs,
          "lr_teacher": config.lr_teacher, "momentum": 0.0, "batch_size": config.batch_size,
          "augment_strategy": config.augment_strategy, "seed": config.seed,
          "max_train_examples": config.max_train_examples, "holdout": store_holdout(config).to_dict()}


def open_store(config):
  """Creates or opens the store of `config` and loads its data.

  Returns:
    (TrajectoryStore, ExpertData); the preprocessor is the one saved in the store.
  """
  info = sources.get_info(config.dataset)
  train, num_train, train_images = _train_examples(config)
  preprocessor = _store_preprocessor(config, info, train_images)
  probe = FlatModel(models.build(config.model, info.num_classes, info.image_shape,
                                 **dict(config.model_kwargs)))
  store = store_lib.TrajectoryStore.create_or_open(config.store_dir, manifest_fields(config, probe, preprocessor))
  return store, ExpertData(train, num_train, _test_examples(config), store.preprocessor())


def build_expert(config, index, hard_labels=True):
  """Expert `index`'s network at its initial weights, compiled with the expert recipe.

  Args:
    config: ExpertConfig.
    index: expert index; the init seed derives from (config.seed, index).
    hard_labels: integer labels (sparse CE) or probability rows (CE with soft targets).

  Returns:
    A compiled keras.Model: plain SGD(lr_teacher, momentum 0), cross-entropy from logits, accuracy.
  """
  info = sources.get_info(config.dataset)
  model = models.build(config.model, info.num_classes, info.image_shape,
                       seed=expert_seeds(config.seed, index)[0], **dict(config.model_kwargs))
  model.compile(
      optimizer=keras.optimizers.SGD(config.lr_teacher, momentum=0.0),
      loss=(keras.losses.SparseCategoricalCrossentropy(from_logits=True) if hard_labels
            else keras.losses.CategoricalCrossentropy(from_logits=True)),
      metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy") if hard_labels
               else keras.metrics.CategoricalAccuracy("accuracy")])
  return model


def train_expert(config, index, data, strategy=None):
  """Trains expert `index` with Keras fit, recording its trajectory.

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
  use_service = config.data_service is not None
  # Through the service one job serves the whole fit (repeat + steps_per_epoch): a fresh job per epoch
  # would restart the workers' shuffle and augmentation seeds and repeat epoch 1's batches.
  train = pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=data_seed,
                                  augment_strategy=config.augment_strategy, repeat=use_service,
                                  data_service=config.data_service)
  train = multi_worker.sharded_by_data(train)
  test = multi_worker.sharded_by_data(pipeline.eval_pipeline(data.test, data.preprocessor, _EVAL_BATCH))
  with strategy.scope():
    model = build_expert(config, index, hard_labels=train.element_spec[1].dtype.is_integer)
  # Every worker records (get_flat reads the mirrored variables, identical on all of them); the caller
  # decides who writes.
  recorder = TrajectoryRecorder(FlatModel(model))
  start = time.time()
  with multi_worker.keras_fit_workarounds(model, train.element_spec, strategy):
    history = model.fit(train, epochs=config.epochs, validation_data=test, callbacks=[recorder],
                        shuffle=False, steps_per_epoch=data.num_train // config.batch_size if use_service
                        else None, verbose=config.verbose)
  logs = {k: [round(float(v), 6) for v in values] for k, values in history.history.items()}
  expert_info = {
      "init_seed": init_seed, "data_seed": data_seed, "wall_time_s": round(time.time() - start, 3),
      "test_accuracy": logs["val_accuracy"], "test_loss": logs["val_loss"],
      "train_accuracy": logs["accuracy"], "train_loss": logs["loss"],
      "num_train": data.num_train, "data_service": config.data_service, "host": socket.gethostname(),
      "strategy": config.strategy, "replicas": strategy.num_replicas_in_sync}
  return model, recorder.trajectory(), expert_info


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

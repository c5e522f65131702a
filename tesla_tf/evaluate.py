"""Evaluation of a distilled set (REFERENCE §7): train fresh networks on it, test on the real test set.

Recipe, for every architecture × `num_eval` seeds: a freshly initialised network (PyTorch-style init from
the seed) is trained on the distilled set only, with SGD written out as PyTorch's: g = ∇ℓ + wd·θ,
buf = m·buf + g, θ −= lr·buf (momentum 0.9, weight decay 5e-4), lr = the set's learned α, batch 256,
1,000 epochs, lr × 0.1 once from epoch epochs // 2 on (the momentum buffer is reset there: the public
MTT/TESLA evaluation builds a new optimiser at the decay), DSA on every batch with fresh parameters,
and soft-label cross-entropy (one-hot rows for hard labels). The reported number is the test accuracy
of the FINAL epoch (no test-set early stopping), mean ± std (population std, ddof 0) over the seeds.
Every network is also measured on the set's validation split (held out of the train set), the only
accuracy any selection may use.

The honest baseline is always computed beside it: a random real subset with the same number of images
per class, trained with the same recipe, the same lr and the same seeds. Its labels are one-hot, or,
for soft-label sets, the rows of `baseline_labeler(images)` when one is given (e.g. the expert).

Data conventions: distilled images are in model space. Real data (`test_data`, `train_data`) are
(images, int labels) numpy pairs or a tf.data.Dataset of such pairs; uint8 images are pixels and go
through the set's preprocessor, float images are taken as already in model space.
"""

import dataclasses
import math
import time
from typing import Callable, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

import tesla_tf
from tesla_tf import errors
from tesla_tf import augment
from tesla_tf import files
from tesla_tf import models
from tesla_tf.data import class_index
from tesla_tf.data import distilled
from tesla_tf.data import holdout
from tesla_tf.data import sources

LR_DECAY = 0.1
METRIC = "test accuracy (fraction in [0, 1]) after the final epoch, on the real test set"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Settings of an evaluation.

  Attributes:
    models: architectures (keys of models.ARCHITECTURES); empty = the set's distillation architecture.
    num_eval: fresh networks (seeds seed, seed+1, ...) per architecture.
    epochs: training epochs.
    batch_size: minibatch size (the whole set when it is smaller).
    momentum: SGD momentum.
    weight_decay: L2 weight decay, added to the gradient as in PyTorch.
    dsa_strategy: DSA families joined by "_" (augment.STRATEGY), or "none".
    reset_momentum_at_decay: zero the momentum buffer when the lr decays (as the public code).
    seed: first seed.
    lr: learning rate; None = the set's learned α.
    data_dir: where the real dataset lives (sources.load).
    baseline: also evaluate the random real subset.
    eval_test_every: also record the test accuracy every this many epochs (0 = final epoch only).
    test_batch_size: batch size of the test pass.
    log_every: log a progress line every this many epochs.
    model_kwargs: per-architecture builder options, {name: {option: value}}, overriding the set's own.
    precision: the networks' layers, a key of models.PRECISIONS ("bfloat16": float32 parameters,
      gradients, SGD and loss; bfloat16 convolutions and activations).
  """
  models: tuple = ()
  num_eval: int = 5
  epochs: int = 1000
  batch_size: int = 256
  momentum: float = 0.9
  weight_decay: float = 5e-4
  dsa_strategy: str = augment.STRATEGY
  reset_momentum_at_decay: bool = True
  seed: int = 0
  lr: Optional[float] = None
  data_dir: Optional[str] = None
  baseline: bool = True
  eval_test_every: int = 0
  test_batch_size: int = 500
  log_every: int = 100
  model_kwargs: Mapping = dataclasses.field(default_factory=dict)
  precision: str = "float32"

  def __post_init__(self):
    for name in ("num_eval", "epochs", "batch_size", "test_batch_size", "log_every"):
      if getattr(self, name) < 1:
        raise errors.UsageError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}.")
    if self.lr is not None and not self.lr > 0:
      raise errors.UsageError(f"EvalConfig.lr must be > 0 (or None for the learned α), got {self.lr}.")
    augment.parse_strategy(self.dsa_strategy)
    if self.precision not in models.PRECISIONS:
      raise errors.UsageError(f"EvalConfig.precision (--precision) must be one of {tuple(models.PRECISIONS)}, "
                              f"got {self.precision!r}.")
    for name in self.models:
      if name.lower() not in models.ARCHITECTURES:
        raise errors.UsageError(f"Unknown model {name!r}; expected one of {sorted(models.ARCHITECTURES)}.")


def lr_at(epoch, lr, epochs):
  """The learning rate of (0-based) `epoch`: lr, then lr · 0.1 from epoch epochs // 2 on."""
  return lr * LR_DECAY if 0 < epochs // 2 <= epoch else lr


def sgd_momentum(param, grad, buf, lr, momentum, weight_decay):
  """One PyTorch SGD update (dampening 0, not Nesterov); works on numpy arrays and tensors.

  Returns:
    (new param, new momentum buffer): g = grad + wd·param; buf = m·buf + g; param − lr·buf.
  """
  grad = grad + weight_decay * param
  buf = momentum * buf + grad
  return param - lr * buf, buf


class Trainer:
  """Trains one architecture on sets of a fixed size; reused across seeds without retracing.

  Every epoch is one compiled tf.function: a seeded permutation, ceil(n / b) minibatches of a static
  size b = min(batch_size, n) (the last one padded and masked so that the loss is the mean over its real
  rows, as PyTorch's last partial batch), DSA per minibatch from a stateless stream, and the SGD update.
  """

  def __init__(self, model_name, model_kwargs, num_classes, image_shape, num_train, config, jit_compile=False):
    """jit_compile: compile each epoch with XLA (tools/benchmark_jit.py measures it; off by default)."""
    self.config = config
    self.model = models.build(model_name, num_classes, tuple(image_shape), seed=0,
                              precision=config.precision, **model_kwargs)
    self.flat = models.FlatModel(self.model)
    self.variables = self.model.trainable_variables
    self.buffers = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.variables]
    self.num_train = int(num_train)
    self.batch = min(config.batch_size, self.num_train)
    self.steps = math.ceil(self.num_train / self.batch)
    self.image_shape = tuple(image_shape)
    self.trace_count = 0
    self._epoch = tf.function(self._epoch_fn, jit_compile=jit_compile, autograph=False)
    self._predict = tf.function(
        lambda x: tf.argmax(self.model(x, training=False), axis=-1, output_type=tf.int32),
        input_signature=[tf.TensorSpec([None, *self.image_shape], tf.float32)], autograph=False)

  def reset(self, seed):
    """Fresh PyTorch-style weights from `seed` and zero momentum."""
    self.flat.set_flat(self.flat.initial_flat(seed))
    self.zero_momentum()

  def zero_momentum(self):
    for buf in self.buffers:
      buf.assign(tf.zeros_like(buf))

  def _epoch_fn(self, images, labels, seed, lr):
    """One epoch; images [n, h, w, c] float32, labels [n, C] rows, seed int64 [2], lr float32 []."""
    self.trace_count += 1
    n, b, steps = self.num_train, self.batch, self.steps
    order_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    order = tf.argsort(tf.random.stateless_uniform([n], order_seed))
    pad = steps * b - n
    order = tf.reshape(tf.concat([order, tf.zeros([pad], tf.int32)], 0), [steps, b])
    mask = tf.reshape(tf.concat([tf.ones([n]), tf.zeros([pad])], 0), [steps, b])
    cfg = self.config

    def minibatch(i, loss_sum, correct):
      x, y, w = tf.gather(images, order[i]), tf.gather(labels, order[i]), mask[i]
      if cfg.dsa_strategy != "none":
        step_seed = tf.random.experimental.stateless_fold_in(aug_seed, tf.cast(i, tf.int64))
        x = augment.apply(x, augment.sample(cfg.dsa_strategy, [b, *self.image_shape], step_seed))
      with tf.GradientTape() as tape:
        logits = tf.cast(self.model(x, training=True), tf.float32)  # a bfloat16 model's too
        # Masked rows weigh 0; rescaling keeps the mean over the real rows of a padded batch.
        loss = models.soft_cross_entropy(y * w[:, None], logits) * (b / tf.reduce_sum(w))
      grads = tape.gradient(loss, self.variables)
      for var, grad, buf in zip(self.variables, grads, self.buffers):
        new_var, new_buf = sgd_momentum(var.value, grad, buf, lr, cfg.momentum, cfg.weight_decay)
        buf.assign(new_buf)
        var.assign(new_var)
      hits = tf.equal(tf.argmax(logits, -1), tf.argmax(y, -1))
      return i + 1, loss_sum + loss * tf.reduce_sum(w), correct + tf.reduce_sum(tf.cast(hits, tf.float32) * w)

    _, loss_sum, correct = tf.while_loop(lambda i, *_: i < steps, minibatch,
                                         (tf.constant(0), tf.constant(0.0), tf.constant(0.0)))
    return loss_sum / n, correct / n

  def train_epoch(self, images, labels, epoch, seed, lr):
    """Runs (0-based) `epoch` at learning rate lr; returns (mean loss, train accuracy) as floats."""
    epoch_seed = tf.constant([seed, epoch], tf.int64)
    loss, acc = self._epoch(images, labels, epoch_seed, tf.constant(lr, tf.float32))
    return float(loss), float(acc)

  def test(self, test_batches):
    """Accuracy on a dataset of (model-space images [b, h, w, c], int labels [b]) batches."""
    correct, total = 0, 0
    for x, y in test_batches:
      pred = self._predict(tf.cast(x, tf.float32)).numpy()
      correct += int(np.sum(pred == y.numpy().astype(np.int64)))
      total += int(pred.shape[0])
    if not total:
      raise ValueError("The test set is empty.")
    return correct / total

  def fit(self, images, labels, lr, seed, test_batches, tag="", validation_batches=None):
    """Trains a fresh network (weights from `seed`) and tests it after the final epoch.

    Returns:
      {"test_accuracy", "validation_accuracy" (None without validation_batches), "train_loss",
      "train_accuracy", "curve" [[epoch, acc], ...], "seed", "seconds"}.
    """
    cfg, start = self.config, time.time()
    self.reset(seed)
    images = tf.constant(np.asarray(images, np.float32))
    labels = tf.constant(np.asarray(labels, np.float32))
    curve, loss, acc = [], float("nan"), float("nan")
    for epoch in range(cfg.epochs):
      if cfg.reset_momentum_at_decay and epoch > 0 and lr_at(epoch, lr, cfg.epochs) != lr_at(
          epoch - 1, lr, cfg.epochs):
        self.zero_momentum()
      loss, acc = self.train_epoch(images, labels, epoch, seed, lr_at(epoch, lr, cfg.epochs))
      if not math.isfinite(loss):
        raise FloatingPointError(f"{tag}: the training loss is {loss} at epoch {epoch}; lower the lr "
                                 f"(now {lr}; --lr overrides the learned α).")
      done = epoch + 1
      if cfg.eval_test_every and done % cfg.eval_test_every == 0 and done < cfg.epochs:
        curve.append([done, self.test(test_batches)])
      if done % cfg.log_every == 0 or done == cfg.epochs:
        logging.info("%s epoch %d/%d lr %.4g loss %.4f train acc %.3f", tag, done, cfg.epochs,
                     lr_at(epoch, lr, cfg.epochs), loss, acc)
    accuracy = self.test(test_batches)
    validation = self.test(validation_batches) if validation_batches is not None else None
    curve.append([cfg.epochs, accuracy])
    logging.info("%s final test accuracy %.4f%s (%.1f s)", tag, accuracy,
                 "" if validation is None else f", validation {validation:.4f}", time.time() - start)
    return {"seed": seed, "test_accuracy": accuracy, "validation_accuracy": validation, "train_loss": loss,
            "train_accuracy": acc, "curve": curve, "seconds": time.time() - start}


def _batches(data, preprocessor, batch_size):
  """A dataset of (model-space float32 images, int labels) batches from arrays or a dataset."""
  ds = data if isinstance(data, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(tuple(data))
  if ds.element_spec[0].dtype == tf.uint8:
    if preprocessor is None:
      raise ValueError("uint8 (pixel) images need the set's preprocessor.")
    ds = ds.map(lambda x, y: (preprocessor.apply(x), y), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _model_kwargs(distilled_set, arch, config):
  """The set's own builder options for its own architecture, then config.model_kwargs[arch]."""
  own = {k: v for k, v in distilled_set.model.items() if k != "name"}
  kwargs = own if arch.lower() == str(distilled_set.model.get("name", "")).lower() else {}
  return {**kwargs, **dict(config.model_kwargs.get(arch, {}))}


def _default_real(distilled_set, split, data_dir):
  """The set's real split as arrays (small IDX datasets) or a streaming dataset of (uint8 image, label),
  read as the experts read it."""
  info = sources.get_info(distilled_set.dataset, data_dir, **distilled_set.data_options)
  if info.in_memory:
    return sources.load_numpy(info, split, data_dir)
  return sources.load(info, split, data_dir)


def take(pool, positions):
  """The examples (images, labels) at `positions` of a pool of arrays or a dataset."""
  if isinstance(pool, tf.data.Dataset):
    return class_index.take_positions(pool, positions)
  return np.asarray(pool[0])[positions], np.asarray(pool[1])[positions]


def random_subset(pool, index, ipc, seed):
  """`ipc` random real examples per class (class-sorted), seeded; pool is arrays or a dataset."""
  return take(pool, class_index.sample_per_class(index, ipc, seed))


def _summary(runs):
  """Test accuracy mean ± std over the runs, and validation accuracy mean ± std when measured."""
  accuracies = [r["test_accuracy"] for r in runs]
  summary = {"accuracies": accuracies, "mean": float(np.mean(accuracies)), "std": float(np.std(accuracies))}
  validation = [r["validation_accuracy"] for r in runs]
  if all(v is not None for v in validation):
    summary.update(validation_accuracies=validation, validation_mean=float(np.mean(validation)),
                   validation_std=float(np.std(validation)))
  return {**summary, "runs": runs}


def write_json(path, obj):
  """Writes obj as indented JSON to path atomically (a temp file in the same folder, then a rename)."""
  files.write_json(path, obj)


def _real_sets(distilled_set, config, prep, split, train_data, validation_data, baseline_labeler):
  """What evaluation needs of the real train split: the random subsets of the baseline, one per seed
  ([(images in model space, label rows)], empty when config.baseline is off), the kind of their labels,
  and the validation batches (None without a validation split)."""
  num_classes = distilled_set.labels.shape[1]
  subsets, label_source, validation = [], None, None
  if config.baseline or (split.size and validation_data is None):
    pool = train_data if train_data is not None else _default_real(distilled_set, "train", config.data_dir)
    index = (class_index.class_index_from_dataset(pool, num_classes) if isinstance(pool, tf.data.Dataset)
             else class_index.build_class_index(np.asarray(pool[1]), num_classes))
    index, validation_positions = split.split(index)
    if split.size and validation_data is None:
      validation_data = take(pool, validation_positions)
  if validation_data is not None:
    validation = _batches(validation_data, prep, config.test_batch_size)
  if config.baseline:
    use_labeler = distilled_set.soft and baseline_labeler is not None
    label_source = "baseline_labeler" if use_labeler else "one-hot"
    for k in range(config.num_eval):
      x, y = random_subset(pool, index, distilled_set.ipc, config.seed + k)
      if x.dtype == np.uint8:
        x = prep.apply(x).numpy()
      x = np.asarray(x, np.float32)
      rows = (np.asarray(baseline_labeler(x), np.float32) if use_labeler
              else np.eye(num_classes, dtype=np.float32)[np.asarray(y, np.int64)])
      subsets.append((x, rows))
  return subsets, label_source, validation


def evaluate_distilled(distilled_set, config, *, preprocessor=None, test_data=None, train_data=None,
                       validation_data=None, baseline_labeler: Optional[Callable] = None, out_path=None,
                       logdir=None, step=0):
  """Evaluates a distilled set and the random-subset baseline with the same recipe.

  The set's validation split (`distilled_set.holdout`) is kept out of the baseline's draw, and every
  network is also measured on it ("validation_accuracy"), for selections that must not see the test set.

  Args:
    distilled_set: the DistilledSet.
    config: EvalConfig.
    preprocessor: the set's preprocessor (default: rebuilt from its dict; ZCA sets must pass it).
    test_data: real test (images, labels) or dataset; default the dataset's test split.
    train_data: real train pool for the baseline; default the dataset's train split (positions of the
      set's validation split refer to it).
    validation_data: the validation (images, labels) or dataset; default the set's holdout of the pool.
    baseline_labeler: images [k, h, w, c] (model space) -> [k, C] rows, for soft-label baselines.
    out_path: where to write the results as JSON (atomically), e.g. <run_dir>/eval.json.
    logdir: TensorBoard directory for the accuracy scalars.
    step: TensorBoard step (e.g. the distillation iteration).

  Returns:
    {"distilled": {arch: {"accuracies", "mean", "std", "runs"}}, "random_subset": {...} (or None
    when config.baseline is off), "settings": {...}}.
  """
  start = time.time()
  prep = preprocessor or distilled.resolve_preprocessor(distilled_set)
  images = np.asarray(distilled_set.images, np.float32)
  labels = np.asarray(distilled_set.labels, np.float32)
  num_classes, image_shape = labels.shape[1], images.shape[1:]
  lr = float(config.lr if config.lr is not None else distilled_set.lr)
  if not lr > 0:
    raise errors.UsageError(f"The set's learned α is {lr}, not a usable learning rate; pass lr (--lr) instead.")
  archs = tuple(config.models) or (distilled_set.model["name"],)
  if test_data is None:
    test_data = _default_real(distilled_set, "test", config.data_dir)
  test = _batches(test_data, prep, config.test_batch_size)
  split = holdout.Holdout(**distilled_set.holdout)

  subsets, label_source, validation = _real_sets(distilled_set, config, prep, split, train_data,
                                                 validation_data, baseline_labeler)

  results = {"distilled": {}, "random_subset": {} if config.baseline else None}
  used_kwargs = {}
  for arch in archs:
    kwargs = used_kwargs[arch] = _model_kwargs(distilled_set, arch, config)
    trainers = {}

    def trainer_for(n, arch=arch, kwargs=kwargs, trainers=trainers):
      if n not in trainers:
        trainers[n] = Trainer(arch, kwargs, num_classes, image_shape, n, config)
      return trainers[n]

    runs = [trainer_for(len(labels)).fit(images, labels, lr, config.seed + k, test,
                                         tag=f"[distilled {arch} seed {config.seed + k}]",
                                         validation_batches=validation)
            for k in range(config.num_eval)]
    results["distilled"][arch] = _summary(runs)
    if config.baseline:
      runs = [trainer_for(len(y)).fit(x, y, lr, config.seed + k, test,
                                      tag=f"[random subset {arch} seed {config.seed + k}]",
                                      validation_batches=validation)
              for k, (x, y) in enumerate(subsets)]
      results["random_subset"][arch] = _summary(runs)

  results["settings"] = {
      "metric": METRIC,
      "std": "population standard deviation (ddof 0) over the seeds",
      "dataset": distilled_set.dataset, "ipc": int(distilled_set.ipc), "num_examples": int(len(labels)),
      "num_classes": int(num_classes), "soft_labels": bool(distilled_set.soft), "lr": lr,
      "lr_source": "config.lr" if config.lr is not None else "learned α of the set",
      "seeds": [config.seed + k for k in range(config.num_eval)],
      "random_subset_labels": label_source, "model_kwargs": used_kwargs,
      "holdout": split.to_dict(), "validation": validation is not None,
      "preprocessing": distilled.json_safe(distilled_set.preprocessing),
      "config": distilled.json_safe(dataclasses.asdict(config)),
      "version": tesla_tf.__version__, "seconds": time.time() - start,
  }
  if out_path:
    write_json(out_path, results)
  if logdir:
    _log_scalars(results, logdir, step)
  logging.info("Evaluation:\n%s", format_summary(results))
  return results


def _log_scalars(results, logdir, step):
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for kind in ("distilled", "random_subset"):
      for arch, summary in (results.get(kind) or {}).items():
        tf.summary.scalar(f"eval/{kind}/{arch}/accuracy_mean", summary["mean"], step=step)
        tf.summary.scalar(f"eval/{kind}/{arch}/accuracy_std", summary["std"], step=step)
    tf.summary.text("eval/summary", "```\n" + format_summary(results) + "\n```", step=step)
  writer.flush()


def format_summary(results):
  """A small text table: final-epoch test accuracy (%) mean ± std per architecture, beside the baseline."""
  def cell(summary):
    if not summary:
      return "-"
    return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f} (n={len(summary['accuracies'])})"

  settings = results.get("settings", {})
  lines = [f"{settings.get('dataset', '?')} IPC {settings.get('ipc', '?')}: final-epoch test accuracy %, "
           f"lr {settings.get('lr', float('nan')):.4g}",
           f"{'model':<14}{'distilled':<26}random real subset"
           + {"baseline_labeler": " (teacher labels)", "one-hot": " (one-hot labels)"}.get(
               settings.get("random_subset_labels"), "")]
  for arch, summary in results["distilled"].items():
    lines.append(f"{arch:<14}{cell(summary):<26}{cell((results.get('random_subset') or {}).get(arch))}")
  return "\n".join(lines)


def evaluate_path(path, config, *, baseline_labeler=None, out_path=None, logdir=None):
  """Reads the set at `path` (an export directory or a run directory, distilled.load_any) with its
  preprocessor (needed for the real test set: ZCA matrices are not in the set's dict) and runs
  evaluate_distilled; the entry point of tools/evaluate.py."""
  distilled_set, prep = distilled.load_any(path)
  return evaluate_distilled(distilled_set, config, preprocessor=prep, baseline_labeler=baseline_labeler,
                            out_path=out_path, logdir=logdir)

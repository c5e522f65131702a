"""The outer distillation loop (REFERENCE §2): experts in, a distilled set out, resumable at any point.

A run directory (distill/run_dir.py) is the unit of an experiment: re-running into it resumes from its
last checkpoint, and a resumed run equals an uninterrupted one (all randomness comes from a checkpointed
tf.random.Generator, the expert rotation's place is checkpointed too, and `distill` switches TF's op
determinism on).
"""

import dataclasses
import json
import os
import resource
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from tesla_tf import augment, errors, files, summaries
from tesla_tf import store as store_lib
from tesla_tf.data import distilled
from tesla_tf.distill import history, matching, synthetic
from tesla_tf.distill import labels as labels_lib
from tesla_tf.distill import replicas as replicas_lib
from tesla_tf.distill import run_dir as run_dir_lib

LABEL_MODES = tuple(labels_lib.SOURCES)
PIX_INITS = synthetic.PIX_INITS


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Settings of one distillation run; every field is the tools/distill.py flag of the same name."""
  dataset: str
  store_dir: str
  run_dir: str
  data_dir: Optional[str] = None
  ipc: int = 1
  syn_steps: int = 20
  expert_epochs: int = 2
  max_start_epoch: int = 20
  lr_img: float = 1000.0
  lr_lr: float = 1e-5
  lr_labels: float = 10.0
  label_temperature: float = 1.0       # teacher labels: softmax(z / T)
  label_mix: float = 0.0               # teacher labels: (1 − β)·teacher + β·one-hot class
  lr_teacher: Optional[float] = None   # α₀, the student's initial step size; None = the experts' rate
  batch_syn: int = 0                   # 0 = all n synthetic images
  pix_init: str = "real"
  labels: str = "hard"
  mode: str = "tesla"
  strategy: str = "none"               # the device strategy; "mirrored" splits each student step
  halve_tesla_image_grad: bool = False
  row_chunks: int = 1                  # tesla/exact: each student step on this many row chunks in turn
  precision: str = "float32"           # the student's (and teacher's) layers: a key of models.PRECISIONS
  dsa_strategy: str = augment.STRATEGY  # the DSA families (augment.py), not a device strategy
  iterations: int = 5000
  seed: int = 0
  save_every: int = 100
  log_every: int = 10
  log_images_every: int = 500
  max_image_classes: int = 100
  eval_every: int = 0                  # 0 = only at the end (if eval_models)
  eval_models: tuple = ()
  num_eval: int = 3
  eval_epochs: int = 1000
  max_image_rms: float = 100.0         # stop when the images' RMS exceeds this × the initial set's


DivergenceError = errors.DivergenceError


def _check(config, n):
  """Raises a UsageError naming the flag for settings no run can use (n synthetic images)."""
  if config.labels not in LABEL_MODES:
    raise errors.UsageError(f"--labels must be one of {LABEL_MODES}, got {config.labels!r}.")
  if config.pix_init not in PIX_INITS:
    raise errors.UsageError(f"--pix_init must be one of {PIX_INITS}, got {config.pix_init!r}.")
  if config.labels != "teacher" and (config.label_temperature, config.label_mix) != (1.0, 0.0):
    raise errors.UsageError("--label_temperature and --label_mix shape teacher labels; they need --labels=teacher.")
  if config.halve_tesla_image_grad and config.mode != "tesla":
    raise errors.UsageError("--halve_tesla_image_grad reproduces the public TESLA code; it needs --mode=tesla.")
  if config.batch_syn > n:
    raise errors.UsageError(f"--batch_syn={config.batch_syn} exceeds the {n} synthetic images (--ipc="
                            f"{config.ipc} × {n // config.ipc} classes).")


class Distiller:
  """The synthetic set, its labels, the expert rotation and the compiled iteration, all checkpointable."""

  def __init__(self, config, store=None):
    """store: the TrajectoryStore of config.store_dir when the caller has opened it already."""
    self.config = c = config
    self.teacher_how = labels_lib.TeacherLabels(c.label_temperature, c.label_mix)  # checks them
    self.store = store or store_lib.TrajectoryStore(c.store_dir)
    self.experts = self.store.compatible_with(c.dataset, c.max_start_epoch + c.expert_epochs)
    self.preprocessor, self.holdout = self.store.preprocessor(), self.store.holdout()
    self.fmodel = self.store.build_model(c.precision)
    n = self.store.manifest.num_classes * c.ipc
    _check(c, n)
    self.batch_syn = c.batch_syn or n
    self.replicas = replicas_lib.build(c.strategy, self.batch_syn)
    matching.check_options(c.mode, self.batch_syn, self.replicas is not None, c.row_chunks)
    alpha0 = c.lr_teacher if c.lr_teacher is not None else self.store.manifest.lr_teacher
    if not alpha0 > 0:
      raise errors.UsageError(f"--lr_teacher={alpha0}: the initial step size α must be > 0.")

    self.generator = tf.random.Generator.from_seed(c.seed)
    os.makedirs(c.run_dir, exist_ok=True)  # the class index of the data is cached in the run directory
    initial = synthetic.initial_images(c.pix_init, self.store.dataset_info(c.data_dir), c.data_dir, c.ipc,
                                       c.seed, self.holdout, self.preprocessor, index_dir=c.run_dir)
    self.synthetic = synthetic.SyntheticSet(initial, alpha0)
    self.initial_rms = float(self.synthetic.rms())
    self.hard = labels_lib.hard_labels(self.store.manifest.num_classes, c.ipc)
    self.teacher = label_teacher(c, self.store, self.experts)
    self.labels = labels_lib.SOURCES[c.labels](self.hard, self.fmodel, self.teacher, initial, self.teacher_how)
    self.iteration = tf.Variable(0, dtype=tf.int64, name="iteration")
    self.cycle = tf.Variable(0, dtype=tf.int64, name="expert_cycle")
    self.position = tf.Variable(0, dtype=tf.int64, name="expert_position")
    # No AutoGraph: the step's loops are tf.while_loop already, and converting its source cost ~8 s of
    # every process's first trace (the project's tf.functions all trace without it).
    self.step = tf.function(self._step, reduce_retracing=True, autograph=False)

  @property
  def images(self):
    return self.synthetic.images.var

  def checkpoint_entries(self):
    """{name: trackable}: everything a resumed run needs to continue exactly."""
    return dict(**self.synthetic.checkpoint_dict(), **self.labels.checkpoint_dict(), generator=self.generator,
                iteration=self.iteration, cycle=self.cycle, position=self.position)

  def checkpoint(self):
    """checkpoint_entries as one tf.train.Checkpoint: what a save writes."""
    return tf.train.Checkpoint(**self.checkpoint_entries())


  def _step(self, start, target, seeds):
    """One outer iteration: matching gradients, then SGD(momentum 0.5) on images, α (and labels)."""
    # The images are read once, as a tensor: a gather from the variable itself (the teacher labels of the
    # scheduled rows) would put it in copy-on-read mode, where every read copies the whole set.
    c, images = self.config, self.synthetic.images.var.value()
    schedule = matching.make_schedule(images.shape[0], c.syn_steps, self.batch_syn, seeds[0])
    aug = None
    if c.dsa_strategy != "none":
      aug = augment.sample_steps(c.dsa_strategy, c.syn_steps, [self.batch_syn] + list(images.shape[1:]),
                                 seeds[1])
    labels = self.labels.for_step(images, target, schedule)
    result = matching.matching_gradients(
        self.fmodel, start, target, images, labels, self.synthetic.syn_lr.var.value(), schedule,
        mode=c.mode, augment_params=aug, learn_labels=c.labels == "learned", replicas=self.replicas,
        row_chunks=c.row_chunks)
    if c.halve_tesla_image_grad:
      result = matching.as_public_tesla(result)
    self.synthetic.step(result.images_grad, c.lr_img, result.lr_grad, c.lr_lr)
    # The norm and the RMS in bounded chunks of rows: tf.norm would square the whole gradient at once.
    metrics = {"loss/matching": result.loss, "syn_lr": self.synthetic.syn_lr.var.value(),
               "grad_norm/images": tf.sqrt(synthetic.sum_of_squares(result.images_grad)),
               "grad/syn_lr": result.lr_grad, "images/rms": self.synthetic.rms()}
    if c.labels == "learned":
      metrics["grad_norm/labels"] = self.labels.step(result.labels_grad, c.lr_labels)
    if c.labels != "hard":
      metrics.update(labels_lib.statistics(labels, self.hard, tf.unique(tf.reshape(schedule, [-1]))[0]))
    return metrics

  def iterate(self):
    """The next expert of the store's rotation, t and the seeds drawn on the host, then the compiled
    step; returns its metrics."""
    c = self.config
    expert, cycle, position = self.store.next_in_rotation(c.seed, int(self.cycle.numpy()),
                                                          int(self.position.numpy()))
    self.cycle.assign(cycle)
    self.position.assign(position)
    start_epoch = int(self.generator.uniform([], 0, c.max_start_epoch, dtype=tf.int64).numpy())
    segment = self.store.read(expert, epochs=[start_epoch, start_epoch + c.expert_epochs])
    if not np.isfinite(segment).all():  # verified at start: the file changed under the run
      raise errors.CorruptFileError(
          f"{self.store.path}/expert_{expert:05d}.npy holds NaN/inf at epochs {start_epoch}..."
          f"{start_epoch + c.expert_epochs}; the run stops (skipping the expert would change the rotation "
          "a resumed run replays). Retrain it with tools/train_experts.py, then rerun.")
    seeds = self.generator.make_seeds(2)
    metrics = self.step(tf.constant(segment[0]), tf.constant(segment[1]),
                        tf.transpose(tf.cast(seeds, tf.int32)))
    self.iteration.assign_add(1)
    return {**{k: float(v) for k, v in metrics.items()}, "start_epoch": start_epoch}

  def distilled_set(self):
    """The current images, their delivered labels and α as a DistilledSet."""
    return distilled.DistilledSet(
        images=self.images.numpy(), labels=np.asarray(self.labels.delivered(self.images), np.float32),
        lr=float(self.synthetic.syn_lr.var.numpy()), dataset=self.config.dataset, ipc=self.config.ipc,
        preprocessing=self.preprocessor.to_dict(), model=self.store.manifest.model_spec,
        config=dataclasses.asdict(self.config), holdout=self.holdout.to_dict(),
        class_names=list(self.store.manifest.class_names), data_options=self.store.manifest.data_options)


def label_teacher(config, store, experts):
  """θ of the expert that labels the delivered set: the first of `experts` (the store's compatible ones)
  at the latest target epoch used in distillation (t + M with t = max_start_epoch − 1)."""
  epoch = config.max_start_epoch - 1 + config.expert_epochs
  return tf.constant(store.read(experts[0], epochs=[epoch])[0])


def baseline_labeler(config, fmodel, teacher, hard):
  """Labels for the random-subset baseline of the same kind as the set's (REFERENCE §10): a function
  images [n, h, w, c] -> [n, C] rows of the label teacher θ (`label_teacher`), mixed with the set's
  `hard` rows as the delivered labels are; None for hard labels."""
  if config.labels == "hard":
    return None
  how = labels_lib.TeacherLabels(config.label_temperature, config.label_mix)
  return lambda images: labels_lib.teacher_labels(fmodel, teacher, tf.constant(images), hard, how)


def recorded_baseline_labeler(run_dir):
  """baseline_labeler of the run recorded in <run_dir>/config.json (its store, experts and label
  settings), so that re-evaluating a run draws the same baseline as the run did; None for hard labels, a
  directory without a record, or a store that no longer opens (warned: the baseline is then one-hot)."""
  record = run_dir_lib.read_record(run_dir)
  if record is None or record.get("labels", "hard") == "hard":
    return None
  fields = {f.name for f in dataclasses.fields(DistillConfig)}
  config = DistillConfig(**{k: v for k, v in record.items() if k in fields})
  try:
    store = store_lib.TrajectoryStore(config.store_dir)
    experts = store.compatible_with(config.dataset, config.max_start_epoch + config.expert_epochs)
  except errors.TeslaError as e:
    logging.warning("%s: the random subset gets one-hot labels, not the run's teacher labels (%s).", run_dir, e)
    return None
  return baseline_labeler(config, store.build_model(config.precision), label_teacher(config, store, experts),
                          labels_lib.hard_labels(store.manifest.num_classes, config.ipc))


def _divergence(metrics, config, initial_rms):
  """What left finite, sane values (the loss, α or the images' RMS) and the flag to lower; None if all
  is well."""
  loss, lr, rms = metrics["loss/matching"], metrics["syn_lr"], metrics["images/rms"]
  if not np.isfinite(loss):
    return f"the matching loss became {loss}", f"--lr_img (now {config.lr_img}) or --max_start_epoch"
  if not (np.isfinite(lr) and lr > 0):
    return f"the learned step size α became {lr}", f"--lr_lr (now {config.lr_lr}) or --lr_img"
  if not (np.isfinite(rms) and rms <= config.max_image_rms * max(initial_rms, 1e-12)):
    return (f"the synthetic images' RMS became {rms:.4g}, beyond --max_image_rms={config.max_image_rms:g} × "
            f"the initial set's {initial_rms:.4g}", f"--lr_img (now {config.lr_img})")
  return None


def _log_grid(distiller, step):
  """TensorBoard's image grid of the synthetic set after `step` iterations (in pixel space); only the
  shown rows are converted."""
  c = distiller.config
  rows = summaries.tile_rows(distiller.images.shape[0], c.ipc, c.max_image_classes)
  # A gather from the tensor, not the variable: a gather from a variable puts it in copy-on-read mode,
  # where every later read of the whole variable copies it.
  tiles = tf.gather(tf.convert_to_tensor(distiller.images), rows)
  tf.summary.image("synthetic", summaries.class_grid(distiller.preprocessor.invert(tiles)), step=step)


def distill(config):
  """Runs (or resumes) a distillation into config.run_dir, exports the distilled set and, when
  config.eval_models is set, evaluates it every config.eval_every iterations and at the end.

  The run directory is locked for the whole call; a resume must keep the recorded SHAPE_FIELDS settings.
  Op determinism is switched on (a resumed run equals an uninterrupted one from the tool, a test or a
  notebook alike).

  Returns:
    The final DistilledSet (also exported to <run_dir>/distilled).
  """
  if not config.run_dir or (os.path.exists(config.run_dir) and not os.path.isdir(config.run_dir)):
    raise errors.UsageError(f"--run_dir={config.run_dir!r}: expected a directory (new or of an earlier run).")
  tf.config.experimental.enable_op_determinism()
  os.makedirs(config.run_dir, exist_ok=True)
  with run_dir_lib.Lock(config.run_dir):
    store = store_lib.TrajectoryStore(config.store_dir)
    settings = dataclasses.asdict(config)
    record = json.loads(json.dumps({**settings, "model": store.manifest.model_spec}))
    run_dir_lib.check_resume(config.run_dir, record)
    distiller = Distiller(config, store)
    run_dir_lib.write_record(config.run_dir, record, run_dir_lib.as_flags(settings))
    files.remove_stale_temps(config.run_dir, distilled.EXPORT_DIR)  # of an export that was killed
    return _run(config, distiller)


def _run(config, distiller):
  """The recipe: restore, then per iteration the step and every(n) blocks; export; final evaluation."""
  run_dir = config.run_dir
  evaluate = history.evaluator(config, distiller.preprocessor,
                               baseline_labeler(config, distiller.fmodel, distiller.teacher, distiller.hard))
  ckpt_dir = os.path.join(run_dir, run_dir_lib.CHECKPOINT_DIR)
  manager = tf.train.CheckpointManager(distiller.checkpoint(), ckpt_dir, max_to_keep=3)
  saved = run_dir_lib.restore_newest(distiller.checkpoint_entries(), ckpt_dir)
  first = int(distiller.iteration.numpy())
  if saved:
    logging.info("Resumed from %s at iteration %d.", saved, first)
  else:  # a run that diverges at once still has a checkpoint to resume from with other settings
    saved = manager.save(checkpoint_number=0)
  saved_at = first
  every = lambda n, it: it % n == 0 or it == config.iterations  # noqa: E731
  writer = tf.summary.create_file_writer(os.path.join(run_dir, run_dir_lib.TENSORBOARD_DIR))
  with writer.as_default():
    if first == 0:
      summaries.flags_text(run_dir_lib.as_flags(dataclasses.asdict(config)))
    if (evaluate and config.eval_every and 0 < first < config.iterations and first % config.eval_every == 0
        and first not in history.iterations(run_dir)):  # killed between checkpoint and evaluation
      summaries.scalars(evaluate(distiller.distilled_set(), first, final=False), first)
    tick = time.time()
    for it in range(first + 1, config.iterations + 1):
      if (it - 1) % config.log_images_every == 0:
        _log_grid(distiller, it - 1)
      metrics = distiller.iterate()
      problem = _divergence(metrics, config, distiller.initial_rms)
      if problem:
        raise DivergenceError(f"Iteration {it}: {problem[0]}. Lower {problem[1]}; rerunning resumes from "
                              f"checkpoint {saved} (iteration {saved_at}), the newest before the divergence.")
      if every(config.log_every, it):
        _log_metrics(metrics, it, config.iterations, (it - first) / max(time.time() - tick, 1e-9))
      if every(config.save_every, it):
        saved, saved_at = manager.save(checkpoint_number=it), it
      if evaluate and config.eval_every and it % config.eval_every == 0 and it < config.iterations:
        summaries.scalars(evaluate(distiller.distilled_set(), it, final=False), it)
    _log_grid(distiller, config.iterations)  # the delivered set
    result = distiller.distilled_set()
    distilled.export(result, os.path.join(run_dir, distilled.EXPORT_DIR), preprocessor=distiller.preprocessor)
    if evaluate:
      summaries.scalars(evaluate(result, config.iterations, final=True), config.iterations)
  writer.flush()
  return result


def _log_metrics(metrics, it, iterations, rate):
  """The iteration's scalars to TensorBoard and one progress line (rate, ETA, peak RSS) to the log."""
  peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  summaries.scalars({**metrics, "perf/iterations_per_s": rate, "perf/peak_rss_gb": peak_gb}, it)
  eta = (iterations - it) / max(rate, 1e-9)
  logging.info("it %d/%d  loss %.4f  α %.5f  start %d  %.2f it/s  ETA %dm%02ds  peak RSS %.2f GB", it,
               iterations, metrics["loss/matching"], metrics["syn_lr"], metrics["start_epoch"], rate,
               eta // 60, eta % 60, peak_gb)

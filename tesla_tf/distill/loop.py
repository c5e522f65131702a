"""The outer distillation loop (REFERENCE §2): experts in, a distilled set out, resumable at any point.

A run directory is the unit of an experiment: re-running into it resumes from its last checkpoint, and a
resumed run equals an uninterrupted one (all randomness comes from a checkpointed tf.random.Generator and
the expert rotation state is checkpointed too).
"""

import dataclasses
import glob
import json
import os
import re
import resource
import shutil
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from tesla_tf import augment, errors, evaluate, files, summaries
from tesla_tf import store as store_lib
from tesla_tf.data import class_index, distilled, holdout, sources
from tesla_tf.distill import history
from tesla_tf.distill import labels as labels_lib
from tesla_tf.distill import matching
from tesla_tf.distill import run_dir as run_dir_lib
from tesla_tf.distill import replicas as replicas_lib
from tesla_tf.distill.synthetic import sgd_momentum

LABEL_MODES = ("hard", "teacher", "learned")
PIX_INITS = ("real", "noise")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Settings of one distillation run; field names follow the field's flags (REFERENCE §8)."""
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
  lr_teacher: Optional[float] = None   # α₀; None = the experts' learning rate
  batch_syn: int = 0                   # 0 = all n synthetic images
  pix_init: str = "real"
  labels: str = "hard"
  mode: str = "tesla"
  strategy: str = "none"               # "mirrored": split each student step over the local devices
  halve_tesla_image_grad: bool = False
  row_chunks: int = 1                  # tesla/exact: each student step on this many row chunks in turn
  dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
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
  flags_text: str = ""


DivergenceError = errors.DivergenceError  # the loss, α or the images left finite, sane values


class Distiller:
  """The learnable set, its optimiser state and the compiled iteration, all checkpointable."""

  def __init__(self, config):
    self.config = config
    if config.labels not in LABEL_MODES:
      raise errors.UsageError(f"--labels must be one of {LABEL_MODES}, got {config.labels!r}.")
    if config.pix_init not in PIX_INITS:
      raise errors.UsageError(f"--pix_init must be one of {PIX_INITS}, got {config.pix_init!r}.")
    self.teacher_how = labels_lib.TeacherLabels(config.label_temperature, config.label_mix)
    if config.labels != "teacher" and self.teacher_how != labels_lib.TeacherLabels():
      raise errors.UsageError("--label_temperature and --label_mix shape teacher labels; they need --labels=teacher.")
    self.store = store_lib.TrajectoryStore(config.store_dir)
    manifest = self.store.manifest
    self.info = sources.get_info(config.dataset)
    self.experts = self.store.compatible_with(config.dataset, config.max_start_epoch + config.expert_epochs)
    self.preprocessor = self.store.preprocessor()
    self.holdout = self.store.holdout()
    self.model_spec = manifest.model_spec
    self.fmodel = self.store.build_model()

    num_classes, n = self.info.num_classes, self.info.num_classes * config.ipc
    self.batch_syn = config.batch_syn or n
    if self.batch_syn > n:
      raise errors.UsageError(f"--batch_syn={config.batch_syn} exceeds the {n} synthetic images "
                              f"(--ipc={config.ipc} × {num_classes} classes).")
    self.replicas = replicas_lib.build(config.strategy, self.batch_syn)
    matching.check_options(config.mode, self.batch_syn, self.replicas is not None, config.row_chunks)
    self.generator = tf.random.Generator.from_seed(config.seed)
    initial = self._initial_images()
    self.initial_rms = float(tf.sqrt(tf.reduce_mean(tf.square(initial))))
    self.images = tf.Variable(initial, name="images")
    self.images_buf = tf.Variable(tf.zeros_like(self.images), name="images_momentum")
    alpha0 = config.lr_teacher if config.lr_teacher is not None else manifest.lr_teacher
    if not alpha0 > 0:
      raise errors.UsageError(f"--lr_teacher={alpha0}: the initial step size α must be > 0.")
    self.syn_lr = tf.Variable(float(alpha0), dtype=tf.float32, name="syn_lr")
    self.syn_lr_buf = tf.Variable(0.0, name="syn_lr_momentum")
    self.hard = labels_lib.hard_labels(num_classes, config.ipc)
    self.label_logits = self.label_buf = None
    if config.labels == "learned":
      logits = self.fmodel.apply(self.label_teacher(), self.images, training=False)
      self.label_logits = tf.Variable(logits, name="label_logits")
      self.label_buf = tf.Variable(tf.zeros_like(logits), name="label_momentum")
    self.iteration = tf.Variable(0, dtype=tf.int64, name="iteration")
    self.cycle = tf.Variable(0, dtype=tf.int64, name="expert_cycle")
    self.position = tf.Variable(0, dtype=tf.int64, name="expert_position")
    self.step = tf.function(self._step, reduce_retracing=True)

  # -- set-up ------------------------------------------------------------------------------------
  def _initial_images(self):
    """IPC real training images per class, never from the validation split (model space, class-sorted),
    or N(0, 1) noise."""
    c = self.config
    shape = (self.info.num_classes * c.ipc,) + tuple(self.info.image_shape)
    if c.pix_init == "noise":
      return tf.random.stateless_normal(shape, seed=[c.seed, 7])
    rest, _ = self.holdout.split(holdout.train_index(c.dataset, c.data_dir, c.store_dir))
    positions = class_index.sample_per_class(rest, c.ipc, c.seed)
    images, _ = class_index.take_positions(sources.load(c.dataset, "train", c.data_dir), positions)
    return tf.cast(self.preprocessor.apply(images), tf.float32)

  def label_teacher(self):
    """θ of the expert that labels the delivered set: the first expert at the latest target epoch
    used in distillation (t + M with t = max_start_epoch − 1)."""
    epoch = self.config.max_start_epoch - 1 + self.config.expert_epochs
    return tf.constant(self.store.read(self.experts[0], epochs=[epoch])[0])

  def checkpoint(self):
    """Everything a resumed run needs to continue exactly."""
    state = dict(images=self.images, images_buf=self.images_buf, syn_lr=self.syn_lr,
                 syn_lr_buf=self.syn_lr_buf, generator=self.generator, iteration=self.iteration,
                 cycle=self.cycle, position=self.position)
    if self.label_logits is not None:
      state.update(label_logits=self.label_logits, label_buf=self.label_buf)
    return tf.train.Checkpoint(**state)

  # -- one iteration -----------------------------------------------------------------------------
  def next_expert(self):
    """The next expert of the seeded rotation (a fresh shuffle every cycle through the store)."""
    order = self.store.order(self.config.seed, int(self.cycle.numpy()))
    index = order[int(self.position.numpy())]
    self.position.assign_add(1)
    if int(self.position.numpy()) == len(order):
      self.position.assign(0)
      self.cycle.assign_add(1)
    return index

  def _labels(self, target, schedule):
    """Ỹ of this iteration ([n, C] probability rows) and the tape source for learned labels."""
    if self.config.labels == "teacher":
      return labels_lib.teacher_labels_for_schedule(self.fmodel, target, self.images, schedule, self.hard,
                                                    self.teacher_how)
    if self.config.labels == "learned":
      return tf.nn.softmax(self.label_logits)
    return self.hard

  def _step(self, start, target, seeds):
    """One outer iteration: matching gradients, then SGD(momentum 0.5) on images, α (and labels)."""
    c = self.config
    n = self.images.shape[0]
    schedule = matching.make_schedule(n, c.syn_steps, self.batch_syn, seeds[0])
    aug = None
    if c.dsa_strategy != "none":
      aug = augment.sample_steps(c.dsa_strategy, c.syn_steps,
                                          [self.batch_syn] + list(self.images.shape[1:]), seeds[1])
    with tf.GradientTape() as tape:
      labels = self._labels(target, schedule)
    result = matching.matching_gradients(
        self.fmodel, start, target, self.images.value(), labels, self.syn_lr.value(), schedule,
        mode=c.mode, augment_params=aug, learn_labels=c.labels == "learned",
        replicas=self.replicas, row_chunks=c.row_chunks)
    if c.halve_tesla_image_grad:
      result = matching.as_public_tesla(result)
    sgd_momentum(self.images, self.images_buf, result.images_grad, c.lr_img)
    sgd_momentum(self.syn_lr, self.syn_lr_buf, result.lr_grad, c.lr_lr)
    metrics = {"loss/matching": result.loss, "syn_lr": self.syn_lr.value(),
               "grad_norm/images": tf.norm(result.images_grad), "grad/syn_lr": result.lr_grad,
               "images/rms": tf.sqrt(tf.reduce_mean(tf.square(self.images)))}
    if c.labels == "learned":
      logits_grad = tape.gradient(labels, self.label_logits, output_gradients=result.labels_grad)
      sgd_momentum(self.label_logits, self.label_buf, logits_grad, c.lr_labels)
      metrics["grad_norm/labels"] = tf.norm(logits_grad)
    if c.labels != "hard":
      metrics.update(labels_lib.statistics(labels, self.hard, tf.unique(tf.reshape(schedule, [-1]))[0]))
    return metrics

  def iterate(self):
    """Draws the expert, t and the seeds on the host, runs the compiled step; returns its metrics."""
    c = self.config
    expert = self.next_expert()
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
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["start_epoch"] = start_epoch
    return metrics

  # -- what is delivered -------------------------------------------------------------------------
  def distilled_set(self):
    """The current images, their labels (teacher / learned / hard) and α as a DistilledSet."""
    if self.config.labels == "teacher":
      label_rows = labels_lib.teacher_labels(self.fmodel, self.label_teacher(), self.images, self.hard,
                                             self.teacher_how)
    elif self.config.labels == "learned":
      label_rows = tf.nn.softmax(self.label_logits)
    else:
      label_rows = self.hard
    return distilled.DistilledSet(
        images=self.images.numpy(), labels=np.asarray(label_rows, np.float32),
        lr=float(self.syn_lr.numpy()), dataset=self.config.dataset, ipc=self.config.ipc,
        preprocessing=self.preprocessor.to_dict(), model=self.model_spec,
        config=dataclasses.asdict(self.config), holdout=self.holdout.to_dict())


def _peak_rss_gb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _check_divergence(metrics, config, initial_rms, iteration, checkpoint):
  """Raises DivergenceError when the loss, α or the images left finite, sane values.

  Args:
    metrics: the iteration's metrics.
    config: the DistillConfig.
    iteration: the iteration just run (1-based).
    initial_rms: RMS of the initial images (model space).
    checkpoint: (path, iteration) of the newest checkpoint, which a rerun resumes from.
  """
  loss, lr, rms = metrics["loss/matching"], metrics["syn_lr"], metrics["images/rms"]
  if not np.isfinite(loss):
    problem, remedy = f"the matching loss became {loss}", f"--lr_img (now {config.lr_img}) or --max_start_epoch"
  elif not (np.isfinite(lr) and lr > 0):
    problem, remedy = f"the learned step size α became {lr}", f"--lr_lr (now {config.lr_lr}) or --lr_img"
  elif not (np.isfinite(rms) and rms <= config.max_image_rms * max(initial_rms, 1e-12)):
    problem = (f"the synthetic images' RMS became {rms:.4g}, beyond --max_image_rms={config.max_image_rms:g} "
               f"× the initial set's {initial_rms:.4g}")
    remedy = f"--lr_img (now {config.lr_img})"
  else:
    return
  path, saved_at = checkpoint
  raise DivergenceError(f"Iteration {iteration}: {problem}. Lower {remedy}; rerunning resumes "
                        f"from checkpoint {path} (iteration {saved_at}), the newest before the divergence.")


def _restore(checkpoint, directory):
  """Restores the newest checkpoint in `directory` that reads, falling back to older ones.

  Returns:
    The path restored, or None when the directory holds no checkpoint.

  Raises:
    CorruptFileError: checkpoints exist but none can be read.
  """
  paths = sorted(glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")),
                 key=lambda p: int(re.search(r"ckpt-(\d+)\.index$", p).group(1)), reverse=True)
  problems = []
  for index_path in paths:
    path = index_path[:-len(".index")]
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
      return path
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      problems.append(f"{path}: {str(getattr(e, 'message', e)).splitlines()[0]}")
      logging.warning("Checkpoint %s cannot be read (%s); trying the one before.", path, problems[-1])
  if problems:
    raise errors.CorruptFileError(f"No checkpoint in {directory} can be read ({'; '.join(problems)}). "
                                  "Move the directory aside to start the run again.")
  return None


def _evaluator(config, distiller):
  """A function (distilled_set, step, final) -> scalars evaluating the set (and, when final, the
  random-subset baseline, REFERENCE §7) on config.eval_models, recording it in eval_history.json and
  eval.json; None without eval_models."""
  if not config.eval_models:
    return None
  eval_config = evaluate.EvalConfig(models=tuple(config.eval_models), num_eval=config.num_eval,
                                    epochs=config.eval_epochs, augment_strategy=config.dsa_strategy,
                                    seed=config.seed, data_dir=config.data_dir)
  teacher = distiller.label_teacher()

  def labeler(images):  # the baseline (class-sorted like the set) gets the same kind of labels (REFERENCE §10)
    return labels_lib.teacher_labels(distiller.fmodel, teacher, tf.constant(images), distiller.hard,
                                     distiller.teacher_how)

  def run(distilled_set, step, final):
    # The baseline does not change with the iteration: measured once, at the end.
    results = evaluate.evaluate_distilled(
        distilled_set, dataclasses.replace(eval_config, baseline=final), preprocessor=distiller.preprocessor,
        baseline_labeler=labeler if config.labels != "hard" else None,
        out_path=os.path.join(config.run_dir, "eval.json") if final else None)
    scalars = {}
    for kind in ("distilled", "random_subset"):
      for arch, summary in (results.get(kind) or {}).items():
        for key, name in history.SCALARS.items():
          if key in summary:
            scalars[f"eval/{kind}/{arch}/{name}"] = summary[key]
    for arch, best in history.record(config.run_dir, step, results).items():
      if best is None:
        continue
      scalars[f"eval/distilled/{arch}/val_selected_test_accuracy_mean"] = best["mean"]
      scalars[f"eval/distilled/{arch}/val_selected_iteration"] = best["iteration"]
      logging.info("[eval it %d] %s distilled: test %.2f %%; best on validation: iteration %d (validation "
                   "%.2f %%, test %.2f %%)", step, arch, 100 * results["distilled"][arch]["mean"],
                   best["iteration"], 100 * best["validation_mean"], 100 * best["mean"])
    return scalars

  return run


def _log_grid(distiller, step):
  """TensorBoard's image grid of the synthetic set after `step` iterations (in pixel space)."""
  pixels = distiller.preprocessor.invert(distiller.images)
  tf.summary.image("synthetic", summaries.class_grid(pixels, distiller.config.ipc,
                                                     distiller.config.max_image_classes), step=step)


def run_record(config, model_spec):
  """The settings recorded in <run_dir>/config.json and compared on resume (run_dir.check_resume)."""
  record = {k: v for k, v in dataclasses.asdict(config).items() if k != "flags_text"}
  return json.loads(json.dumps({**record, "model": model_spec}))


def distill(config):
  """Runs (or resumes) a distillation into config.run_dir, exports the distilled set and, when
  config.eval_models is set, evaluates it every config.eval_every iterations and at the end.

  The run directory is locked for the whole call; a resume must keep the recorded SHAPE_FIELDS settings.

  Returns:
    The final DistilledSet (also exported to <run_dir>/distilled).
  """
  if not config.run_dir or (os.path.exists(config.run_dir) and not os.path.isdir(config.run_dir)):
    raise errors.UsageError(f"--run_dir={config.run_dir!r}: expected a directory (new or of an earlier run).")
  os.makedirs(config.run_dir, exist_ok=True)
  with run_dir_lib.Lock(config.run_dir):
    store = store_lib.TrajectoryStore(config.store_dir)
    record = run_record(config, store.manifest.model_spec)
    run_dir_lib.check_resume(config.run_dir, record)
    distiller = Distiller(config)
    run_dir_lib.write_record(config.run_dir, record, config.flags_text)
    files.remove_stale_temps(config.run_dir, distilled.EXPORT_DIR)
    return _run(config, distiller)


def _run(config, distiller):
  evaluate_fn = _evaluator(config, distiller)
  checkpoint_dir = os.path.join(config.run_dir, "checkpoints")
  for partial in glob.glob(os.path.join(glob.escape(checkpoint_dir), "ckpt-*_temp")):
    shutil.rmtree(partial, ignore_errors=True)  # a save that was killed or ran out of disk
  manager = tf.train.CheckpointManager(distiller.checkpoint(), checkpoint_dir, max_to_keep=3)
  restored = _restore(distiller.checkpoint(), checkpoint_dir)
  if restored:
    logging.info("Resumed from %s at iteration %d.", restored, int(distiller.iteration.numpy()))
  else:  # a run that diverges at once still has a checkpoint to resume from with other settings
    restored = manager.save(checkpoint_number=0)
  saved = (restored, int(distiller.iteration.numpy()))
  writer = tf.summary.create_file_writer(os.path.join(config.run_dir, "tensorboard"))
  with writer.as_default():
    if int(distiller.iteration.numpy()) == 0:
      summaries.flags_text(config.flags_text or json.dumps(dataclasses.asdict(config), indent=1))
    first, tick = int(distiller.iteration.numpy()), time.time()
    if (evaluate_fn and config.eval_every and 0 < first < config.iterations and first % config.eval_every == 0
        and first not in history.iterations(config.run_dir)):  # killed between checkpoint and evaluation
      summaries.scalars(evaluate_fn(distiller.distilled_set(), first, final=False), first)
    while int(distiller.iteration.numpy()) < config.iterations:
      it = int(distiller.iteration.numpy())
      if it % config.log_images_every == 0:
        _log_grid(distiller, it)
      metrics = distiller.iterate()
      done = it + 1
      _check_divergence(metrics, config, distiller.initial_rms, done, saved)
      if done % config.log_every == 0 or done == config.iterations:
        rate = (done - first) / max(time.time() - tick, 1e-9)
        metrics.update({"perf/iterations_per_s": rate, "perf/peak_rss_gb": _peak_rss_gb()})
        summaries.scalars(metrics, done)
        eta = (config.iterations - done) / max(rate, 1e-9)
        logging.info("it %d/%d  loss %.4f  α %.5f  start %d  %.2f it/s  ETA %dm%02ds  peak RSS %.2f GB",
                     done, config.iterations, metrics["loss/matching"], metrics["syn_lr"],
                     metrics["start_epoch"], rate, eta // 60, eta % 60, metrics["perf/peak_rss_gb"])
      if done % config.save_every == 0 or done == config.iterations:
        saved = (manager.save(checkpoint_number=done), done)
      if evaluate_fn and config.eval_every and done % config.eval_every == 0 and done < config.iterations:
        summaries.scalars(evaluate_fn(distiller.distilled_set(), done, final=False), done)
    _log_grid(distiller, config.iterations)  # the delivered set
    result = distiller.distilled_set()
    distilled.export(result, os.path.join(config.run_dir, distilled.EXPORT_DIR),
                     preprocessor=distiller.preprocessor)
    if evaluate_fn:
      summaries.scalars(evaluate_fn(result, config.iterations, final=True), config.iterations)
  writer.flush()
  return result

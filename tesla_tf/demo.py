"""The end-to-end demo behind `make demo`: experts → TESLA distillation → evaluation → export.

Real Fashion-MNIST, small enough for a 2-core CPU in minutes: a few narrow ConvNet experts on a subset of
the train set (its validation split held out), IPC 1 in tesla mode, then the distilled set against a
random real subset of the same size trained by the same recipe with the same kind of labels.
"""

import dataclasses
import json
import os
import time

from absl import logging

from tesla_tf import experts
from tesla_tf.data import sources
from tesla_tf.distill import labels as labels_lib
from tesla_tf.distill import loop


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Sizes of the demo; the defaults fit `make demo`'s 15-minute budget on 2 CPU cores."""
  workdir: str = "demo_run"
  data_dir: str | None = None
  download: bool = False   # let TFDS download Fashion-MNIST when no IDX copy is found
  width: int = 32
  num_experts: int = 3
  expert_epochs_trained: int = 5
  max_train_examples: int = 30000
  ipc: int = 1
  syn_steps: int = 20
  expert_epochs: int = 2
  max_start_epoch: int = 3
  lr_img: float = 100.0
  lr_lr: float = 1e-5
  labels: str = "teacher_mix0.5"   # a key of labels.VARIANTS; chosen on validation (LABEL_REASONS)
  iterations: int = 300
  num_eval: int = 3
  eval_epochs: int = 300
  seed: int = 0


def run_demo(config):
  """Trains experts if the store lacks them, distils, evaluates, exports; returns the eval results."""
  start = time.time()
  store_dir = os.path.join(config.workdir, "experts")
  run_dir = os.path.join(config.workdir, "run")
  if config.download:  # the IDX files when present, else a TFDS copy (prepared here once, then reused)
    for split in ("train", "test"):
      sources.load("fashion_mnist", split, config.data_dir, download=True)
  logging.info("[1/3] Experts: %d × ConvNet(width %d) on %d Fashion-MNIST images, %d epochs -> %s",
               config.num_experts, config.width, config.max_train_examples, config.expert_epochs_trained,
               store_dir)
  experts.train_experts(experts.ExpertConfig(
      dataset="fashion_mnist", store_dir=store_dir, data_dir=config.data_dir, model="convnet",
      model_kwargs={"width": config.width}, num_experts=config.num_experts,
      epochs=config.expert_epochs_trained, max_train_examples=config.max_train_examples, seed=config.seed,
      verbose=2))
  experts_done = time.time()
  logging.info("[2/3] Distilling IPC %d (tesla mode, %s labels), %d iterations -> %s", config.ipc,
               config.labels, config.iterations, run_dir)
  loop.distill(loop.DistillConfig(
      dataset="fashion_mnist", store_dir=store_dir, run_dir=run_dir, data_dir=config.data_dir,
      ipc=config.ipc, syn_steps=config.syn_steps, expert_epochs=config.expert_epochs,
      max_start_epoch=config.max_start_epoch, lr_img=config.lr_img, lr_lr=config.lr_lr,
      mode="tesla", iterations=config.iterations, seed=config.seed, save_every=100, log_every=25,
      log_images_every=100, eval_models=("convnet",), num_eval=config.num_eval,
      eval_epochs=config.eval_epochs, **labels_lib.VARIANTS[config.labels]))
  with open(os.path.join(run_dir, "eval.json")) as f:
    results = json.load(f)
  results["demo_seconds"] = {"experts": round(experts_done - start, 1),
                             "distill_and_eval": round(time.time() - experts_done, 1)}
  return results


# Validation accuracy at IPC 1 (docs/quality.md, tesla, T⁺ 2, mean of 2 distillation seeds)
LABEL_REASONS = {
    "teacher_mix0.5": "TESLA's teacher labels mixed half and half with the one-hot class (--label_mix=0.5), "
                      "the best of the variants on the validation split at IPC 1 (75.3 % against hard "
                      "74.9 % and plain teacher 70.2 %, docs/quality.md); plain teacher labels lost a class "
                      "whenever the early expert gave its only image another class",
    "hard": "hard one-hot labels (74.9 % on the validation split at IPC 1, docs/quality.md)",
    "teacher": "TESLA's plain teacher labels (70.2 % on the validation split at IPC 1, docs/quality.md: a "
               "class is lost when the teacher gives its only image another class)",
}


def verdict(distilled, random):
  """How the distilled set compares with the random subset: the margin in points and in noise units."""
  margin = 100 * (distilled["mean"] - random["mean"])
  noise = 100 * max(distilled["std"], random["std"])
  times = f"{margin / noise:.1f}× the larger std" if noise > 0 else "no spread measured"
  if margin >= 10 and margin > 3 * noise:
    return f"beats the random subset by {margin:.1f} points ({times}): a clear win"
  if margin > 0:
    return f"is above the random subset by {margin:.1f} points ({times}), less than a clear win"
  return f"does NOT beat the random subset ({margin:+.1f} points)"


def summary(results, config):
  """The lines `make demo` prints at the end."""
  distilled, random = results["distilled"]["convnet"], results["random_subset"]["convnet"]
  run_dir = os.path.join(config.workdir, "run")

  def cell(r):
    val = (f", validation {100 * r['validation_mean']:.2f} ± {100 * r['validation_std']:.2f} %"
           if "validation_mean" in r else "")
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} %{val}"

  return "\n".join([
      f"Fashion-MNIST, IPC {config.ipc}, ConvNet(width {config.width}), final-epoch test accuracy over "
      f"{config.num_eval} fresh networks ({config.eval_epochs} epochs), after {config.iterations} iterations:",
      f"  distilled (TESLA, {config.labels} labels): {cell(distilled)}",
      f"  random real subset (same labels): {cell(random)}",
      f"  -> the distilled set {verdict(distilled, random)}.",
      f"Labels: {LABEL_REASONS.get(config.labels, config.labels)}.",
      f"Time: experts {results['demo_seconds']['experts']} s, distillation + evaluation "
      f"{results['demo_seconds']['distill_and_eval']} s.",
      f"Distilled set (TFRecords + metadata.json): {os.path.join(run_dir, 'distilled')}",
      f"Evaluation: {os.path.join(run_dir, 'eval.json')}",
      f"TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}",
  ])

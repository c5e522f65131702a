"""What `make demo` reports. The demo itself is the two quickstart commands (tools/demo.py runs them):

  python tools/train_experts.py --flagfile=configs/experts_quickstart.cfg
  python tools/distill.py --flagfile=configs/quickstart.cfg

real Fashion-MNIST, small enough for a 2-core CPU in minutes: a few narrow ConvNet experts on a subset of
the train set (its validation split held out), IPC 1 in tesla mode, then the distilled set against a
random real subset of the same size trained by the same recipe with the same kind of labels.
"""

import os

from tesla_tf import files
from tesla_tf.distill import labels as labels_lib


def variant(settings):
  """The labels.VARIANTS name of a run's label settings (its config.json), else its --labels value."""
  for name, fields in labels_lib.VARIANTS.items():
    defaults = {"label_mix": 0.0, "label_temperature": 1.0}
    if all(settings.get(k) == v for k, v in {**defaults, **fields}.items()):
      return name
  return settings["labels"]


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


def summary(run_dir, seconds):
  """The lines `make demo` prints at the end, from the run directory's records (config.json, eval.json)."""
  settings = files.read_json(os.path.join(run_dir, "config.json"))
  results = files.read_json(os.path.join(run_dir, "eval.json"))
  distilled, random = results["distilled"]["convnet"], results["random_subset"]["convnet"]
  labels = variant(settings)

  def cell(r):
    val = (f", validation {100 * r['validation_mean']:.2f} ± {100 * r['validation_std']:.2f} %"
           if "validation_mean" in r else "")
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} %{val}"

  return "\n".join([
      f"Fashion-MNIST, IPC {settings['ipc']}, ConvNet(width {settings['model'].get('width')}), final-epoch "
      f"test accuracy over {settings['num_eval']} fresh networks ({settings['eval_epochs']} epochs), after "
      f"{settings['iterations']} iterations:",
      f"  distilled (TESLA, {labels} labels): {cell(distilled)}",
      f"  random real subset (same labels): {cell(random)}",
      f"  -> the distilled set {verdict(distilled, random)}.",
      f"Labels: {LABEL_REASONS.get(labels, labels)}.",
      f"Time: experts {seconds['experts']:.1f} s, distillation + evaluation {seconds['distill']:.1f} s.",
      f"Distilled set (TFRecords + metadata.json): {os.path.join(run_dir, 'distilled')}",
      f"Evaluation: {os.path.join(run_dir, 'eval.json')}",
      f"TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}",
  ])

"""Evaluate a distilled set (REFERENCE §7) beside the random-real-subset baseline; writes eval.json.

  python tools/evaluate.py --run_dir=RUN_DIR                      # RUN_DIR/distilled -> RUN_DIR/eval.json
  python tools/evaluate.py --distilled_dir=EXPORT_DIR --models=convnet,alexnet --num_eval=5

Reports the final-epoch test accuracy (mean ± std over --num_eval fresh networks) of every model, and the
same recipe on a random real subset of the same size (a run's soft-label set: labelled by the run's teacher,
read from its --store_dir; an export's: one-hot). Results also go to TensorBoard (<run_dir>/tensorboard).
"""

import os

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf import augment
from tesla_tf import evaluate
from tesla_tf import models
from tesla_tf.distill import loop

# io
flags.DEFINE_string("run_dir", "", "Run directory: reads <run_dir>/distilled, writes <run_dir>/eval.json and "
                    "<run_dir>/tensorboard.")
flags.DEFINE_string("distilled_dir", "", "An export directory (holding metadata.json, written by a run or "
                    "tools/export.py) to evaluate instead of a run's.")
flags.DEFINE_string("out", "", "Results file (default <run_dir>/eval.json, else <distilled_dir>/eval.json).")
flags.DEFINE_string("logdir", "", "TensorBoard directory (default <run_dir>/tensorboard; none without run_dir).")
# data
flags.DEFINE_string("data_dir", None, "Where the real dataset lives (default: its standard place).")
# evaluation
flags.DEFINE_list("models", [], "Architectures to train (default: the set's distillation architecture).")
flags.DEFINE_integer("num_eval", 5, "Fresh networks per architecture.", lower_bound=1)
flags.DEFINE_integer("epochs", 1000, "Training epochs (lr x0.1 from epochs // 2).", lower_bound=1)
flags.DEFINE_integer("batch_size", 256, "Training minibatch size.", lower_bound=1)
flags.DEFINE_float("lr", None, "Learning rate (default: the set's learned α).", lower_bound=0.0)
flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0)
flags.DEFINE_float("weight_decay", 5e-4, "SGD weight decay.", lower_bound=0.0)
flags.DEFINE_string("dsa_strategy", augment.STRATEGY, "DSA families joined by '_', or 'none'.")
flags.DEFINE_bool("baseline", True, "Also evaluate a random real subset of the same size.")
flags.DEFINE_integer("eval_test_every", 0, "Also record test accuracy every this many epochs (0 = final only).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "First seed (weights, batch order, augmentation, baseline subset).")
flags.DEFINE_enum("precision", "float32", list(models.PRECISIONS), "The networks' layers: float32, or "
                  "bfloat16 (float32 parameters, gradients and SGD; bfloat16 convolutions and activations).")
FLAGS = flags.FLAGS


@flags.multi_flags_validator(["run_dir", "distilled_dir"], message="give exactly one of --run_dir, "
                             "--distilled_dir")
def _one_source(values):
  return bool(values["run_dir"]) != bool(values["distilled_dir"])


@flags.validator("models", message=f"unknown model (choose from {', '.join(sorted(models.ARCHITECTURES))})")
def _known_models(values):
  return all(v.lower() in models.ARCHITECTURES for v in values)


flags.register_validator("dsa_strategy", augment.is_strategy,
                         "--dsa_strategy: families from " + ", ".join(augment.FAMILIES) + " joined by '_', or 'none'.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  source = FLAGS.run_dir or FLAGS.distilled_dir
  out = FLAGS.out or os.path.join(source, "eval.json")
  logdir = FLAGS.logdir or (os.path.join(FLAGS.run_dir, "tensorboard") if FLAGS.run_dir else None)
  config = evaluate.EvalConfig(
      models=tuple(FLAGS.models), num_eval=FLAGS.num_eval, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
      momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay, dsa_strategy=FLAGS.dsa_strategy,
      seed=FLAGS.seed, lr=FLAGS.lr, data_dir=FLAGS.data_dir, baseline=FLAGS.baseline,
      eval_test_every=FLAGS.eval_test_every, log_every=max(1, FLAGS.epochs // 10), precision=FLAGS.precision)
  # A run's soft-label set is measured beside a random subset labelled by the run's own teacher, as the
  # run's final evaluation did; an export carries no teacher, so its baseline is one-hot.
  labeler = loop.recorded_baseline_labeler(FLAGS.run_dir) if FLAGS.run_dir and FLAGS.baseline else None
  results = evaluate.evaluate_path(source, config, baseline_labeler=labeler, out_path=out, logdir=logdir)
  print(evaluate.format_summary(results))
  print(f"Results: {out}")


def run():
  """Console script tesla-evaluate."""
  cli.run(main)


if __name__ == "__main__":
  run()

"""Distil a dataset with TESLA / MTT trajectory matching.

  python tools/distill.py --flagfile=configs/imagenet50.cfg [--flag=value overrides ...]

Parses flags into a DistillConfig and calls tesla_tf.distill.loop.distill. Re-running into the same
--run_dir resumes from its last checkpoint.
"""

import dataclasses
import os

from absl import app, flags, logging

from tesla_tf import augment, cli, models
from tesla_tf.data import sources
from tesla_tf.distill import loop, matching, replicas

FLAGS = flags.FLAGS

# data
flags.DEFINE_string("dataset", "fashion_mnist", f"Dataset to distil (the experts' in --store_dir, read as "
                    f"they read it): {sources.NAMES_HELP}.")
flags.DEFINE_string("data_dir", None, "Where the dataset lives (default: the dataset's standard place).")
# synthetic set
flags.DEFINE_integer("ipc", 1, "Synthetic images per class.", lower_bound=1)
flags.DEFINE_enum("pix_init", "real", list(loop.PIX_INITS), "Initialise from real images or N(0,1) noise.")
flags.DEFINE_enum("labels", "hard", list(loop.LABEL_MODES),
                  "hard one-hot; teacher = TESLA's expert soft labels; learned = learned soft labels.")
flags.DEFINE_float("label_temperature", 1.0, "--labels=teacher: rows softmax(logits / T) (TESLA: 1).",
                   lower_bound=1e-6)
flags.DEFINE_float("label_mix", 0.0, "--labels=teacher: rows (1 − β)·teacher + β·one-hot class; β >= 0.5 keeps "
                   "each row's argmax on its class, β = 1 is hard labels (TESLA: 0).", lower_bound=0.0,
                   upper_bound=1.0)
# matching
flags.DEFINE_enum("mode", "tesla", list(matching.MODES), "Gradient: tesla (first-order, constant memory), "
                  "exact (adjoint, constant memory) or unrolled (MTT, memory linear in syn_steps).")
flags.DEFINE_enum("strategy", "none", list(replicas.STRATEGIES), "none = one device; mirrored = split "
                  "each student step's batch_syn rows over every local GPU (or logical CPU device) with "
                  "tf.distribute.MirroredStrategy (tesla/exact; batch_syn divisible by the device count).")
flags.DEFINE_integer("row_chunks", 1, "tesla/exact on one device: run every student step on this many "
                     "equal chunks of its batch_syn rows, one after another — the same gradients at about "
                     "1/row_chunks of the activation memory, a little slower.", lower_bound=1)
flags.DEFINE_enum("precision", "float32", list(models.PRECISIONS), "The student's layers: float32, or "
                  "bfloat16 (float32 parameters and gradients, bfloat16 convolutions and activations: "
                  "~1.6x faster on CPUs with AVX512-BF16 and on GPUs; docs/benchmarks.md).")
flags.DEFINE_integer("syn_steps", 20, "N: student steps per iteration.", lower_bound=1)
flags.DEFINE_integer("expert_epochs", 2, "M: expert epochs between start and target.", lower_bound=1)
flags.DEFINE_integer("max_start_epoch", 20, "T+: start epoch drawn from [0, T+).", lower_bound=1)
flags.DEFINE_float("lr_img", 1000.0, "Learning rate of the synthetic images.", lower_bound=0.0)
flags.DEFINE_float("lr_lr", 1e-5, "Learning rate of the learned step size α.", lower_bound=0.0)
flags.DEFINE_float("lr_labels", 10.0, "Learning rate of learned label logits (--labels=learned).",
                   lower_bound=0.0)
flags.DEFINE_float("lr_teacher", None, "Initial α (default: the experts' learning rate).")
flags.DEFINE_integer("batch_syn", 0, "Synthetic images per student step (0 = all).", lower_bound=0)
flags.DEFINE_string("dsa_strategy", augment.STRATEGY, "DSA families joined by '_', or 'none'.")
flags.DEFINE_bool("halve_tesla_image_grad", False, "Reproduce the public TESLA code's halved image "
                  "gradient (tesla mode; for comparisons only).")
flags.DEFINE_integer("iterations", 5000, "Outer iterations.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of every random choice of the run.")
# evaluation
flags.DEFINE_list("eval_models", [], "Architectures to evaluate the set on (empty = no evaluation).")
flags.DEFINE_integer("eval_every", 0, "Evaluate every this many iterations (0 = at the end only).",
                     lower_bound=0)
flags.DEFINE_integer("num_eval", 3, "Fresh networks per evaluation.", lower_bound=1)
flags.DEFINE_integer("eval_epochs", 1000, "Epochs of each evaluation training.", lower_bound=1)
# io
flags.DEFINE_string("store_dir", None, "Expert trajectory store (from tools/train_experts.py).")
flags.DEFINE_string("run_dir", None, "Run directory: checkpoints, TensorBoard, distilled set.")
flags.DEFINE_integer("save_every", 100, "Checkpoint every this many iterations.", lower_bound=1)
flags.DEFINE_integer("log_every", 10, "Log scalars every this many iterations.", lower_bound=1)
flags.DEFINE_integer("log_images_every", 500, "Log an image grid every this many iterations.", lower_bound=1)
flags.DEFINE_integer("max_image_classes", 100, "Classes shown in the TensorBoard image grid.", lower_bound=1)
flags.DEFINE_float("max_image_rms", 100.0, "Stop (divergence) when the synthetic images' RMS exceeds this "
                   "many times the initial set's.", lower_bound=1.0)
flags.mark_flags_as_required(["store_dir", "run_dir"])


@flags.validator("eval_models")
def _known_architectures(names):
  unknown = [n for n in names if n.lower() not in models.ARCHITECTURES]
  if unknown:
    raise flags.ValidationError(f"--eval_models: unknown architecture {unknown[0]!r}; choose from "
                                f"{', '.join(sorted(models.ARCHITECTURES))}.")
  return True


flags.register_validator("dataset", sources.is_name, f"--dataset: one of {sources.NAMES_HELP}.")
flags.register_validator("dsa_strategy", augment.is_strategy,
                         "--dsa_strategy: families from " + ", ".join(augment.FAMILIES) + " joined by '_', or 'none'.")


def config_from_flags():
  """The DistillConfig of the parsed flags (every field is the flag of the same name)."""
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(loop.DistillConfig)}
  return loop.DistillConfig(**{**values, "eval_models": tuple(values["eval_models"])})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = config_from_flags()
  loop.distill(config)  # writes <run_dir>/flags.cfg and config.json once the settings are accepted
  logging.info("Distilled set: %s", os.path.join(config.run_dir, "distilled"))


def run():
  """Console script tesla-distill."""
  cli.run(main)


if __name__ == "__main__":
  run()

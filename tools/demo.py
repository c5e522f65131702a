"""`make demo`: real Fashion-MNIST end to end — experts, TESLA distillation, evaluation, export.

  python tools/demo.py [--workdir=demo_run] [--iterations=300] [--labels=teacher_mix0.5] ...
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tesla_tf import cli  # pylint: disable=wrong-import-position
from tesla_tf import demo  # pylint: disable=wrong-import-position

_DEFAULTS = demo.DemoConfig()
flags.DEFINE_string("workdir", _DEFAULTS.workdir, "Where experts and the run go (reused when re-run).")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the Debian package's).")
flags.DEFINE_bool("download", False, "Download Fashion-MNIST through TFDS if no IDX copy is found "
                  "(make demo sets it when the Debian package is missing and cannot be installed).")
flags.DEFINE_integer("iterations", _DEFAULTS.iterations, "Distillation iterations.", lower_bound=1)
flags.DEFINE_integer("num_experts", _DEFAULTS.num_experts, "Experts to train.", lower_bound=1)
flags.DEFINE_integer("eval_epochs", _DEFAULTS.eval_epochs, "Epochs of each evaluation.", lower_bound=1)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the whole demo.")
flags.DEFINE_enum("labels", _DEFAULTS.labels, list(demo.LABEL_REASONS), "Labels of the synthetic set.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = demo.DemoConfig(workdir=FLAGS.workdir, data_dir=FLAGS.data_dir, download=FLAGS.download,
                           iterations=FLAGS.iterations, labels=FLAGS.labels,
                           num_experts=FLAGS.num_experts, eval_epochs=FLAGS.eval_epochs, seed=FLAGS.seed)
  print(demo.summary(demo.run_demo(config), config))


if __name__ == "__main__":
  cli.run(main)

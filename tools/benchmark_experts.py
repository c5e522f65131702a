"""Benchmarks expert training on Fashion-MNIST: accuracy, input pipeline vs train step, tf.data service.

  python tools/benchmark_experts.py --epochs=5 --width=128 --out=/tmp/experts_benchmark.json

What is measured: tesla_tf/bench/experts.py. Results are printed and written as json to --out.
"""

import dataclasses

from absl import app
from absl import flags

from tesla_tf import cli, models
from tesla_tf.bench import experts

_D = experts.ExpertsBenchConfig()
flags.DEFINE_integer("width", _D.width, "ConvNet width.", lower_bound=1)
flags.DEFINE_integer("epochs", _D.epochs, "Epochs of the local expert (accuracy measurement).", lower_bound=1)
flags.DEFINE_integer("service_epochs", _D.service_epochs, "Epochs of the expert reading through the tf.data "
                     "service (0 = skip).", lower_bound=0)
flags.DEFINE_integer("pipeline_batches", _D.pipeline_batches, "Batches timed for the pipeline-only "
                     "measurement.", lower_bound=1)
flags.DEFINE_integer("step_batches", _D.step_batches, "Steps timed for the train-step-only measurement.",
                     lower_bound=1)
flags.DEFINE_integer("service_workers", _D.service_workers, "tf.data service worker processes.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", _D.max_train_examples, "Subset of the train set (default: all "
                     "60,000).")
flags.DEFINE_enum("precision", _D.precision, list(models.PRECISIONS), "The expert's layers (--precision of "
                  "tools/train_experts.py).")
flags.DEFINE_string("data_dir", _D.data_dir, "Fashion-MNIST IDX folder (default: the Debian location).")
flags.DEFINE_string("out", _D.out, "json file for the results.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Every field of the config is the flag of the same name.
  experts.run(experts.ExpertsBenchConfig(**{f.name: FLAGS[f.name].value
                                            for f in dataclasses.fields(experts.ExpertsBenchConfig)}))


if __name__ == "__main__":
  cli.run(main)

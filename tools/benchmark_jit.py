"""Does XLA (`jit_compile`) speed up expert training or evaluation on this machine? Seconds per epoch, both ways.

  python tools/benchmark_jit.py --width=32 --expert_epochs=3 --eval_sizes=10,100

What is measured: tesla_tf/bench/jit.py. Results go to stdout and --out (json).
"""

import dataclasses

from absl import app, flags

from tesla_tf import cli, models
from tesla_tf.bench import jit

_D = jit.JitConfig()
flags.DEFINE_integer("width", _D.width, "ConvNet width.", lower_bound=1)
flags.DEFINE_integer("expert_epochs", _D.expert_epochs, "Expert epochs per variant (0 = skip experts).",
                     lower_bound=0)
flags.DEFINE_integer("max_train_examples", _D.max_train_examples, "Expert train subset (default: all of the "
                     "rest).")
flags.DEFINE_list("eval_sizes", [str(n) for n in _D.eval_sizes], "Distilled-set sizes n for the evaluation "
                  "epochs.")
flags.DEFINE_integer("eval_epochs", _D.eval_epochs, "Timed evaluation epochs per variant.", lower_bound=1)
flags.DEFINE_enum("precision", _D.precision, list(models.PRECISIONS), "The expert's and the evaluation "
                  "networks' layers.")
flags.DEFINE_multi_enum("jit_compile", [str(v).lower() for v in _D.jit_compile], ["false", "true"],
                        "Variants to measure (repeat the flag): false = plain tf.function, true = XLA.")
flags.DEFINE_string("out", _D.out, "json file for the results.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Every field of the config is the flag of the same name.
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(jit.JitConfig)}
  values["jit_compile"] = [v == "true" for v in values["jit_compile"]]
  jit.run(jit.JitConfig(**values))


if __name__ == "__main__":
  cli.run(main)

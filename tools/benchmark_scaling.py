"""Per-image and per-step costs at ImageNet-1K scale, measured here, for the plan in docs/scaling.md.

  .venv/bin/python tools/benchmark_scaling.py                       # every part → docs/scaling_results.json
  .venv/bin/python tools/benchmark_scaling.py --measure=step --step_batches=25,50 --step_modes=tesla
  .venv/bin/python tools/benchmark_scaling.py --measure=summary     # recompute the fits from the json

What each part measures and how: tesla_tf/bench/scaling.py. Every measurement runs in a fresh child
process (`python -m tesla_tf.bench.scaling`); --child_kind runs one here and prints its JSON record, e.g.
  .venv/bin/python tools/benchmark_scaling.py --child_kind=step --child_mode=tesla --child_steps=2 \
      --child_batch=50 --child_rows=20000
"""

import dataclasses
import json

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf.bench import scaling

_D = scaling.ScalingConfig()
flags.DEFINE_list("measure", list(_D.measure), f"Parts to run, from {scaling.PARTS}.")
flags.DEFINE_list("step_modes", list(_D.step_modes), "Modes of the step part.")
flags.DEFINE_list("step_batches", [str(b) for b in _D.step_batches],
                  "batch_syn values of the step part (at N = --step_n).")
flags.DEFINE_integer("step_n", _D.step_n, "N of the batch_syn sweep.", lower_bound=1)
flags.DEFINE_integer("step_n_slope", _D.step_n_slope, "A second N (at batch_syn --slope_batch), for the "
                     "per-step cost; 0 = skip.", lower_bound=0)
flags.DEFINE_integer("slope_batch", _D.slope_batch, "batch_syn of the N- and n-slope runs and of unrolled.",
                     lower_bound=1)
flags.DEFINE_list("rows_slope", [str(n) for n in _D.rows_slope], "Synthetic-set sizes n of extra tesla runs "
                  "at N = --step_n, batch_syn --slope_batch (the sweep's own n is N·batch_syn).")
flags.DEFINE_list("unrolled_steps", [str(n) for n in _D.unrolled_steps], "N values of the unrolled part.")
flags.DEFINE_integer("expert_batch", _D.expert_batch, "Batch of the expert part (the expert recipe's 256).",
                     lower_bound=1)
flags.DEFINE_integer("expert_iters", _D.expert_iters, "Timed train steps of the expert part.", lower_bound=1)
flags.DEFINE_float("lr_img", _D.lr_img, "Image learning rate of the measured outer step (iterations differ).")
flags.DEFINE_string("out", _D.out, "Results json.")
flags.DEFINE_bool("redo", _D.redo, "Re-measure records already in --out (default: keep them, resume).")
# The flags tools/benchmark.py has too, with the same meaning and defaults.
flags.DEFINE_integer("iters", _D.iters, "Timed iterations of a step measurement after the warm-up.",
                     lower_bound=1)
flags.DEFINE_float("memory_cap_gb", _D.memory_cap_gb, "Kill a child whose RSS exceeds this.", lower_bound=1.0)
flags.DEFINE_float("min_available_gb", _D.min_available_gb, "Also kill a child when the machine's "
                   "MemAvailable drops below this (other processes share the RAM).", lower_bound=0.0)
flags.DEFINE_integer("width", _D.width, "ConvNet width.", lower_bound=1)
flags.DEFINE_string("dsa_strategy", _D.dsa_strategy, "DSA strategy, or 'none'.")
# one measurement in this process
flags.DEFINE_enum("child_kind", None, list(scaling.MEASUREMENTS), "Run one measurement here and print its "
                  "JSON record (what the child processes do).")
flags.DEFINE_string("child_mode", "tesla", "Mode of a --child_kind=step measurement.")
flags.DEFINE_integer("child_steps", 5, "N of a --child_kind=step measurement.")
flags.DEFINE_integer("child_batch", 50, "batch_syn of a --child_kind=step measurement.")
flags.DEFINE_integer("child_rows", 0, "n of a --child_kind=step measurement (0 = N·batch_syn).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Every field of the config is the flag of the same name.
  config = scaling.ScalingConfig(**{f.name: FLAGS[f.name].value
                                    for f in dataclasses.fields(scaling.ScalingConfig)})
  if FLAGS.child_kind == "step":
    record = scaling.measure_step(config, FLAGS.child_mode, FLAGS.child_steps, FLAGS.child_batch,
                                  FLAGS.child_rows)
  elif FLAGS.child_kind:
    record = scaling.MEASUREMENTS[FLAGS.child_kind](config)
  else:
    scaling.run(config)
    return
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  cli.run(main)

"""Time and memory of the three matching-gradient modes, and how far tesla's gradient is from the exact one.

  .venv/bin/python tools/benchmark.py                      # everything, results into docs/
  .venv/bin/python tools/benchmark.py --parts=speed --syn_steps=5,10 --modes=tesla,exact
  .venv/bin/python tools/benchmark.py --parts=report       # rebuild the doc tables and plot from the json

What is measured and how: tesla_tf/bench/speed.py. Every (mode, N) and the fidelity part run in fresh
child processes (`python -m tesla_tf.bench.speed`); --child runs one measurement here and prints its JSON.
"""

import dataclasses
import json

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf.bench import speed

_D = speed.SpeedConfig()
flags.DEFINE_list("parts", list(_D.parts), f"Which parts to run, from {speed.PARTS}.")
flags.DEFINE_list("modes", list(_D.modes), "Matching modes of the speed part.")
flags.DEFINE_list("syn_steps", [str(n) for n in _D.syn_steps], "N values of the speed part.")
flags.DEFINE_integer("iters", _D.iters, "Timed iterations per (mode, N) after the warm-up.", lower_bound=1)
flags.DEFINE_integer("big_n", _D.big_n, "From this N on, time --big_iters iterations instead.", lower_bound=1)
flags.DEFINE_integer("big_iters", _D.big_iters, "Timed iterations for N >= --big_n; 0 = report the warm-up "
                     "iteration (which includes tracing) as the time.", lower_bound=0)
flags.DEFINE_bool("resume", _D.resume, "Skip (mode, N, tag) runs already measured in the results json.")
flags.DEFINE_float("memory_cap_gb", _D.memory_cap_gb, "Kill a child whose RSS exceeds this; skip unrolled N "
                   "projected above it.", lower_bound=1.0)
flags.DEFINE_float("min_available_gb", _D.min_available_gb, "Also kill a child when the machine's "
                   "MemAvailable drops below this (other processes share the RAM).", lower_bound=0.0)
flags.DEFINE_integer("batch_syn", _D.batch_syn, "Synthetic images per step (= the whole set).", lower_bound=1)
flags.DEFINE_integer("width", _D.width, "ConvNet width.", lower_bound=1)
flags.DEFINE_string("dsa_strategy", _D.dsa_strategy, "DSA strategy, or 'none'.")
flags.DEFINE_bool("jit", _D.jit, "Speed part: matching_gradients(..., jit_compile=True) (tesla/exact).")
flags.DEFINE_integer("row_chunks", _D.row_chunks, "Speed part: matching_gradients(..., row_chunks=k) "
                     "(tesla/exact).", lower_bound=1)
flags.DEFINE_string("tag", _D.tag, "Label stored with every speed record (e.g. the variant being measured).")
flags.DEFINE_string("precision", _D.precision, "Speed part: how the ConvNet computes, one of "
                    f"{', '.join(speed.PRECISIONS)} (part of the record key, like --tag).")
flags.DEFINE_integer("yardstick_runs", _D.yardstick_runs, "Speed part: timed runs of each of the machine's "
                     "yardsticks (3x3 conv, n x n matmul; float32, bfloat16), the best kept.", lower_bound=1)
flags.DEFINE_integer("yardstick_batch", _D.yardstick_batch, "Batch of the conv yardstick (128 -> 128 "
                     "channels at 16x16).", lower_bound=1)
flags.DEFINE_integer("yardstick_gemm", _D.yardstick_gemm, "n of the n x n matmul yardstick.", lower_bound=1)
# fidelity
flags.DEFINE_list("fidelity_steps", [str(n) for n in _D.fidelity_steps], "N values of the fidelity part.")
flags.DEFINE_list("fidelity_start_epochs", [str(t) for t in _D.fidelity_start_epochs],
                  "Start epochs t of the fidelity part.")
flags.DEFINE_integer("fidelity_seeds", _D.fidelity_seeds, "Seeds (schedules, DSA draws) per (N, t).",
                     lower_bound=1)
flags.DEFINE_integer("expert_epochs", _D.expert_epochs, "M of the fidelity part.", lower_bound=1)
flags.DEFINE_float("syn_lr", _D.syn_lr, "α of the fidelity part.")
flags.DEFINE_integer("ipc", _D.ipc, "Real images per class in the fidelity synthetic set.", lower_bound=1)
flags.DEFINE_string("expert_store", _D.expert_store, "Trajectory store of the expert.")
flags.DEFINE_integer("expert_width", _D.expert_width, "ConvNet width of the fidelity expert (and student).",
                     lower_bound=1)
flags.DEFINE_integer("expert_train_examples", _D.expert_train_examples,
                     "Fashion-MNIST training images of the expert.", lower_bound=256)
flags.DEFINE_bool("fidelity_unrolled_check", _D.fidelity_unrolled_check,
                  "Also compare exact with unrolled at the smallest N.")
# io
flags.DEFINE_string("out_dir", _D.out_dir, "Where the json, markdown and png go.")
flags.DEFINE_string("results", _D.results, "Results json (default <out_dir>/benchmark_results.json).")
# one measurement in this process
flags.DEFINE_enum("child", None, list(speed.MEASUREMENTS), "Run one measurement here and print its JSON "
                  "record (what the child processes do).")
flags.DEFINE_string("child_mode", "tesla", "Mode of a --child=speed measurement.")
flags.DEFINE_integer("child_steps", 5, "N of a --child=speed measurement.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Every field of the config is the flag of the same name.
  config = speed.SpeedConfig(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(speed.SpeedConfig)})
  if FLAGS.child == "speed":
    print(json.dumps(speed.measure_speed(config, FLAGS.child_mode, FLAGS.child_steps)), flush=True)
  elif FLAGS.child == "fidelity":
    print(json.dumps(speed.measure_fidelity(config)), flush=True)
  else:
    speed.run(config)


if __name__ == "__main__":
  cli.run(main)

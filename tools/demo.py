"""`make demo`: real Fashion-MNIST end to end — the quickstart's two commands, then what they measured.

  python tools/demo.py [--workdir=demo_run] [--distill_flag=--iterations=100] [--experts_flag=--num_experts=2]

runs, from the repository root,
  python tools/train_experts.py --flagfile=configs/experts_quickstart.cfg --store_dir=<workdir>/experts
  python tools/distill.py --flagfile=configs/quickstart.cfg --store_dir=<workdir>/experts --run_dir=<workdir>/run
(each reuses what an earlier run left in <workdir>) and prints the distilled set against the random subset.
"""

import os
import subprocess
import sys
import time

from absl import app, flags

from tesla_tf import cli, demo, errors
from tesla_tf.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("workdir", "demo_run", "Where the experts and the run go (reused when re-run).")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the Debian package's).")
flags.DEFINE_bool("download", False, "Download Fashion-MNIST through TFDS if no IDX copy is found "
                  "(make demo sets it when the Debian package is missing and cannot be installed).")
flags.DEFINE_multi_string("experts_flag", [], "A flag added to the train_experts command (repeatable).")
flags.DEFINE_multi_string("distill_flag", [], "A flag added to the distill command (repeatable).")
FLAGS = flags.FLAGS


def _run_tool(tool, flagfile, *args):
  """Runs tools/<tool> with configs/<flagfile> and `args` from the repository root; its time in s."""
  command = [sys.executable, os.path.join("tools", tool), f"--flagfile={os.path.join('configs', flagfile)}",
             *args]
  print("$", " ".join(command), flush=True)
  start = time.time()
  status = subprocess.run(command, cwd=ROOT, check=False).returncode
  if status:
    raise errors.TeslaError(f"{tool} stopped (exit status {status}); its message is above.")
  return time.time() - start


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = os.path.abspath(FLAGS.workdir)
  data = [f"--data_dir={os.path.abspath(FLAGS.data_dir)}"] if FLAGS.data_dir else []
  if FLAGS.download:  # the IDX files when present, else a TFDS copy (prepared here once, then reused)
    for split in ("train", "test"):
      sources.load("fashion_mnist", split, FLAGS.data_dir, download=True)
  store = f"--store_dir={os.path.join(workdir, 'experts')}"
  run_dir = os.path.join(workdir, "run")
  seconds = {"experts": _run_tool("train_experts.py", "experts_quickstart.cfg", store, *data,
                                  *FLAGS.experts_flag),
             "distill": _run_tool("distill.py", "quickstart.cfg", store, f"--run_dir={run_dir}", *data,
                                  *FLAGS.distill_flag)}
  print(demo.summary(run_dir, seconds))


if __name__ == "__main__":
  cli.run(main)

"""Fixed-seed distillations in every mode × label mode, and the sha256 of what each exports.

  python tools/output_hashes.py --checkout=<a checkout> --store_dir=<experts> --workdir=<scratch>

Runs <checkout>/tools/distill.py (tesla / exact / unrolled × hard / teacher / learned; IPC 2, N 3,
batch_syn 10, 4 iterations, seed 3, DSA on) on the experts of --store_dir, then prints the first 16 hex
digits of the sha256 of the exported images, labels and α of each run. Two checkouts that print the same
lines distil bit-identically (a restructuring that must not change outputs is checked this way; runs
already in --workdir are reused). Every step runs with PYTHONPATH=<checkout>, so that checkout's
tesla_tf is used, not the installed package.
"""

import argparse
import hashlib
import itertools
import os
import subprocess
import sys

FLAGS = ["--dataset=fashion_mnist", "--ipc=2", "--syn_steps=3", "--batch_syn=10", "--expert_epochs=1",
         "--max_start_epoch=2", "--iterations=4", "--save_every=2", "--log_every=2", "--lr_img=100",
         "--lr_lr=1e-5", "--seed=3"]
RUNS = list(itertools.product(("tesla", "exact", "unrolled"), ("hard", "teacher", "learned")))


def checkout_env(checkout):
  """The environment in which `import tesla_tf` finds <checkout>'s package before the installed one."""
  paths = [checkout] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
  return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def print_hashes(checkout, workdir):
  """Prints the hashes of the exports in <workdir>, read by the tesla_tf importable here (<checkout>'s)."""
  from tesla_tf.data import distilled  # pylint: disable=import-outside-toplevel
  source = os.path.realpath(distilled.__file__)
  if not source.startswith(os.path.join(os.path.realpath(checkout), "")):
    sys.exit(f"output_hashes: tesla_tf came from {source}, not from --checkout={checkout}")

  def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]
  for mode, labels in RUNS:
    s = distilled.load_set(os.path.join(workdir, f"{mode}_{labels}", "distilled"))
    print(f"{mode:9s} {labels:8s} images {digest(s.images.tobytes())}  labels {digest(s.labels.tobytes())}  "
          f"alpha {digest(repr(float(s.lr)).encode())} ({s.lr!r})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkout", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  parser.add_argument("--store_dir", help="experts of Fashion-MNIST (M + T⁺ ≥ 3 epochs)")
  parser.add_argument("--workdir", required=True, help="where the runs go")
  parser.add_argument("--hashes_only", action="store_true",
                      help="only print the hashes of the runs in --workdir (this process imports tesla_tf)")
  args = parser.parse_args()
  if args.hashes_only:
    print_hashes(args.checkout, args.workdir)
    return
  if not args.store_dir:
    parser.error("--store_dir is required")
  # Every process importing tesla_tf gets PYTHONPATH=<checkout>, so the checkout's code runs, not the
  # installed package's.
  env = checkout_env(os.path.abspath(args.checkout))
  for mode, labels in RUNS:
    run_dir = os.path.join(args.workdir, f"{mode}_{labels}")
    if not os.path.isdir(os.path.join(run_dir, "distilled")):
      subprocess.run([sys.executable, os.path.join(args.checkout, "tools", "distill.py"), *FLAGS,
                      f"--store_dir={args.store_dir}", f"--mode={mode}", f"--labels={labels}",
                      f"--run_dir={run_dir}"], check=True, stderr=subprocess.DEVNULL, env=env)
  subprocess.run([sys.executable, os.path.abspath(__file__), f"--checkout={args.checkout}",
                  f"--workdir={args.workdir}", "--hashes_only"], check=True, env=env)


if __name__ == "__main__":
  main()

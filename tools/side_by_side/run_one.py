"""One timed distillation process, ours (tools/distill.py) or the public code's (run_public.py), for the
side-by-side table of docs/benchmarks.md. Appends one JSON line to --results.

Setting (issue 16): Fashion-MNIST, ConvNet-3 width 128, IPC 10, batch_syn 100, hard labels, DSA, M = 2,
lr_img 1000, real-image initialisation; no evaluation. Ours reads --store_dir (any width-128 Fashion-MNIST
store); the public code reads <public_dir>/work/buffers/FashionMNIST/ConvNet/replay_buffer_*.pt.
The public processes run with jemalloc and page purging off (LD_PRELOAD, MALLOC_CONF), the tuned
allocator of the issue's reference. Seconds per iteration: the median of the intervals between iteration
log lines, without the first iteration (tracing, warm-up).

Usage:
  python3 tools/side_by_side/run_one.py --who=ours --mode=tesla --n=10 --iters=6 --tag=r1 \
      --store_dir=/cache/gen_w128 --public_dir=/cache/public --results=/cache/sbs.jsonl [-- --precision=bfloat16]
  python3 tools/side_by_side/run_one.py --who=public --mode=tesla ...   (mode tesla: TESLA; unrolled: MTT)
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--who", choices=["ours", "public"], required=True)
  parser.add_argument("--mode", choices=["tesla", "exact", "unrolled"], required=True)
  parser.add_argument("--n", type=int, required=True, help="syn_steps N")
  parser.add_argument("--iters", type=int, required=True, help="iterations of the process")
  parser.add_argument("--tag", default="", help="label of the record (e.g. the round)")
  parser.add_argument("--store_dir", help="ours: the trajectory store")
  parser.add_argument("--public_dir", help="public: holds tesla/, mtt/, data/FashionMNIST/raw/, work/buffers/")
  parser.add_argument("--torch_python", default="python3", help="public: a Python with torch, wandb, kornia")
  parser.add_argument("--results", required=True, help="JSON lines file to append to")
  parser.add_argument("extra", nargs="*", help="ours: more tools/distill.py flags (after --)")
  args = parser.parse_args()

  variant = "".join(a.split("=")[-1] for a in args.extra)
  name = f"{args.tag}_{args.who}_{args.mode}_{args.n}{variant}"
  out_dir = os.path.dirname(os.path.abspath(args.results))
  log_path = os.path.join(out_dir, "logs", name + ".log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  env = dict(os.environ)
  if args.who == "ours":
    run_dir = os.path.join(out_dir, "runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
    cmd = [os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "tools", "distill.py"),
           f"--flagfile={os.path.join(ROOT, 'configs', 'fashion_mnist_ipc10.cfg')}", f"--store_dir={args.store_dir}",
           f"--run_dir={run_dir}", f"--mode={args.mode}", f"--syn_steps={args.n}", f"--iterations={args.iters}",
           "--max_start_epoch=2", "--eval_models=", "--log_every=1", "--save_every=1000",
           "--log_images_every=1000"] + args.extra
    cwd = ROOT
  else:
    if args.mode == "exact":
      sys.exit("--mode=exact: the public code has no exact gradient (tesla: TESLA, unrolled: MTT)")
    repo = os.path.join(args.public_dir, {"tesla": "tesla", "unrolled": "mtt"}[args.mode])
    env.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1",
               PUBLIC_EXTRA_PATH=os.path.join(args.public_dir, "mtt"))
    cmd = [args.torch_python, os.path.join(ROOT, "tools", "side_by_side", "run_public.py"), repo, "distill.py",
           "--dataset=FashionMNIST", "--model=ConvNet", "--ipc=10", f"--syn_steps={args.n}", "--expert_epochs=2",
           "--max_start_epoch=2", "--lr_img=1000", "--lr_lr=1e-05", "--lr_teacher=0.01", "--batch_syn=100",
           "--dsa=True", "--pix_init=real", "--eval_it=-1", f"--Iteration={args.iters}",
           "--buffer_path=./buffers", f"--data_path={os.path.join(args.public_dir, 'data')}"]
    cwd = os.path.join(args.public_dir, "work")

  start = time.time()
  with open(log_path, "w") as f:
    rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
  wall = time.time() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(log_path, errors="replace") as f:
    text = f.read()
  if args.who == "ours":  # the progress line closes iterations 1..K; 1 traces
    stamps = [datetime.strptime(m.group(1), "%H:%M:%S.%f").timestamp()
              for m in re.finditer(r"^I\d{4} (\d\d:\d\d:\d\d\.\d+) .*loop\.py:\d+\] it \d+/", text, re.M)]
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    peak, baseline = usage.ru_maxrss / 2**20, None
  else:  # "Progress" opens iterations 0..K; 0 warms up
    stamps = [float(m.group(1)) for m in re.finditer(r"^TIMING it=\d+ wall=([\d.]+)", text, re.M)]
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][1:]
    found = {k: float(v) for k, v in re.findall(r"^TIMING (peak_rss_gb|baseline_rss_gb)=([\d.]+)", text, re.M)}
    peak, baseline = found.get("peak_rss_gb"), found.get("baseline_rss_gb")  # the distilling process only
  record = {"tag": args.tag, "who": args.who, "mode": args.mode, "n": args.n, "extra": args.extra,
            "iters": args.iters, "rc": rc, "s_per_iter": round(statistics.median(intervals), 3) if intervals else None,
            "per_iter": [round(t, 3) for t in intervals], "process_wall_s": round(wall, 1),
            "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gb": round(peak, 3) if peak else None,
            "baseline_rss_gb": baseline, "log": log_path, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
  print(json.dumps(record))
  with open(args.results, "a") as f:
    f.write(json.dumps(record) + "\n")
  if rc:
    sys.exit(f"{name}: the process exited {rc}; its log: {log_path}")


if __name__ == "__main__":
  main()

"""Runs one script of the public PyTorch code (TESLA's or MTT's distill.py, MTT's buffer.py) unmodified, for
the side-by-side timings of docs/benchmarks.md. Not part of the package: it needs a PyTorch environment
(torch, torchvision, wandb, kornia, scipy, tqdm) and a checkout of the public code, neither of which this
project carries.

What it adds from outside, without editing the public files:
  - a FashionMNIST branch for `utils.get_dataset` (the public loaders know CIFAR, Tiny and ImageNet only),
    the same recipe as their CIFAR-10 branch (ToTensor + Normalize with the train-set mean/std);
  - a contiguous copy of each DSA output: their crop can return strides (784, 1, 28, 1) for 1-channel
    images, which PyTorch 2.14 carries through the convolutions as channels-last, and the ConvNet's final
    `out.view(B, -1)` then raises (the copy is a few hundred kB per batch);
  - wandb offline, and timestamps. It prints
      TIMING it=<k> wall=<s> cpu=<s>           when distill.py logs "Progress" (each iteration's start)
      TIMING epoch_<mode> wall=<s> cpu=<s>     after each utils.epoch call (buffer.py: train, test)
      TIMING baseline_rss_gb=<x>               at iteration 0 (data, experts and networks built)
      TIMING peak_rss_gb=<x>                   at exit (ru_maxrss of this process)

Usage: python run_public.py REPO_DIR SCRIPT [its arguments]. TESLA's distill.py imports reparam_module,
which only MTT's checkout has: pass its directory in PUBLIC_EXTRA_PATH.
"""
import atexit
import os
import resource
import runpy
import sys
import time

repo, script = sys.argv[1], sys.argv[2]
sys.argv = [script] + sys.argv[3:]
sys.path[:0] = [repo] + [p for p in os.environ.get("PUBLIC_EXTRA_PATH", "").split(":") if p]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from torchvision import datasets, transforms  # noqa: E402  pylint: disable=g-import-not-at-top
import utils  # noqa: E402  pylint: disable=g-import-not-at-top  (the public utils.py of REPO_DIR)
import wandb  # noqa: E402  pylint: disable=g-import-not-at-top


def rss_gb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 2**20
  return float("nan")


_get_dataset = utils.get_dataset


def get_dataset(dataset, data_path, batch_size=1, *rest, args=None):
  if dataset != "FashionMNIST":
    return _get_dataset(dataset, data_path, batch_size, *rest, args=args)
  mean, std = [0.2861], [0.3530]
  transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
  train = datasets.FashionMNIST(data_path, train=True, download=True, transform=transform)
  test = datasets.FashionMNIST(data_path, train=False, download=True, transform=transform)
  testloader = torch.utils.data.DataLoader(test, batch_size=128, shuffle=False, num_workers=2)
  class_map = {c: c for c in range(10)}
  return 1, (28, 28), 10, train.classes, mean, std, train, test, testloader, None, class_map, None


_diff_augment = utils.DiffAugment


def diff_augment(*args, **kwargs):
  return _diff_augment(*args, **kwargs).clone(memory_format=torch.contiguous_format)


_epoch = utils.epoch


def epoch(mode, *args, **kwargs):
  wall, cpu = time.time(), time.process_time()
  out = _epoch(mode, *args, **kwargs)
  print(f"TIMING epoch_{mode} wall={time.time() - wall:.3f} cpu={time.process_time() - cpu:.3f}", flush=True)
  return out


_run_log = None
_init = wandb.init


def log(data, *args, **kwargs):
  if "Progress" in data:
    if data["Progress"] == 0:
      print(f"TIMING baseline_rss_gb={rss_gb():.3f}", flush=True)
    print(f"TIMING it={data['Progress']} wall={time.time():.3f} cpu={time.process_time():.3f}", flush=True)
  return _run_log(data, *args, **kwargs)


def init(*args, **kwargs):
  """wandb.init rebinds wandb.log to the run's own: wrap that one."""
  global _run_log
  run = _init(*args, **kwargs)
  _run_log, wandb.log = wandb.log, log
  return run


utils.get_dataset, utils.DiffAugment, utils.epoch, wandb.init = get_dataset, diff_augment, epoch, init
atexit.register(lambda: print(
    f"TIMING peak_rss_gb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.3f}", flush=True))
print(f"TIMING torch={torch.__version__} threads={torch.get_num_threads()}", flush=True)
runpy.run_path(os.path.join(repo, script), run_name="__main__")

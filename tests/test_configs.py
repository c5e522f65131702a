"""Every distillation config of configs/: its lines reach the config fields, and each code path they take
runs two iterations (tests/test_loop.py holds the loop's own tests)."""

import glob
import os
import re

import numpy as np
import pytest

from tesla_tf.data import sources
from tesla_tf.distill import loop
from tests.test_loop import ROOT, make_store, parse_tool_flags

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.cfg"))
                 if not os.path.basename(p).startswith("experts_"))


def config_lines(path):
  """(flag name, value) of every flag line of a flagfile, nested flagfiles followed."""
  out = []
  for line in open(path):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    match = re.fullmatch(r"--([a-z_0-9]+)=(.*)", line)
    assert match, f"{path}: not a --name=value line: {line!r}"
    if match.group(1) == "flagfile":
      out += config_lines(os.path.join(ROOT, match.group(2)))
    else:
      out.append(match.groups())
  return out


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_lines_reach_the_config_fields_of_their_names(path):
  tool, config = parse_tool_flags([f"--flagfile={path}"])
  with open(path) as f:
    direct = re.findall(r"^--([a-z_0-9]+)=", f.read(), flags=re.M)
  assert len(direct) == len(set(direct)), f"duplicate flags in {path}"
  # The last line of each flag wins (nested base files first): its value, parsed by the flag's own parser,
  # is the DistillConfig field of the same name.
  for name, text in dict(config_lines(path)).items():
    value = tool.FLAGS[name].parser.parse(text)
    assert getattr(config, name) == (tuple(value) if isinstance(value, list) else value), name
  assert config.iterations >= 200 and config.ipc >= 1
  text = open(path).read()
  assert "Expected" in text and "Command" in text  # every config says what it reproduces and how


def _one_config_per_code_path(paths):
  """The first config of each (dataset, labels, mode): under the overrides of the test below (--ipc=1,
  N = 2, a generated store) the others of a group differ only in learning rates, so they run the same code
  (their lines are checked above)."""
  chosen = {}
  for path in paths:
    lines = dict(config_lines(path))
    chosen.setdefault((lines["dataset"], lines.get("labels"), lines.get("mode")), path)
  return sorted(chosen.values())


@pytest.mark.parametrize("path", _one_config_per_code_path(CONFIGS), ids=os.path.basename)
def test_config_runs_two_iterations(path, tmp_path_factory):
  _, config = parse_tool_flags([f"--flagfile={path}"])
  store_dir = str(tmp_path_factory.mktemp("store"))
  make_store(store_dir, config.dataset)
  real = config.dataset in ("fashion_mnist",)
  argv = [f"--flagfile={path}", f"--store_dir={store_dir}", f"--run_dir={tmp_path_factory.mktemp('run')}",
          "--iterations=2", "--syn_steps=2", "--max_start_epoch=2", "--expert_epochs=2", "--eval_models=",
          # --ipc=1 below: one row per class, so a student step takes every row unless there are > 100.
          "--batch_syn=" + ("0" if sources.get_info(config.dataset).num_classes <= 100 else "50"),
          "--ipc=1", "--save_every=1", "--log_every=1", "--log_images_every=1",
          "--pix_init=" + ("real" if real else "noise")]
  _, config = parse_tool_flags(argv)
  result = loop.distill(config)
  info = sources.get_info(config.dataset)
  assert result.images.shape == (info.num_classes,) + info.image_shape
  assert np.isfinite(result.images).all() and result.lr > 0
  assert os.path.exists(os.path.join(config.run_dir, "distilled", "metadata.json"))
  assert glob.glob(os.path.join(config.run_dir, "tensorboard", "events.*"))

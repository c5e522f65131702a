"""`make demo` in miniature: real Fashion-MNIST, tiny experts, a few iterations, evaluation and export."""

import json
import os
import subprocess
import sys

import numpy as np

from tesla_tf import store as store_lib
from tesla_tf import demo
from tests.test_loop import ROOT, parse_tool_flags
from tesla_tf.data import distilled


TINY_EXPERTS = ["--width=8", "--num_experts=1", "--train_epochs=2", "--max_train_examples=512"]
TINY_DISTILL = ["--syn_steps=2", "--expert_epochs=1", "--max_start_epoch=1", "--iterations=3", "--num_eval=1",
                "--eval_epochs=2"]


def test_demo_runs_the_quickstart_configs_end_to_end(tmp_path):
  command = [sys.executable, os.path.join(ROOT, "tools", "demo.py"), f"--workdir={tmp_path}"]
  command += [f"--experts_flag={f}" for f in TINY_EXPERTS] + [f"--distill_flag={f}" for f in TINY_DISTILL]
  done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr[-3000:]
  run_dir = os.path.join(tmp_path, "run")

  # One source of truth: the run is configs/quickstart.cfg (+ the overrides), as tools/distill.py reads it.
  _, expected = parse_tool_flags([f"--flagfile={os.path.join(ROOT, 'configs', 'quickstart.cfg')}",
                                  f"--store_dir={tmp_path}/experts", f"--run_dir={run_dir}", *TINY_DISTILL])
  _, recorded = parse_tool_flags([f"--flagfile={os.path.join(run_dir, 'flags.cfg')}"])
  assert recorded == expected and expected.labels == "teacher" and expected.label_mix == 0.5
  store = store_lib.TrajectoryStore(os.path.join(tmp_path, "experts"))
  assert store.finished() == [0] and store.manifest.model_kwargs == {"width": 8}
  assert store.manifest.max_train_examples == 512 and store.manifest.epochs == 2

  results = json.load(open(os.path.join(run_dir, "eval.json")))
  for kind in ("distilled", "random_subset"):
    accuracy = results[kind]["convnet"]["accuracies"]
    assert len(accuracy) == 1 and 0.0 <= accuracy[0] <= 1.0
  # The baseline gets the same kind of labels (the expert's rows, mixed); both measured on validation.
  assert results["settings"]["soft_labels"] and results["settings"]["random_subset_labels"] == "baseline_labeler"
  assert results["settings"]["holdout"] == {"size": 5000, "seed": 0}
  assert 0.0 <= results["distilled"]["convnet"]["validation_mean"] <= 1.0

  ds, metadata = distilled.load(os.path.join(run_dir, "distilled"))
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 10 and metadata["ipc"] == 1
  soft = np.stack([e["soft_label"] for e in examples])
  np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
  assert np.all(np.diag(soft) >= 0.5)  # β = 0.5: every row keeps at least half its weight on its class
  np.testing.assert_array_equal([e["label"] for e in examples], np.arange(10))

  assert f"{100 * results['distilled']['convnet']['mean']:.2f}" in done.stdout
  assert f"{100 * results['random_subset']['convnet']['mean']:.2f}" in done.stdout
  assert "ConvNet(width 8)" in done.stdout and "after 3 iterations" in done.stdout
  assert "tensorboard --logdir" in done.stdout and "Labels: TESLA's teacher labels mixed half and half" in done.stdout


def test_verdict_needs_ten_points_and_three_standard_deviations():
  def r(mean, std):
    return {"mean": mean, "std": std}
  assert demo.verdict(r(0.70, 0.01), r(0.55, 0.02)).startswith("beats the random subset by 15.0 points (7.5×")
  assert "less than a clear win" in demo.verdict(r(0.64, 0.01), r(0.55, 0.02))   # 9 points
  assert "less than a clear win" in demo.verdict(r(0.70, 0.01), r(0.55, 0.06))   # 15 points < 3 × 6
  assert demo.verdict(r(0.50, 0.01), r(0.55, 0.02)).startswith("does NOT beat")

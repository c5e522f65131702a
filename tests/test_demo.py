"""`make demo` in miniature: real Fashion-MNIST, tiny experts, a few iterations, evaluation and export."""

import os

import numpy as np

from tesla_tf import store as store_lib
from tesla_tf import demo
from tesla_tf.data import distilled


def test_demo_runs_end_to_end(tmp_path):
  config = demo.DemoConfig(workdir=str(tmp_path), width=8, num_experts=1, expert_epochs_trained=2,
                           max_train_examples=512, syn_steps=2, expert_epochs=1, max_start_epoch=1,
                           iterations=3, num_eval=1, eval_epochs=2)
  results = demo.run_demo(config)

  assert store_lib.TrajectoryStore(os.path.join(tmp_path, "experts")).finished() == [0]
  for kind in ("distilled", "random_subset"):
    accuracy = results[kind]["convnet"]["accuracies"]
    assert len(accuracy) == 1 and 0.0 <= accuracy[0] <= 1.0
  # Teacher labels mixed with the class by default; the baseline gets the same kind (the expert's rows,
  # mixed), and both are measured on validation.
  assert results["settings"]["soft_labels"] and results["settings"]["random_subset_labels"] == "baseline_labeler"
  assert results["settings"]["holdout"] == {"size": 5000, "seed": 0}
  assert 0.0 <= results["distilled"]["convnet"]["validation_mean"] <= 1.0

  ds, metadata = distilled.load(os.path.join(tmp_path, "run", "distilled"))
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 10 and metadata["ipc"] == 1
  soft = np.stack([e["soft_label"] for e in examples])
  np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
  assert np.all(np.diag(soft) >= 0.5)  # β = 0.5: every row keeps at least half its weight on its class
  np.testing.assert_array_equal([e["label"] for e in examples], np.arange(10))

  text = demo.summary(results, config)
  assert f"{100 * results['distilled']['convnet']['mean']:.2f}" in text
  assert f"{100 * results['random_subset']['convnet']['mean']:.2f}" in text
  assert "tensorboard --logdir" in text and "Labels: TESLA's teacher labels mixed half and half" in text


def test_verdict_needs_ten_points_and_three_standard_deviations():
  def r(mean, std):
    return {"mean": mean, "std": std}
  assert demo.verdict(r(0.70, 0.01), r(0.55, 0.02)).startswith("beats the random subset by 15.0 points (7.5×")
  assert "less than a clear win" in demo.verdict(r(0.64, 0.01), r(0.55, 0.02))   # 9 points
  assert "less than a clear win" in demo.verdict(r(0.70, 0.01), r(0.55, 0.06))   # 15 points < 3 × 6
  assert demo.verdict(r(0.50, 0.01), r(0.55, 0.02)).startswith("does NOT beat")

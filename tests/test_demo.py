"""`make demo` in miniature: real Fashion-MNIST, tiny experts, a few iterations, evaluation and export."""

import os

import numpy as np

from tesla_tf import demo
from tesla_tf import experts
from tesla_tf.data import distilled


def test_demo_runs_end_to_end(tmp_path):
  config = demo.DemoConfig(workdir=str(tmp_path), width=8, num_experts=1, expert_epochs_trained=2,
                           max_train_examples=512, syn_steps=2, expert_epochs=1, max_start_epoch=1,
                           iterations=3, num_eval=1, eval_epochs=2)
  results = demo.run_demo(config)

  assert experts.TrajectoryStore(os.path.join(tmp_path, "experts")).finished() == [0]
  for kind in ("distilled", "random_subset"):
    accuracy = results[kind]["convnet"]["accuracies"]
    assert len(accuracy) == 1 and 0.0 <= accuracy[0] <= 1.0
  # The baseline is trained on the teacher's soft labels, as the distilled set (a fair comparison).
  assert results["settings"]["soft_labels"]

  ds, metadata = distilled.load(os.path.join(tmp_path, "run", "distilled"))
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 10 and metadata["ipc"] == 1
  soft = np.stack([e["soft_label"] for e in examples])
  np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal([e["label"] for e in examples], soft.argmax(axis=1))  # the hard label

  text = demo.summary(results, config)
  assert f"{100 * results['distilled']['convnet']['mean']:.2f}" in text
  assert f"{100 * results['random_subset']['convnet']['mean']:.2f}" in text
  assert "tensorboard --logdir" in text

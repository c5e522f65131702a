"""Evaluation: the SGD recipe by hand, lr schedule, soft-label loss, baseline, eval.json, the tool."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import models
from tesla_tf import evaluate
from tesla_tf.data import distilled
from tesla_tf.data.distilled import DistilledSet
from tests.helpers import rel_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
SMALL = {"name": "convnet", "width": 8, "depth": 1}
NORMALIZE = {"kind": "normalize", "mean": [0.5], "std": [0.5]}


def _separable(n_per_class, seed, noise=0.3):
  """Two classes of 8x8x1 images: bright top half (class 0) or bright bottom half (class 1)."""
  rng = np.random.default_rng(seed)
  pattern = np.where(np.arange(8)[:, None] < 4, 1.0, -1.0) * np.ones((8, 8))
  labels = np.repeat([0, 1], n_per_class)
  images = np.where(labels[:, None, None] == 0, 1.0, -1.0) * pattern
  images = images + noise * rng.normal(size=images.shape)
  return images[..., None].astype(np.float32), labels.astype(np.int32)


def _set(ipc=3, soft=False, lr=0.05):
  images, hard = _separable(ipc, seed=0)
  labels = np.eye(2, dtype=np.float32)[hard]
  if soft:
    labels = 0.8 * labels + 0.1
  return DistilledSet(images=images, labels=labels, lr=lr, dataset="synthetic", ipc=ipc,
                      preprocessing=NORMALIZE, model=dict(SMALL))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_soft_cross_entropy_is_the_hand_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)) * 3
  labels = _softmax(rng.normal(size=(5, 4)))
  expected = -np.mean(np.sum(labels * np.log(_softmax(logits)), axis=1))
  got = models.soft_cross_entropy(tf.constant(labels), tf.constant(logits))
  np.testing.assert_allclose(float(got), expected, rtol=1e-12)


def test_lr_schedule_steps_once_at_half():
  assert [evaluate.lr_at(e, 1.0, 10) for e in range(10)] == [1.0] * 5 + [0.1] * 5
  assert evaluate.lr_at(499, 0.01, 1000) == 0.01 and evaluate.lr_at(500, 0.01, 1000) == pytest.approx(1e-3)
  assert evaluate.lr_at(0, 0.5, 1) == 0.5  # a 1-epoch run never decays


def test_fit_uses_the_schedule_and_resets_momentum(monkeypatch):
  config = evaluate.EvalConfig(epochs=6, dsa_strategy="none", log_every=100)
  trainer = evaluate.Trainer("convnet", {"width": 4, "depth": 1}, 2, SHAPE, 6, config)
  used, resets = [], []
  monkeypatch.setattr(trainer, "train_epoch", lambda x, y, epoch, seed, lr: used.append(lr) or (0.5, 1.0))
  monkeypatch.setattr(trainer, "zero_momentum", lambda: resets.append(len(used)))
  s = _set()
  trainer.fit(s.images, s.labels, 0.2, seed=0, test_batches=[(tf.constant(s.images), tf.constant([0] * 6))])
  assert used == pytest.approx([0.2, 0.2, 0.2, 0.02, 0.02, 0.02])
  assert resets == [0, 3]  # reset() at the start, then the decay before epoch 3


def test_sgd_momentum_is_pytorch_sgd_in_numpy():
  theta, buf = np.array([1.0, -2.0]), np.zeros(2)
  g0, g1, lr, m, wd = np.array([0.5, 0.25]), np.array([-1.0, 2.0]), 0.1, 0.9, 0.01
  theta1, buf = evaluate.sgd_momentum(theta, g0, buf, lr, m, wd)
  theta2, buf = evaluate.sgd_momentum(theta1, g1, buf, lr, m, wd)
  # By hand: d0 = g0 + wd·θ0 = (0.51, 0.23); θ1 = θ0 − lr·d0 = (0.949, −2.023);
  # d1 = g1 + wd·θ1 = (−0.99051, 1.97977); buf1 = 0.9·d0 + d1 = (−0.53151, 2.18677); θ2 = θ1 − lr·buf1.
  np.testing.assert_allclose(theta1, [0.949, -2.023], rtol=1e-14)
  np.testing.assert_allclose(buf, [-0.53151, 2.18677], rtol=1e-12)
  np.testing.assert_allclose(theta2, [0.949 + 0.053151, -2.023 - 0.218677], rtol=1e-12)


def test_trainer_two_steps_equal_numpy_sgd():
  config = evaluate.EvalConfig(epochs=10, dsa_strategy="none", momentum=0.9, weight_decay=0.05)
  s = _set()
  trainer = evaluate.Trainer("convnet", {"width": 4, "depth": 1}, 2, SHAPE, 6, config)
  trainer.reset(seed=3)
  flat = trainer.flat
  theta = flat.get_flat().numpy().astype(np.float64)

  def grad(theta_np):
    t = tf.constant(theta_np, tf.float32)
    with tf.GradientTape() as tape:
      tape.watch(t)
      loss = models.soft_cross_entropy(s.labels, flat.apply(t, s.images))
    return tape.gradient(loss, t).numpy().astype(np.float64)

  lr, buf = 0.1, np.zeros_like(theta)
  for epoch in range(2):  # n <= batch: one full-batch step per epoch
    expected, buf = evaluate.sgd_momentum(theta, grad(theta), buf, lr, 0.9, 0.05)
    trainer.train_epoch(tf.constant(s.images), tf.constant(s.labels), epoch, 3, lr)
    got = trainer.flat.get_flat().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)
    theta = got.astype(np.float64)
  assert trainer.trace_count == 1


def test_bfloat16_trainer_steps_like_the_float32_one():
  """precision="bfloat16": the layers compute in bfloat16, θ and the loss stay float32, and two SGD
  epochs from one seed land close to (not on) the float32 network's θ."""
  s, thetas = _set(), {}
  for precision in ("float32", "bfloat16"):
    config = evaluate.EvalConfig(epochs=2, dsa_strategy="none", precision=precision)
    trainer = evaluate.Trainer("convnet", {"width": 8, "depth": 1}, 2, SHAPE, 6, config)
    trainer.reset(seed=3)
    start = trainer.flat.get_flat().numpy()
    for epoch in range(2):
      loss, _ = trainer.train_epoch(tf.constant(s.images), tf.constant(s.labels), epoch, 3, 0.1)
    thetas[precision] = trainer.flat.get_flat().numpy() - start
    assert trainer.flat.get_flat().dtype == tf.float32 and np.isfinite(loss)
  assert {layer.compute_dtype for layer in trainer.model.layers[1:]} == {"bfloat16"}
  assert 0 < rel_error(thetas["bfloat16"], thetas["float32"]) < 0.05
  with pytest.raises(ValueError, match="precision"):
    evaluate.EvalConfig(precision="float16")


def test_padded_last_batch_averages_over_real_rows():
  # n = 5 with batch 2: three steps, the last one padded. At lr 0 the parameters stay put, so the
  # epoch's mean loss must equal the plain mean cross-entropy over the 5 rows.
  config = evaluate.EvalConfig(epochs=4, batch_size=2, dsa_strategy="none")
  s = _set()
  images, labels = s.images[:5], np.array([[0.7, 0.3], [0.2, 0.8], [1, 0], [0, 1], [0.5, 0.5]], np.float32)
  trainer = evaluate.Trainer("convnet", {"width": 4, "depth": 1}, 2, SHAPE, 5, config)
  trainer.reset(seed=0)
  assert (trainer.batch, trainer.steps) == (2, 3)
  logits = trainer.model(images, training=True).numpy().astype(np.float64)
  expected = -np.mean(np.sum(labels * np.log(_softmax(logits)), axis=1))
  loss, _ = trainer.train_epoch(tf.constant(images), tf.constant(labels), 0, 0, 0.0)
  assert loss == pytest.approx(expected, rel=1e-5)
  trainer.reset(seed=1)  # another seed, epoch and lr reuse the same graph
  trainer.train_epoch(tf.constant(images), tf.constant(labels), 7, 1, 0.3)
  assert trainer.trace_count == 1


def test_separable_problem_reaches_full_accuracy_and_writes_eval_json(tmp_path):
  config = evaluate.EvalConfig(num_eval=2, epochs=30, log_every=10, eval_test_every=10)
  test = _separable(50, seed=1)
  pool = _separable(20, seed=2)
  out = tmp_path / "eval.json"
  results = evaluate.evaluate_distilled(_set(), config, test_data=test, train_data=pool, out_path=str(out),
                                        logdir=str(tmp_path / "tb"))
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))
  assert set(results) == {"distilled", "random_subset", "settings"}
  summary = results["distilled"]["convnet"]
  assert summary["accuracies"] == [r["test_accuracy"] for r in summary["runs"]]
  assert summary["mean"] >= 0.97, summary
  assert summary["std"] == pytest.approx(np.std(summary["accuracies"]))
  assert [c[0] for c in summary["runs"][0]["curve"]] == [10, 20, 30]
  assert results["random_subset"]["convnet"]["mean"] >= 0.9
  settings = results["settings"]
  assert settings["metric"] == evaluate.METRIC and settings["lr"] == 0.05
  assert settings["lr_source"] == "learned α of the set" and settings["seeds"] == [0, 1]
  assert settings["random_subset_labels"] == "one-hot"
  assert settings["model_kwargs"] == {"convnet": {"width": 8, "depth": 1}}
  assert os.listdir(tmp_path / "tb")
  assert "random real subset" in evaluate.format_summary(results)


def test_baseline_uses_the_same_recipe_and_the_labeler():
  config = evaluate.EvalConfig(num_eval=1, epochs=3, seed=4)
  test, pool = _separable(10, seed=1), _separable(20, seed=2)
  calls = []

  def labeler(x):
    calls.append(x.shape)
    return np.full((len(x), 2), 0.5, np.float32)

  s = _set(soft=True)
  results = evaluate.evaluate_distilled(s, config, test_data=test, train_data=pool, baseline_labeler=labeler)
  assert calls == [(6, 8, 8, 1)] and results["settings"]["random_subset_labels"] == "baseline_labeler"
  # The baseline run equals a stand-alone Trainer fit on the same subset, rows, lr and seed.
  index = [np.flatnonzero(pool[1] == c) for c in range(2)]
  x, _ = evaluate.random_subset(pool, index, 3, seed=4)
  trainer = evaluate.Trainer("convnet", {"width": 8, "depth": 1}, 2, SHAPE, 6, config)
  alone = trainer.fit(x, np.full((6, 2), 0.5, np.float32), 0.05, 4,
                      tf.data.Dataset.from_tensor_slices(test).batch(config.test_batch_size))
  run = results["random_subset"]["convnet"]["runs"][0]
  assert run["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-6)
  assert run["test_accuracy"] == alone["test_accuracy"]


def test_bad_lr_and_config_are_refused():
  with pytest.raises(ValueError, match="learned α is -0.1"):
    evaluate.evaluate_distilled(_set(lr=-0.1), evaluate.EvalConfig(), test_data=_separable(2, 0))
  with pytest.raises(ValueError, match="Unknown model"):
    evaluate.EvalConfig(models=("resnet99",))
  with pytest.raises(ValueError, match="epochs"):
    evaluate.EvalConfig(epochs=0)


def test_evaluate_tool_on_fashion_mnist(tmp_path):
  rng = np.random.default_rng(0)
  s = DistilledSet(images=rng.normal(size=(10, 28, 28, 1)).astype(np.float32),
                   labels=np.eye(10, dtype=np.float32), lr=0.01, dataset="fashion_mnist", ipc=1,
                   preprocessing={"kind": "normalize", "mean": [0.2861], "std": [0.3530]},
                   model={"name": "convnet", "width": 8})
  run = tmp_path / "run"
  distilled.export(s, run / "distilled")
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), f"--run_dir={run}", "--epochs=2",
       "--num_eval=1"], capture_output=True, text=True, timeout=150, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((run / "eval.json").read_text())
  assert results["settings"]["dataset"] == "fashion_mnist" and results["settings"]["model_kwargs"] == {
      "convnet": {"width": 8}}
  assert 0.0 <= results["distilled"]["convnet"]["mean"] <= 1.0
  assert len(results["random_subset"]["convnet"]["accuracies"]) == 1
  assert "random real subset (one-hot labels)" in result.stdout  # no run record: no teacher
  assert os.listdir(run / "tensorboard")

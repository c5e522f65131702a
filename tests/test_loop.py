"""The distillation loop: resume, crash safety, divergence guard, real-data progress (configs:
tests/test_configs.py)."""

import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import store as store_lib
from tesla_tf import errors, experts, models
from tesla_tf.data import pipeline, preprocess, sources
from tesla_tf.distill import loop, synthetic
from tesla_tf.distill import run_dir as run_dir_lib
from tesla_tf.models.flat import FlatModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4


def make_store(path, dataset, width=8, seed=0, num_experts=2):
  """A store of generated trajectories (random walks from a PyTorch-style init) for `dataset`'s shapes."""
  info = sources.get_info(dataset)
  model = models.build("convnet", info.num_classes, info.image_shape, width=width)
  fmodel = FlatModel(model)
  store = store_lib.TrajectoryStore.create_or_open(path, {
      "dataset": dataset, "model": "convnet", "model_kwargs": {"width": width},
      "preprocessing": preprocess.build("normalize", info).to_dict(), "epochs": EPOCHS, "lr_teacher": 0.01,
      "layout": fmodel.layout(), "num_params": fmodel.num_params, "num_classes": info.num_classes,
      "image_shape": info.image_shape})
  rng = np.random.default_rng(seed)
  for e in range(num_experts):
    theta = fmodel.initial_flat(e).numpy()
    steps = rng.normal(scale=0.01, size=(EPOCHS, theta.size)).astype(np.float32)
    store.write(e, np.concatenate([theta[None], theta + np.cumsum(steps, 0)]), {"seed": e})
  return store


def parse_tool_flags(argv):
  """Parses argv with tools/distill.py's flags in a fresh FlagValues; returns its DistillConfig."""
  # The one import name of the tool in a test process: absl defines its flags at import.
  from tesla_tf.tools import distill as tool  # pylint: disable=import-outside-toplevel
  tool.FLAGS.unparse_flags()
  tool.FLAGS(["distill.py"] + argv)
  return tool, tool.config_from_flags()


def test_flags_cfg_of_a_library_run_replays_its_config(store_dir, tmp_path):
  """distill() called from Python writes flags.cfg; tools/distill.py reads it back to the same config."""
  config = small_config(store_dir, str(tmp_path / "run"), iterations=1, lr_teacher=0.02,
                        halve_tesla_image_grad=True, labels="hard", max_image_classes=7)
  loop.distill(config)
  _, replayed = parse_tool_flags([f"--flagfile={tmp_path / 'run' / 'flags.cfg'}"])
  assert replayed == config
  other = dataclasses.replace(config, eval_models=("convnet", "alexnet"), data_dir="/data/x", lr_img=1e-3,
                              dsa_strategy="none")
  (tmp_path / "other.cfg").write_text(run_dir_lib.as_flags(dataclasses.asdict(other)))
  assert parse_tool_flags([f"--flagfile={tmp_path / 'other.cfg'}"])[1] == other


def small_config(store_dir, run_dir, **kw):
  base = dict(dataset="fashion_mnist", store_dir=store_dir, run_dir=run_dir, ipc=2, syn_steps=3,
              expert_epochs=2, max_start_epoch=2, lr_img=100.0, lr_lr=1e-5, batch_syn=10, labels="teacher",
              iterations=6, save_every=1, log_every=1, log_images_every=3)
  base.update(kw)
  return loop.DistillConfig(**base)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("fmnist_store"))
  make_store(path, "fashion_mnist", num_experts=3)
  return path


def test_autograph_converts_none_of_the_project_s_functions(store_dir, tmp_path, monkeypatch):
  """A run (step, evaluation epochs, data maps) and the expert input pipeline trace the project's code as
  written: AutoGraph's conversion of it cost ~8 s of every process's first trace (docs/benchmarks.md).
  Small lambdas and closures handed to tf.data maps may still be converted; nothing else."""
  from tensorflow.python.autograph.pyct import transpiler  # pylint: disable=import-outside-toplevel
  converted, transform = [], transpiler.PyToPy.transform

  def recording(self, obj, user_context):  # every conversion request, cached ones included
    converted.append(f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}")
    return transform(self, obj, user_context)

  monkeypatch.setattr(transpiler.PyToPy, "transform", recording)
  loop.distill(small_config(store_dir, str(tmp_path / "run"), iterations=1, eval_models=("convnet",),
                            num_eval=1, eval_epochs=1))
  arrays = np.zeros((8, 28, 28, 1), np.uint8), np.arange(8) % 2
  prep = preprocess.build("normalize", sources.get_info("fashion_mnist"))
  next(iter(pipeline.train_pipeline(arrays, prep, 4, seed=0, repeat=True)))
  project = [c for c in converted if c.startswith("tesla_tf")]
  assert project and all("<lambda>" in c or "<locals>" in c for c in project), project


def test_a_recorded_run_labels_its_baseline_with_its_own_teacher(store_dir, tmp_path, caplog):
  """tools/evaluate.py --run_dir draws the random subset's labels as the run's final evaluation did: the
  softmax of expert 0 at epoch max_start_epoch − 1 + expert_epochs, with the run's temperature and mix."""
  def record(run, store=store_dir, **kw):
    config = small_config(store, str(run), **{"label_temperature": 2.0, "label_mix": 0.25, **kw})
    run.mkdir()
    run_dir_lib.write_record(str(run), {**dataclasses.asdict(config), "model": {"name": "convnet"}}, "")
    return str(run)

  labeler = loop.recorded_baseline_labeler(record(tmp_path / "teacher"))
  images = np.random.default_rng(0).normal(size=(20, 28, 28, 1)).astype(np.float32)
  store = store_lib.TrajectoryStore(store_dir)
  fmodel = store.build_model()
  theta = store.read(0, epochs=[2 - 1 + 2])[0]
  hard = np.eye(10, dtype=np.float32)[np.repeat(np.arange(10), 2)]
  expected = 0.75 * tf.nn.softmax(fmodel.apply(tf.constant(theta), images, training=False) / 2.0) + 0.25 * hard
  np.testing.assert_allclose(labeler(images), expected, atol=1e-6)
  assert loop.recorded_baseline_labeler(record(tmp_path / "hard", labels="hard",
                                               label_temperature=1.0, label_mix=0.0)) is None
  assert loop.recorded_baseline_labeler(str(tmp_path / "no_record")) is None
  moved = record(tmp_path / "moved", store=str(tmp_path / "gone"))
  assert loop.recorded_baseline_labeler(moved) is None and "one-hot labels" in caplog.text


@pytest.mark.parametrize("labels", ["teacher", "learned"])
def test_resume_equals_uninterrupted(store_dir, tmp_path, labels):
  tf.config.experimental.enable_op_determinism()
  straight = loop.distill(small_config(store_dir, str(tmp_path / "a"), labels=labels))
  loop.distill(small_config(store_dir, str(tmp_path / "b"), labels=labels, iterations=3))
  resumed = loop.distill(small_config(store_dir, str(tmp_path / "b"), labels=labels))
  np.testing.assert_array_equal(straight.images, resumed.images)
  np.testing.assert_array_equal(straight.labels, resumed.labels)
  assert straight.lr == resumed.lr


def test_busy_run_dir_is_refused_and_a_sigkilled_run_resumes_to_the_uninterrupted_result(store_dir, tmp_path):
  """A second run into the run directory of a live one is refused (the lock names its pid). Then the live
  run, which checkpoints every iteration, is killed at an arbitrary moment and resumed to the end: the
  result equals an uninterrupted run (a half-written checkpoint is never the one restored, the dead
  process's lock is taken over, and the refused run changed nothing)."""
  run_dir = str(tmp_path / "killed")
  argv = [sys.executable, os.path.join(ROOT, "tools", "distill.py"), f"--store_dir={store_dir}",
          f"--run_dir={run_dir}", "--dataset=fashion_mnist", "--ipc=2", "--syn_steps=3", "--expert_epochs=2",
          "--max_start_epoch=2", "--lr_img=100", "--lr_lr=1e-5", "--batch_syn=10", "--labels=teacher",
          "--iterations=16", "--save_every=1", "--log_every=1", "--log_images_every=1000"]
  proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and len(glob.glob(os.path.join(run_dir, "checkpoints", "*.index"))) < 3:
      time.sleep(0.05)
    with pytest.raises(errors.IncompatibleRunError, match=f"in use by pid {proc.pid} on "):
      loop.distill(small_config(store_dir, run_dir, iterations=16, log_images_every=1000))
    time.sleep(0.37)  # somewhere inside a later iteration or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
  tf.config.experimental.enable_op_determinism()
  resumed = loop.distill(small_config(store_dir, run_dir, iterations=16, log_images_every=1000))
  straight = loop.distill(small_config(store_dir, str(tmp_path / "straight"), iterations=16,
                                       log_images_every=1000, save_every=16))
  np.testing.assert_array_equal(straight.images, resumed.images)
  assert straight.lr == resumed.lr


def test_divergence_guard_stops_and_keeps_a_loadable_checkpoint(store_dir, tmp_path, monkeypatch):
  original = loop.Distiller.iterate

  def iterate(self):  # a NaN pixel after two good iterations: the loss itself turns NaN
    if int(self.iteration.numpy()) == 2:
      self.images.assign(tf.tensor_scatter_nd_update(self.images, [[0, 0, 0, 0]], [float("nan")]))
    return original(self)

  monkeypatch.setattr(loop.Distiller, "iterate", iterate)
  config = small_config(store_dir, str(tmp_path / "nan"), save_every=1)
  with pytest.raises(loop.DivergenceError, match="--lr_img"):
    loop.distill(config)
  latest = tf.train.latest_checkpoint(os.path.join(config.run_dir, "checkpoints"))
  assert latest.endswith("-2")
  restored = loop.Distiller(config)
  restored.checkpoint().restore(latest).assert_existing_objects_matched()
  assert int(restored.iteration.numpy()) == 2
  assert np.isfinite(restored.images.numpy()).all()


def test_row_chunks_run_equals_whole_batch_run(store_dir, tmp_path):
  """--row_chunks=2 is a memory knob only: the distilled set matches the unchunked run's (float32)."""
  whole = loop.distill(small_config(store_dir, str(tmp_path / "whole"), mode="exact", iterations=2))
  chunked = loop.distill(small_config(store_dir, str(tmp_path / "chunked"), mode="exact", iterations=2,
                                      row_chunks=2))
  initial = loop.Distiller(small_config(store_dir, str(tmp_path / "initial"), mode="exact")).images.numpy()
  assert np.abs(whole.images - initial).max() > 1e-3  # the comparison is not between two untouched sets
  np.testing.assert_allclose(chunked.images, whole.images, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(chunked.lr, whole.lr, rtol=1e-5)
  with pytest.raises(ValueError, match="--row_chunks=3 must be ≥ 1 and divide --batch_syn=10"):
    loop.Distiller(small_config(store_dir, str(tmp_path / "bad"), row_chunks=3))
  with pytest.raises(errors.UsageError, match="--row_chunks=2 needs --mode=tesla or exact"):
    loop.Distiller(small_config(store_dir, str(tmp_path / "bad"), mode="unrolled", row_chunks=2))


def test_bfloat16_student_distils_close_to_the_float32_run(store_dir, tmp_path):
  """--precision=bfloat16 changes the arithmetic only: the images move as the float32 run's do."""
  initial = loop.Distiller(small_config(store_dir, str(tmp_path / "initial"), mode="exact")).images.numpy()
  runs = {p: loop.distill(small_config(store_dir, str(tmp_path / p), mode="exact", iterations=2, precision=p))
          for p in ("float32", "bfloat16")}
  step32, step16 = (runs[p].images - initial for p in ("float32", "bfloat16"))
  assert np.abs(step32).max() > 1e-3
  cos = float(np.sum(step32 * step16) / (np.linalg.norm(step32) * np.linalg.norm(step16)))
  assert 0.98 < cos < 1.0 - 1e-7, cos  # close, and not the float32 run itself
  assert runs["bfloat16"].images.dtype == np.float32


@pytest.mark.parametrize("shape", [(), (3, 4, 4, 2)])
def test_sgd_momentum_is_pytorch_sgd(shape):
  rng = np.random.default_rng(0)
  p0, g0, g1 = (rng.normal(size=shape) for _ in range(3))
  variable, buffer = tf.Variable(p0), tf.Variable(np.zeros(shape))
  synthetic.sgd_momentum(variable, buffer, tf.constant(g0), 0.1, momentum=0.5)
  synthetic.sgd_momentum(variable, buffer, tf.constant(g1), 0.1, momentum=0.5)
  buf = g0                   # PyTorch: the first step's buffer is the gradient
  p1 = p0 - 0.1 * buf
  buf = 0.5 * buf + g1
  np.testing.assert_allclose(variable.numpy(), p1 - 0.1 * buf, rtol=1e-12)
  np.testing.assert_allclose(buffer.numpy(), buf, rtol=1e-12)


def test_refuses_store_of_another_dataset(tmp_path):
  make_store(str(tmp_path / "mnist"), "mnist")
  with pytest.raises(ValueError, match="fashion_mnist"):
    loop.Distiller(small_config(str(tmp_path / "mnist"), str(tmp_path / "run")))


def test_tesla_lowers_the_matching_loss_on_real_fashion_mnist(tmp_path):
  """Real experts (small, short) on real Fashion-MNIST; 50 tesla iterations lower the matching loss."""
  store = str(tmp_path / "experts")
  experts.train_experts(experts.ExpertConfig(
      dataset="fashion_mnist", model="convnet", model_kwargs={"width": 16}, preprocessing="normalize",
      store_dir=store, num_experts=1, epochs=3, batch_size=128, max_train_examples=3000, seed=0,
      verbose=0))
  config = small_config(store, str(tmp_path / "run"), ipc=1, syn_steps=5, max_start_epoch=1,
                        expert_epochs=2, lr_img=1000.0, lr_lr=1e-7, batch_syn=0, iterations=50,
                        save_every=50, log_every=1, log_images_every=1000, labels="teacher")
  losses = []
  original = loop.Distiller.iterate

  def iterate(self):
    metrics = original(self)
    losses.append(metrics["loss/matching"])
    return metrics

  loop.Distiller.iterate = iterate
  try:
    loop.distill(config)
  finally:
    loop.Distiller.iterate = original
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  print(f"matching loss: first 5 iterations {first:.4f}, last 5 {last:.4f}")
  assert last < 0.95 * first


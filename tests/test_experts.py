"""Expert training and the trajectory store, on real Fashion-MNIST cut down to a few hundred images."""

import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import store as store_lib
from tesla_tf import errors
from tesla_tf import experts
from tesla_tf import models
from tesla_tf.data import pipeline
from tesla_tf.data import preprocess
from tesla_tf.data import service
from tesla_tf.models.flat import FlatModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train_experts.py")
SERVICE_TOOL = os.path.join(ROOT, "tools", "data_service.py")
TINY = dict(dataset="fashion_mnist", model_kwargs={"width": 8}, epochs=2, batch_size=64,
            max_train_examples=256, max_test_examples=500, verbose=0)
TINY_FLAGS = ["--dataset=fashion_mnist", "--width=8", "--batch_train=64", "--max_train_examples=256",
              "--max_test_examples=500", "--verbose=2"]


def _config(store_dir, **overrides):
  return experts.ExpertConfig(store_dir=str(store_dir), **{**TINY, **overrides})


def _fake_fields(**overrides):
  return {"dataset": "fashion_mnist", "model": "convnet", "model_kwargs": {"width": 8}, "num_params": 6,
          "layout": [["a/kernel", [2, 3]]], "preprocessing": {"kind": "normalize"}, "epochs": 3,
          "lr_teacher": 0.01, **overrides}


def _run_tool(args, **kwargs):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
  return subprocess.run([sys.executable, TOOL] + args, env=env, capture_output=True, text=True,
                        timeout=600, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Expert 0 by train_expert (model kept), then train_experts fills in expert 1 (2 tiny epochs each)."""
  config = _config(tmp_path_factory.mktemp("store"), num_experts=2)
  store, data = experts.open_store(config)
  model, trajectory, info = experts.train_expert(config, 0, data)
  store.write(0, trajectory, info)
  return config, experts.train_experts(config), data, model


# Training ---------------------------------------------------------------------------------------------

def test_trajectory_starts_at_init_and_ends_at_trained_weights(trained):
  config, store, _, model = trained
  trajectory, info = store.read(0), store.info(0)
  initial = models.build("convnet", 10, (28, 28, 1), seed=experts.expert_seeds(config.seed, 0)[0], width=8)
  flat = FlatModel(model)
  assert trajectory.shape == (config.epochs + 1, flat.num_params) and trajectory.dtype == np.float32
  np.testing.assert_array_equal(trajectory[0], FlatModel(initial).get_flat().numpy())
  np.testing.assert_array_equal(trajectory[-1], flat.get_flat().numpy())
  assert not np.allclose(trajectory[1], trajectory[0]) and not np.allclose(trajectory[2], trajectory[1])
  assert len(info["test_accuracy"]) == config.epochs and info["init_seed"] != info["data_seed"]


def test_stored_expert_is_the_trained_network(trained):
  """Row 0 is the derived-seed init; the last row scores exactly the recorded final test accuracy."""
  config, store, data, _ = trained
  assert store.finished() == [0, 1]
  assert store.manifest.preprocessing == {"kind": "normalize", "mean": [0.2861], "std": [0.353]}
  for index in store.finished():
    trajectory, info = store.read(index), store.info(index)
    model = models.build("convnet", 10, (28, 28, 1), seed=info["init_seed"], width=8)
    flat = FlatModel(model)
    np.testing.assert_array_equal(trajectory[0], flat.get_flat().numpy())
    assert info["init_seed"] == experts.expert_seeds(config.seed, index)[0]
    correct = 0
    for images, labels in pipeline.eval_pipeline(data.test, data.preprocessor, 250):
      logits = flat.apply(tf.constant(trajectory[-1]), images, training=False)
      correct += int(tf.reduce_sum(tf.cast(tf.argmax(logits, -1, tf.int32) == labels, tf.int32)))
    assert correct / 500 == pytest.approx(info["test_accuracy"][-1], abs=1e-6)
  assert not np.array_equal(store.read(0)[0], store.read(1)[0])  # different seeds per expert


def test_rerun_skips_finished_experts(trained):
  config, store, _, _ = trained
  before = {i: os.path.getmtime(store._file(i, ".npy")) for i in store.finished()}
  experts.train_experts(config)
  assert {i: os.path.getmtime(store._file(i, ".npy")) for i in store.finished()} == before


def test_other_settings_are_refused_with_the_fields_named(trained):
  config, store, _, _ = trained
  with pytest.raises(store_lib.StoreMismatchError, match=r"store has \{\"width\": 8\}.*num_params"):
    experts.train_experts(_config(config.store_dir, model_kwargs={"width": 16}))
  with pytest.raises(store_lib.StoreMismatchError, match="preprocessing: store has 'normalize'"):
    experts.train_experts(_config(config.store_dir, preprocessing="zca"))
  assert not os.path.exists(os.path.join(store.path, "zca.npz"))
  with pytest.raises(store_lib.StoreMismatchError, match=f"{store.path}.*lr_teacher"):
    experts.train_experts(_config(config.store_dir, lr_teacher=0.02))
  with pytest.raises(store_lib.StoreMismatchError, match="dataset: store has \"fashion_mnist\""):
    store.check_compatible({"dataset": "mnist", "model": "convnet"})
  store.check_compatible({"dataset": "fashion_mnist", "model_kwargs": {"width": 8}})


def test_bfloat16_expert_trains_like_the_float32_one_and_its_store_says_so(trained, tmp_path):
  """--precision=bfloat16: the layers compute in bfloat16, the trajectory stays float32, its first epoch
  moves θ as the float32 expert's did (cosine), and the store records the precision and refuses the other."""
  config = trained[0]
  bf16 = dataclasses.replace(config, store_dir=str(tmp_path), precision="bfloat16", epochs=1, num_experts=1)
  assert {layer.compute_dtype for layer in experts.build_expert(bf16, 0).layers[1:]} == {"bfloat16"}
  store = experts.train_experts(bf16)
  assert store.manifest.precision == "bfloat16" and trained[1].manifest.precision == "float32"
  trajectory, reference = store.read(0), trained[1].read(0)
  assert trajectory.dtype == np.float32
  np.testing.assert_array_equal(trajectory[0], reference[0])  # same init
  step16, step32 = trajectory[1] - trajectory[0], reference[1] - reference[0]
  assert not np.array_equal(step16, step32)
  assert np.dot(step16, step32) / np.linalg.norm(step16) / np.linalg.norm(step32) > 0.99
  with pytest.raises(store_lib.StoreMismatchError, match='precision: store has "bfloat16"'):
    experts.train_experts(dataclasses.replace(bf16, precision="float32"))


def test_zca_store_saves_the_transform_it_trains_with(tmp_path):
  config = _config(tmp_path, preprocessing="zca", epochs=1, max_test_examples=64)
  store, data = experts.open_store(config)
  assert store.manifest.preprocessing["kind"] == "zca"
  assert os.path.isfile(os.path.join(store.path, "zca.npz"))
  again, _ = experts.open_store(config)  # reopening loads the store's file, no refit
  assert again.manifest == store.manifest
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), np.uint8)
  np.testing.assert_allclose(data.preprocessor.apply(images), preprocess.ZCA.load(store.path).apply(images),
                             rtol=1e-6)
  np.testing.assert_array_equal(store.preprocessor().apply(images), data.preprocessor.apply(images))


@pytest.mark.parametrize("overrides, match", [
    ({"dataset": "nope"}, "Unknown dataset 'nope'"),
    ({"model": "convnet9"}, "--model"),
    ({"preprocessing": "pca"}, "--preprocessing"),
    ({"precision": "float16"}, r"Unknown precision 'float16' \(--precision\)"),
    ({"max_train_examples": 10}, "smaller than one batch"),
])
def test_bad_config_is_refused(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    _config(tmp_path, **overrides)


# The train step ---------------------------------------------------------------------------------------

def _tiny_batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, 12, 12, 1)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


@pytest.mark.parametrize("soft, global_batch", [(False, 6), (False, None), (True, 6)])
def test_train_step_is_sgd_on_the_batch_mean_cross_entropy(soft, global_batch):
  """One step on 6 images: loss = numpy softmax CE of the logits, θ₁ = θ₀ − lr·∇ (a GradientTape on θ).

  Probability rows (one-hot here) train like integer labels; an unknown global batch size is counted.
  """
  lr = 0.05
  images, labels = _tiny_batch(6)
  model = models.build("convnet", 10, (12, 12, 1), seed=3, width=8)
  flat = FlatModel(model)
  theta = tf.constant(flat.get_flat())
  with tf.GradientTape() as tape:
    tape.watch(theta)
    logits = flat.apply(theta, images, training=True)
    log_p = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)
    reference_loss = -tf.reduce_mean(tf.gather(log_p, labels, batch_dims=1))
  expected = (theta - lr * tape.gradient(reference_loss, theta)).numpy()
  z = logits.numpy().astype(np.float64)
  z -= z.max(axis=-1, keepdims=True)
  numpy_ce = np.mean(np.log(np.exp(z).sum(axis=-1)) - z[np.arange(6), labels])
  targets = np.eye(10, dtype=np.float32)[labels] if soft else labels

  step = experts.TrainStep(model, tf.distribute.get_strategy(), lr, global_batch_size=global_batch)
  loss_sum, correct, count = step.train((tf.constant(images), tf.constant(targets))).numpy()
  assert count == 6 and correct == np.sum(np.argmax(z, axis=-1) == labels)
  assert loss_sum / count == pytest.approx(numpy_ce, rel=1e-5)
  np.testing.assert_allclose(flat.get_flat().numpy(), expected, rtol=1e-5, atol=1e-7)
  assert np.abs(expected - theta.numpy()).max() > 1e-4  # the step moved θ


_MIRRORED_STEP = textwrap.dedent("""
    import json
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from tesla_tf import experts, models
    from tesla_tf.models.flat import FlatModel

    rng = np.random.default_rng(0)
    data = (rng.normal(size=(7, 12, 12, 1)).astype(np.float32), rng.integers(0, 10, 7).astype(np.int32))
    batches = tf.data.Dataset.from_tensor_slices(data).batch(7)  # batch size unknown: counted per step
    out = {{}}
    for name, strategy in (("default", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
      with strategy.scope():
        model = models.build("convnet", 10, (12, 12, 1), seed=3, width=8)
      step = experts.TrainStep(model, strategy, 0.05)
      distributed = strategy.experimental_distribute_dataset(batches)
      train = step.run(distributed)
      copies = [v.numpy() for v in strategy.experimental_local_results(model.trainable_variables[0].value)]
      out[name] = {{"replicas": strategy.num_replicas_in_sync, "train": train,
                   "test": step.run(distributed, train=False),
                   "theta": FlatModel(model).get_flat().numpy().tolist(),
                   "copies_equal": all(np.array_equal(c, copies[0]) for c in copies)}}
    print(json.dumps(out))
""")


def test_train_step_under_mirrored_strategy_equals_one_replica():
  """2 logical CPUs split a batch of 7 (4 + 3): same loss, accuracy and update as one replica, and the
  two copies of every variable stay equal."""
  result = subprocess.run([sys.executable, "-c", _MIRRORED_STEP.format()], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                                       "CUDA_VISIBLE_DEVICES": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  one, two = out["default"], out["mirrored"]
  assert (one["replicas"], two["replicas"]) == (1, 2) and two["copies_equal"]
  np.testing.assert_allclose(two["train"], one["train"], rtol=1e-5)
  np.testing.assert_allclose(two["test"], one["test"], rtol=1e-5)
  np.testing.assert_allclose(two["theta"], one["theta"], rtol=1e-4, atol=1e-6)


def test_no_module_uses_private_keras():
  """Nothing imports keras.src (a Keras upgrade may move it) nor patches Keras for multi-worker fit."""
  offenders = []
  for pattern in ("tesla_tf/**/*.py", "tools/*.py"):
    for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
      with open(path) as f:
        text = f.read()
      offenders += [f"{os.path.relpath(path, ROOT)}: {word}" for word in ("keras.src", "_symbolic_build")
                    if word in text]
  assert not offenders


# Store ------------------------------------------------------------------------------------------------

def _fake_store(path, indices=(0, 1, 2)):
  store = store_lib.TrajectoryStore.create_or_open(path, _fake_fields())
  for i in indices:
    store.write(i, np.full([4, 6], i, np.float32) + np.arange(4, dtype=np.float32)[:, None], {"seed": i})
  return store


def test_store_roundtrip_mmap_and_epoch_selection(tmp_path):
  store = _fake_store(tmp_path / "s", indices=(2, 0, 5))
  assert store.finished() == [0, 2, 5] and len(store) == 3
  full = store.read(5)
  assert isinstance(full, np.memmap) and full.shape == (4, 6) and full.dtype == np.float32
  np.testing.assert_array_equal(full[:, 0], [5, 6, 7, 8])
  assert isinstance(store.read(5, epochs=slice(1, 3)), np.memmap)
  np.testing.assert_array_equal(store.read(5, epochs=slice(1, 3))[:, 0], [6, 7])
  np.testing.assert_array_equal(store.read(5, epochs=[3, 0])[:, 0], [8, 5])
  assert store.info(2)["seed"] == 2 and store.info(2)["shape"] == [4, 6]
  reopened = store_lib.TrajectoryStore(tmp_path / "s")
  assert reopened.manifest.epochs == 3 and reopened.finished() == [0, 2, 5]
  with pytest.raises(IndexError, match="epochs 0..3"):
    store.read(5, epochs=[4])
  with pytest.raises(KeyError, match=r"Expert 1 is not in .*finished experts: \[0, 2, 5\]"):
    store.read(1)
  with pytest.raises(ValueError, match=r"shape \(3, 6\)"):
    store.write(7, np.zeros([3, 6], np.float32), {})
  with pytest.raises(ValueError, match="NaN"):
    store.write(7, np.full([4, 6], np.nan, np.float32), {})
  assert store.finished() == [0, 2, 5]


def test_seeded_order_is_reproducible_and_resumable(tmp_path):
  store = _fake_store(tmp_path, indices=range(6))
  assert sorted(store.order(7, 0)) == list(range(6))
  assert store.order(7, 0) == store_lib.TrajectoryStore(tmp_path).order(7, 0)
  assert store.order(7, 0) != store.order(7, 1) or store.order(7, 1) != store.order(7, 2)
  assert store.order(7, 0) != store.order(8, 0)

  def stream(place, count):
    out = []
    for _ in range(count):
      index, *place = store.next_in_rotation(7, *place)
      out.append(index)
    return out, tuple(place)
  drawn, place = stream((0, 0), 20)
  assert drawn == store.order(7, 0) + store.order(7, 1) + store.order(7, 2) + store.order(7, 3)[:2]
  assert place == (3, 2)
  assert stream((1, 3), 11)[0] == drawn[9:]  # resumed from the 10th draw


def test_corrupt_trajectory_file_is_reported_with_its_path(tmp_path):
  store = _fake_store(tmp_path, indices=(0, 1))
  with open(store._file(0, ".npy"), "wb") as f:
    f.write(b"not a numpy file")
  np.save(store._file(1, ".npy"), np.zeros([2, 6], np.float32))
  with pytest.raises(ValueError, match="expert_00000.npy: expected a readable .npy.*rerun"):
    store.read(0)
  with pytest.raises(ValueError, match=r"expert_00001.npy: expected \(4, 6\), found \(2, 6\)"):
    store.read(1)


def test_empty_or_missing_store_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*--store_dir"):
    store_lib.TrajectoryStore(tmp_path)
  store = store_lib.TrajectoryStore.create_or_open(tmp_path, _fake_fields())
  with pytest.raises(errors.MissingDataError, match=f"{tmp_path} has no finished experts"):
    store.order(0, 0)
  with pytest.raises(KeyError, match="no finished experts"):
    store.read(0)


def test_create_or_open_refuses_mismatch(tmp_path):
  store_lib.TrajectoryStore.create_or_open(tmp_path, _fake_fields())
  store_lib.TrajectoryStore.create_or_open(tmp_path, _fake_fields())
  with pytest.raises(store_lib.StoreMismatchError) as error:
    store_lib.TrajectoryStore.create_or_open(tmp_path, _fake_fields(dataset="cifar10", model="vgg11"))
  message = str(error.value)
  assert str(tmp_path) in message and "dataset" in message and "model:" in message
  assert "epochs" not in message


def test_failed_write_leaves_no_finished_expert(tmp_path, monkeypatch):
  store = _fake_store(tmp_path, indices=())
  good = np.zeros([4, 6], np.float32)

  def broken_save(*args, **kwargs):
    raise OSError("disk full")
  with monkeypatch.context() as m:
    m.setattr(store_lib.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
      store.write(0, good, {})
  with monkeypatch.context() as m:  # trajectory written, info fails: still not finished
    m.setattr(store_lib.json, "dump", broken_save)
    with pytest.raises(OSError):
      store.write(1, good, {})
  assert store.finished() == [] and len(store) == 0
  assert not glob.glob(os.path.join(tmp_path, "*.tmp")) and not glob.glob(os.path.join(tmp_path, ".*.tmp"))
  store.write(1, good + 1, {})
  assert store.finished() == [1]
  np.testing.assert_array_equal(store.read(1), good + 1)


# The tool ---------------------------------------------------------------------------------------------

def test_killed_run_leaves_no_finished_partial_expert_and_rerun_completes(tmp_path):
  store_dir = str(tmp_path / "store")
  args = TINY_FLAGS + ["--num_experts=2", "--train_epochs=2", f"--store_dir={store_dir}"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
  proc = subprocess.Popen([sys.executable, TOOL] + args, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = os.path.join(store_dir, "expert_00000.json")
  deadline = time.time() + 600
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.exists(first), "expert 0 never finished (tool failed or timed out)"
  time.sleep(0.3)  # into expert 1's training
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  store = store_lib.TrajectoryStore(store_dir)
  assert store.finished() == [0]
  assert store.read(0).shape == (3, store.manifest.num_params)
  with pytest.raises(KeyError):
    store.read(1)
  result = _run_tool(args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert store.finished() == [0, 1] and "2 finished experts" in result.stdout
  for index in (0, 1):
    trajectory = store.read(index)
    assert trajectory.shape == (3, store.manifest.num_params) and np.all(np.isfinite(trajectory))
    assert len(store.info(index)["test_accuracy"]) == 2


def _flagfile_problems(path, known):
  """Lines of an absl flagfile that are not '--known_flag=value', repeated flags, inline comments."""
  problems, seen = [], set()
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      name = line[2:].split("=", 1)[0] if line.startswith("--") and "=" in line else None
      if name is None or name not in known:
        problems.append(f"{path}:{number}: unknown or malformed flag line {line!r}")
      elif name in seen:
        problems.append(f"{path}:{number}: duplicate flag --{name}")
      elif "#" in line:
        problems.append(f"{path}:{number}: inline comment (absl keeps it in the value)")
      seen.add(name)
  return problems


_PARSE_CONFIGS = """
import dataclasses, json, sys
sys.argv = [sys.argv[0]]
import importlib.util
spec = importlib.util.spec_from_file_location("train_experts_tool", {tool!r})
tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
out = {{"known": sorted(tool.FLAGS)}}
for path in {paths!r}:
  tool.FLAGS.unparse_flags()
  tool.FLAGS(["prog", "--flagfile=" + path, "--store_dir=/nonexistent/store"])
  config = tool.config_from_flags()
  out[path] = {{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}}
for bad in (["--model=alexnet", "--width=8"], ["--model=convnet_d4", "--depth=3"]):
  tool.FLAGS.unparse_flags()
  tool.FLAGS(["prog", "--dataset=fashion_mnist", "--store_dir=/x"] + bad)
  try:
    tool.config_from_flags()
  except tool.app.UsageError as e:
    out[" ".join(bad)] = str(e)
print(json.dumps(out))
"""


def test_every_experts_config_parses_and_bad_flag_combinations_are_refused():
  paths = sorted(glob.glob(os.path.join(ROOT, "configs", "experts_*.cfg")))
  assert len(paths) == 7
  code = _PARSE_CONFIGS.format(tool=TOOL, paths=paths)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  parsed = json.loads(result.stdout.strip().splitlines()[-1])
  known = set(parsed["known"])
  for path in paths:
    assert not _flagfile_problems(path, known)
    with open(path) as f:
      text = f.read()
    assert all(f"\n# {h}\n" in text for h in ("data", "model", "training", "io")), path
    assert "REFERENCE §1" in text and "python tools/train_experts.py --flagfile=" in text
    assert parsed[path]["epochs"] == (5 if "quickstart" in path else 50) and parsed[path]["lr_teacher"] == 0.01
  by_name = {os.path.basename(p)[len("experts_"):-len(".cfg")]: parsed[p] for p in paths}
  assert by_name["cifar10_zca"]["preprocessing"] == "zca"
  assert by_name["imagenet64"]["num_experts"] == 50 and by_name["imagenet64"]["model"] == "convnet_d4"
  assert by_name["tiny_imagenet"]["model"] == "convnet_d4" and by_name["cifar100"]["num_experts"] == 100
  assert "--width/--depth apply to the ConvNet family" in parsed["--model=alexnet --width=8"]
  assert "fixes the depth" in parsed["--model=convnet_d4 --depth=3"]


def test_flagfile_checker_rejects_unknown_duplicate_and_inline_comment(tmp_path):
  bad = tmp_path / "bad.cfg"
  bad.write_text("# data\n--dataset=cifar10\n--datset=cifar10\n--dataset=mnist\n--seed=1  # why\n")
  problems = _flagfile_problems(str(bad), {"dataset", "seed"})
  assert len(problems) == 3
  assert "unknown" in problems[0] and "duplicate" in problems[1] and "inline" in problems[2]


# tf.data service --------------------------------------------------------------------------------------

def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def service_processes():
  """A dispatcher and two workers, each a tools/data_service.py process on 127.0.0.1."""
  port = _free_port()
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
  procs = [subprocess.Popen([sys.executable, SERVICE_TOOL, "--role=dispatcher", f"--port={port}"],
                            env=env, stderr=subprocess.DEVNULL)]
  try:
    for _ in range(2):
      procs.append(subprocess.Popen(
          [sys.executable, SERVICE_TOOL, "--role=worker", f"--dispatcher_address=127.0.0.1:{port}",
           "--worker_address=127.0.0.1:%port%"], env=env, stderr=subprocess.DEVNULL))
    yield f"grpc://127.0.0.1:{port}", procs
  finally:
    for p in procs:
      p.send_signal(signal.SIGTERM)
    for p in procs:
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def test_experts_train_from_data_service_processes(tmp_path, service_processes):
  address, procs = service_processes
  config = _config(tmp_path, epochs=1, data_service=address, max_test_examples=64)
  store = experts.train_experts(config)
  assert all(p.poll() is None for p in procs), "a data service process died"
  assert store.finished() == [0]
  info = store.info(0)
  assert info["data_service"] == address and len(info["train_loss"]) == 1
  assert np.all(np.isfinite(store.read(0))) and not np.allclose(store.read(0)[1], store.read(0)[0])


def test_experts_train_from_in_process_data_service(tmp_path):
  dispatcher = service.start_dispatcher(0)
  workers = [service.start_worker(dispatcher.target) for _ in range(2)]
  try:
    config = _config(tmp_path, epochs=2, data_service=dispatcher.target, max_test_examples=64)
    store = experts.train_experts(config)
    info = store.info(0)
    assert store.read(0).shape[0] == 3 and info["train_loss"][1] != info["train_loss"][0]
  finally:
    for server in workers + [dispatcher]:
      server._stop()  # pylint: disable=protected-access

"""Bad input and faults (issue 13): nothing silent, nothing lost, one clear line.

Library behaviour is tested in-process on tiny generated stores; what a user sees from a tool (one
`FATAL` line, no traceback, the exit status) is tested on the tools themselves in subprocesses.
"""

import concurrent.futures
import glob
import json
import logging
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.test_loop import make_store, small_config
from tesla_tf import cli, errors, files
from tesla_tf.data import distilled, sources
from tesla_tf.distill import loop, run_dir as run_dir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = sources.get_info("fashion_mnist").debian_dir


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("faults_store"))
  make_store(path, "fashion_mnist", num_experts=2)
  return path


def tool(name, *args, timeout=180):
  """Runs tools/<name>.py; returns (exit status, stderr lines)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name + ".py"), *args], env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  return proc.returncode, proc.stderr.splitlines()


def assert_one_fatal_line(result, code, pattern):
  status, lines = result
  text = "\n".join(lines)
  assert "Traceback" not in text, text
  fatal = [line for line in lines if line.startswith("FATAL")]
  absl_hint = lines[-1:] == ["Pass --helpshort or --helpfull to see help on flags."]  # absl's flag errors
  assert len(fatal) == 1 and fatal[0] == lines[-2 if absl_hint else -1], text
  assert re.search(pattern, fatal[0]), fatal[0]
  assert status == code, (status, text)


# -- the run directory lock -------------------------------------------------------------------------

def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  (tmp_path / run_dir_lib.LOCK_FILE).write_text("pid 999999999 on elsewhere (since then)\n")
  with caplog.at_level(logging.WARNING):
    with run_dir_lib.Lock(str(tmp_path)):
      assert f"pid {os.getpid()} " in (tmp_path / run_dir_lib.LOCK_FILE).read_text()
      with pytest.raises(errors.IncompatibleRunError, match=f"pid {os.getpid()} "):
        with run_dir_lib.Lock(str(tmp_path)):
          pass
  assert "taking over the lock of pid 999999999 on elsewhere" in caplog.text
  assert (tmp_path / run_dir_lib.LOCK_FILE).read_text() == ""  # released
  with run_dir_lib.Lock(str(tmp_path)):
    pass


# -- the class index belongs to its data ------------------------------------------------------------

def _write_idx(path, array):
  magic = {3: b"\x00\x00\x08\x03", 1: b"\x00\x00\x08\x01"}[array.ndim]
  with open(path, "wb") as f:
    f.write(magic + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes())


def _fmnist_copy(directory, order):
  images, labels = sources.load_numpy("fashion_mnist", "train")
  images, labels = images[:300][order], labels[:300][order]
  os.makedirs(directory)
  _write_idx(os.path.join(directory, "train-images-idx3-ubyte"), images[..., 0])
  _write_idx(os.path.join(directory, "train-labels-idx1-ubyte"), labels.astype(np.uint8))
  return images, labels


def test_class_index_of_another_copy_in_another_order_is_not_reused(store_dir, tmp_path):
  order = np.arange(300)
  _fmnist_copy(str(tmp_path / "a"), order)
  images_b, labels_b = _fmnist_copy(str(tmp_path / "b"), order[::-1])
  assert sources.fingerprint("fashion_mnist", str(tmp_path / "a")) != sources.fingerprint(
      "fashion_mnist", str(tmp_path / "b"))
  assert sources.fingerprint("fashion_mnist", str(tmp_path / "a")) == sources.fingerprint(
      "fashion_mnist", str(tmp_path / "a"))
  # One run directory (where the index is cached) seeing both copies: the second must not reuse the first's.
  run_dir = str(tmp_path / "run")
  loop.Distiller(small_config(store_dir, run_dir, data_dir=str(tmp_path / "a")))
  distiller = loop.Distiller(small_config(store_dir, run_dir, data_dir=str(tmp_path / "b")))
  assert len(glob.glob(os.path.join(run_dir, "class_index_train_*.npz"))) == 2
  assert not glob.glob(os.path.join(store_dir, "class_index*"))  # the distiller never writes the store
  pixels = np.round(distiller.preprocessor.invert(distiller.images).numpy() * 255).astype(np.uint8)
  for row, image in enumerate(pixels):
    matches = np.flatnonzero((images_b == image).all(axis=(1, 2, 3)))
    assert matches.size and labels_b[matches[0]] == row // 2, row  # ipc 2: rows 2c, 2c + 1 are class c


# -- divergence guards ------------------------------------------------------------------------------

def test_huge_lr_img_is_stopped_by_the_image_guard_with_a_checkpoint_to_resume(store_dir, tmp_path):
  config = small_config(store_dir, str(tmp_path / "huge"), lr_img=1e12, labels="hard", iterations=4)
  with pytest.raises(loop.DivergenceError, match=r"images' RMS .* --max_image_rms=100") as caught:
    loop.distill(config)
  path = re.search(r"^Iteration 1: .* checkpoint (\S+ckpt-0) \(iteration 0\)", str(caught.value))
  assert path and os.path.exists(path.group(1) + ".index"), str(caught.value)
  assert not os.path.exists(os.path.join(config.run_dir, "distilled"))  # nothing garbage exported
  result = loop.distill(small_config(store_dir, config.run_dir, labels="hard", iterations=4))  # resumes
  assert np.isfinite(result.images).all() and np.abs(result.images).max() < 50


def test_alpha_divergence_names_the_checkpoint_a_rerun_resumes_from(store_dir, tmp_path):
  config = small_config(store_dir, str(tmp_path / "alpha"), lr_lr=1e9, iterations=3)  # α < 0 at iteration 2
  with pytest.raises(loop.DivergenceError, match=r"^Iteration 2: the learned step size α became -.*"
                     r"checkpoint \S+ckpt-1 \(iteration 1\)"):
    loop.distill(config)


def _damage(path, keep=None, nan=False):
  data = np.load(path)
  if nan:
    data[2, 5] = np.nan
    np.save(path, data)
  else:
    with open(path, "r+b") as f:
      f.truncate(keep)


@pytest.mark.parametrize("damage", ["truncated", "nan"])
def test_damaged_expert_is_named_when_the_store_is_opened(tmp_path, damage):
  store = make_store(str(tmp_path / "store"), "fashion_mnist", num_experts=3)
  path = os.path.join(store.path, "expert_00001.npy")
  _damage(path, keep=os.path.getsize(path) // 2, nan=damage == "nan")
  with pytest.raises(errors.CorruptFileError, match=re.escape(path) + (" holds NaN/inf parameters at epoch 2"
                                                                       if damage == "nan" else ": expected")):
    loop.Distiller(small_config(store.path, str(tmp_path / "run")))


# -- resume -----------------------------------------------------------------------------------------

def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(store_dir, tmp_path, caplog):
  tf.config.experimental.enable_op_determinism()
  run_dir = str(tmp_path / "corrupt")
  loop.distill(small_config(store_dir, run_dir, iterations=3))
  latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
  assert latest.endswith("ckpt-3")
  with open(latest + ".index", "wb") as f:
    f.write(b"not an sstable")
  with caplog.at_level(logging.WARNING):
    resumed = loop.distill(small_config(store_dir, run_dir))
  assert re.search(r"Checkpoint \S+ckpt-3 cannot be read", caplog.text)
  straight = loop.distill(small_config(store_dir, str(tmp_path / "straight"), save_every=6))
  np.testing.assert_array_equal(resumed.images, straight.images)
  assert resumed.lr == straight.lr


def test_resume_with_another_ipc_is_refused_and_keeps_the_record(store_dir, tmp_path):
  run_dir = str(tmp_path / "ipc")
  old = os.umask(0o022)
  try:
    loop.distill(small_config(store_dir, run_dir, iterations=1))
  finally:
    os.umask(old)
  with pytest.raises(errors.IncompatibleRunError, match=r"--ipc = 2; this one has 1"):
    loop.distill(small_config(store_dir, run_dir, ipc=1, iterations=2))
  assert "--ipc=2\n" in open(os.path.join(run_dir, "flags.cfg")).read()
  assert json.load(open(os.path.join(run_dir, "config.json")))["ipc"] == 2
  # What is published gets the modes of the umask (022 here), not the temp files' 0600 / 0700.
  export = os.path.join(run_dir, distilled.EXPORT_DIR)
  assert stat.S_IMODE(os.stat(export).st_mode) == 0o755
  for path in (os.path.join(export, "metadata.json"), os.path.join(export, distilled.shard_name(0, 1)),
               os.path.join(run_dir, "flags.cfg"), os.path.join(run_dir, "config.json")):
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_kill_during_export_or_checkpoint_rerun_completes_and_leaves_no_temp(store_dir, tmp_path):
  run_dir = str(tmp_path / "export")
  done = loop.distill(small_config(store_dir, run_dir, iterations=2))
  # What a SIGKILL (or a full disk) inside distilled.export leaves: a partial staging directory, no
  # export; inside a checkpoint save: TF's partial ckpt-<n>_temp directory.
  partial_export = files.temp_dir(run_dir, distilled.EXPORT_DIR)
  open(os.path.join(partial_export, distilled.shard_name(0, 1)), "wb").write(b"half")
  os.rename(os.path.join(run_dir, distilled.EXPORT_DIR), os.path.join(run_dir, "moved"))
  partial_checkpoint = os.path.join(run_dir, "checkpoints", "ckpt-3_temp")
  os.makedirs(partial_checkpoint)
  open(os.path.join(partial_checkpoint, "part-00000-of-00001.index"), "wb").write(b"x")
  again = loop.distill(small_config(store_dir, run_dir, iterations=3))
  assert not glob.glob(os.path.join(run_dir, ".distilled.tmp-*")) and not os.path.exists(partial_checkpoint)
  assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-3.index"))
  np.testing.assert_array_equal(distilled.load_set(os.path.join(run_dir, distilled.EXPORT_DIR)).images,
                                again.images)
  assert np.abs(again.images - done.images).max() > 0  # the third iteration ran from the checkpoint


# -- flagfiles and metadata -------------------------------------------------------------------------

def test_flagfile_comment_after_a_value_and_self_inclusion_are_refused(tmp_path):
  good, bad = tmp_path / "good.cfg", tmp_path / "bad.cfg"
  good.write_text("# a comment on its own line\n--ipc=2\n\n--run_dir=runs/a#b\n")
  bad.write_text(f"--flagfile={good}\n--ipc=1\n--run_dir=runs/a  # my run\n")
  assert cli.flagfile_problem(str(good)) is None
  assert cli.flagfile_problem(str(bad)).startswith(f"{bad}:3: '--run_dir=runs/a  # my run' has a comment")
  tab = tmp_path / "tab.cfg"
  tab.write_text(f"--flagfile={bad}\n")
  assert cli.flagfile_problem(str(tab)).startswith(f"{bad}:3:")
  loop_file = tmp_path / "loop.cfg"
  loop_file.write_text(f"--ipc=1\n--flagfile={loop_file}\n")
  assert "includes itself" in cli.flagfile_problem(str(loop_file))


@pytest.mark.parametrize("change, pattern", [
    (lambda m: m.pop("lr"), r"key 'lr' is missing"),
    (lambda m: m.pop("image_shape"), r"key 'image_shape' is missing"),
    (lambda m: m.update(lr="fast"), r"key 'lr' should be a int or float, found 'fast'"),
    (lambda m: m.update(ipc=True), r"key 'ipc' should be a int"),
    (lambda m: m.update(surprise=1), r"unexpected key\(s\) \['surprise'\]"),
    (lambda m: m.update(image_shape=[8, 8]), r"key 'image_shape' should be \[h, w, c\]"),
])
def test_metadata_is_validated_on_load(tmp_path, change, pattern):
  from tests.test_distilled import _set  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "set")
  distilled.export(_set(), out)
  path = os.path.join(out, distilled.METADATA_FILE)
  metadata = json.load(open(path))
  change(metadata)
  json.dump(metadata, open(path, "w"))
  with pytest.raises(errors.CorruptFileError, match=re.escape(path) + ": " + pattern):
    distilled.load_set(out)


# -- what a user sees: one line, no traceback -------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  from tests.test_distilled import _set  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("exports")
  paths = {}
  for kind in ("truncated", "corrupted"):
    out = str(root / kind)
    distilled.export(_set(), out)
    shard = sorted(glob.glob(os.path.join(out, "*.tfrecord-*")))[0]
    data = bytearray(open(shard, "rb").read())
    if kind == "truncated":
      data = data[: len(data) // 2]
    else:
      data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    paths[kind] = (out, shard)
  return paths


def test_the_tools_report_bad_input_in_one_line(store_dir, tmp_path, exported):
  """Each tool, and each way a tool fails (a project error after parsing: exit 1, a usage error: 2, an
  absl flag validator, a flagfile refused before absl), once; further library errors are checked in
  process below (test_library_errors_name_the_flag_or_file), their line made by the same cli.guarded."""
  distill = [f"--store_dir={store_dir}", "--ipc=2", "--syn_steps=2", "--expert_epochs=2", "--max_start_epoch=2",
             "--iterations=1", "--labels=hard"]
  other = str(tmp_path / "other_store")
  make_store(other, "fashion_mnist", width=16)

  def run_dir(name):
    return f"--run_dir={tmp_path / name}"

  cases = {
      "missing store": (("distill", *distill, f"--store_dir={tmp_path}/nowhere", run_dir("a")), 1,
                        r"No trajectory store at .*nowhere: .*manifest.json is missing"),
      "batch_syn": (("distill", *distill, "--batch_syn=50", run_dir("e")), 2,
                    r"--batch_syn=50 exceeds the 20 synthetic images"),
      "eval_models": (("distill", *distill, "--eval_models=convnet,resnet99", run_dir("g")), 1,
                      r"--eval_models: unknown architecture 'resnet99'; choose from .*convnet"),
      "store of other settings": (("train_experts", "--dataset=fashion_mnist", f"--store_dir={other}",
                                   "--width=8", "--train_epochs=4", "--num_experts=1",
                                   "--max_train_examples=300", "--validation_size=0"), 1,
                                  r"was made for other settings \(.*model_kwargs: store has \{\"width\": 16\}"),
      "truncated shard": (("evaluate", f"--distilled_dir={exported['truncated'][0]}", "--epochs=1"), 1,
                          re.escape(exported["truncated"][1]) + " is truncated or damaged"),
      "corrupted shard": (("export", f"--source={exported['corrupted'][0]}", f"--out_dir={tmp_path}/x"), 1,
                          re.escape(exported["corrupted"][1]) + " is corrupted"),
  }
  comment = tmp_path / "comment.cfg"
  comment.write_text(f"--store_dir={store_dir}\n--run_dir=runs/a  # my run\n")
  cases["flagfile comment"] = (("distill", f"--flagfile={comment}"), 2, r"comment.cfg:2: .*own line")
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = {name: pool.submit(tool, *args) for name, (args, _, _) in cases.items()}
    results = {name: future.result() for name, future in results.items()}
  failed = []
  for name, (_, code, pattern) in cases.items():
    try:
      assert_one_fatal_line(results[name], code, pattern)
    except AssertionError as e:
      failed.append(f"{name}: {e}")
  assert not failed, "\n\n".join(failed)
  assert not os.path.exists("runs/a  # my run")


def test_library_errors_name_the_flag_or_file(store_dir, tmp_path):
  """Project errors raised in this process (a tool prints each as its one line through cli.guarded)."""
  (tmp_path / "empty_store").mkdir()
  (tmp_path / "no_data").mkdir()
  with pytest.raises(errors.TeslaError, match=r"No trajectory store at .*empty_store"):
    loop.distill(small_config(str(tmp_path / "empty_store"), str(tmp_path / "a"), iterations=1))
  with pytest.raises(errors.TeslaError, match=r"no_data"):
    loop.distill(small_config(store_dir, str(tmp_path / "b"), iterations=1, data_dir=str(tmp_path / "no_data")))
  with pytest.raises(errors.TeslaError, match=r"absent.*does not exist"):
    loop.distill(small_config(store_dir, str(tmp_path / "c"), iterations=1, data_dir=str(tmp_path / "absent")))
  with pytest.raises(errors.TeslaError, match=r"holds experts of 'fashion_mnist', not of --dataset='mnist'"):
    loop.distill(small_config(store_dir, str(tmp_path / "d"), iterations=1, dataset="mnist"))


def test_guarded_main_turns_project_errors_into_one_fatal_line(capsys):
  """cli.guarded: a TeslaError exits 1, a usage error 2, each as one FATAL line without traceback;
  any other exception is a bug and keeps its traceback (propagates)."""
  def failing(error):
    def main(argv):
      raise error
    return cli.guarded(main)

  for error, code in ((errors.TeslaError("--store_dir=/x: no store"), 1),
                      (errors.UsageError("--batch_syn=50 exceeds 20"), 2)):
    with pytest.raises(SystemExit) as exited:
      failing(error)([])
    assert exited.value.code == code
    assert capsys.readouterr().err == f"FATAL {error}\n"
  with pytest.raises(KeyError):
    failing(KeyError("bug"))([])


# -- more hostile cases (closing note of issue 13) --------------------------------------------------

@pytest.mark.parametrize("bad", ["not an image", "wrong size"])
def test_bad_image_file_is_named_in_one_line(tmp_path, bad):
  info = sources.get_info("tiny_imagenet")
  paths = []
  for k in range(3):
    path = str(tmp_path / f"{k}.png")
    shape = (32, 32, 3) if (bad == "wrong size" and k == 1) else info.image_shape
    data = b"not an image" if (bad == "not an image" and k == 1) else tf.io.encode_png(
        np.zeros(shape, np.uint8)).numpy()
    open(path, "wb").write(data)
    paths.append(path)
  with pytest.raises(tf.errors.InvalidArgumentError) as caught:
    list(sources._folder_dataset(info, paths, [0, 1, 2]).as_numpy_iterator())
  expected = {"not an image": f"{paths[1]} is not an image file",
              "wrong size": f"{paths[1]} has shape 32 32 3 expected 64 64 3"}[bad]
  assert cli._environment_message(caught.value) == expected


def test_full_disk_and_read_only_messages_name_the_file():
  disk = tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2}} /r/ckpt-1_temp/x; "
                                          "No space left on device [Op:SaveV2]")
  assert cli._environment_message(disk) == "/r/ckpt-1_temp/x; No space left on device"
  assert cli._environment_message(OSError(30, "Read-only file system", "/ro/run")) == (
      "/ro/run: Read-only file system.")
  assert cli._environment_message(ValueError("a bug")) is None


def test_bad_run_dir_and_ipc_are_usage_errors(store_dir, tmp_path):
  (tmp_path / "file").write_text("")
  for run_dir in ("", str(tmp_path / "file")):
    with pytest.raises(errors.UsageError, match="--run_dir=.*expected a directory"):
      loop.distill(small_config(store_dir, run_dir))
  with pytest.raises(errors.UsageError, match=r"--ipc=7000: class 0 has only \d+ examples"):
    loop.Distiller(small_config(store_dir, str(tmp_path / "r"), ipc=7000))


def test_corrupt_eval_history_and_run_record_are_named(tmp_path):
  from tesla_tf.distill import history  # pylint: disable=import-outside-toplevel
  (tmp_path / history.FILE).write_text("{oops")
  with pytest.raises(errors.CorruptFileError, match=re.escape(str(tmp_path / history.FILE)) + " is not readable"):
    history.read(str(tmp_path))
  (tmp_path / run_dir_lib.RECORD_FILE).write_text("[1,")
  with pytest.raises(errors.CorruptFileError, match=re.escape(str(tmp_path / run_dir_lib.RECORD_FILE))):
    run_dir_lib.check_resume(str(tmp_path), {"ipc": 1})

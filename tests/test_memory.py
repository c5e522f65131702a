"""Peak memory of the distillation loop grows with the synthetic set by at most 3 copies of it (issue 16):
the images, their momentum and one gradient; every other pass over the whole set runs in bounded batches.

TF's CPU allocator peak (`get_memory_info`; `reset_memory_stats` does reset it on CPU) is read phase by
phase in one fresh child process per row count n, and the growth per extra row is compared with the
bytes of one row. Rows are 16×16×4 float32 = 4 KiB and the sets 8 and 64 MiB: the allocator (oneDNN's
BFC-backed CPU allocator) rounds large buffers up to powers of two, which these sizes are, so a copy of
the set counts as exactly one.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import summaries
from tesla_tf.distill import synthetic

ROWS = (2048, 16384)  # n = 8 classes × IPC 256 / 2048; both above the 1,024-row chunks of the bounded passes
ROW_BYTES = 16 * 16 * 4 * 4
TOLERANCE = 0.25  # copies of the set: allocator rounding and n-sized small buffers (schedule keys, labels)

_CHILD = r"""
import dataclasses, gc, json, os, sys
import numpy as np
import tensorflow as tf
from tesla_tf import models, store as store_lib
from tesla_tf.data import distilled, preprocess, sources
from tesla_tf.distill import loop, matching
from tesla_tf.distill import run_dir as run_dir_lib
from tesla_tf.models.flat import FlatModel

n, root = int(sys.argv[1]), sys.argv[2]
tf.config.threading.set_inter_op_parallelism_threads(1)  # one op at a time: the same peak on every run
tf.config.threading.set_intra_op_parallelism_threads(1)  # (and the two children share the 2 cores)
shape, classes = (16, 16, 4), 8
sources.DATASETS["memory16"] = dataclasses.replace(
    sources.DATASETS["cifar10"], name="memory16", num_classes=classes, image_shape=shape,
    class_names=tuple(map(str, range(classes))), mean=(0.5,) * 4, std=(0.25,) * 4)
fmodel = FlatModel(models.build("convnet", classes, shape, width=8))
store = store_lib.TrajectoryStore.create_or_open(os.path.join(root, "store"), {
    "dataset": "memory16", "model": "convnet", "model_kwargs": {"width": 8},
    "preprocessing": preprocess.build("normalize", sources.get_info("memory16")).to_dict(), "epochs": 4,
    "lr_teacher": 0.01, "layout": fmodel.layout(), "num_params": fmodel.num_params, "num_classes": classes,
    "image_shape": shape})
theta = fmodel.initial_flat(0).numpy()
walk = np.cumsum(np.random.default_rng(0).normal(scale=0.01, size=(4, theta.size)), 0).astype(np.float32)
store.write(0, np.concatenate([theta[None], theta + walk]), {"seed": 0})

def current():
  return tf.config.experimental.get_memory_info("CPU:0")["current"]

def peak_of(fn):
  # (peak above the phase's start, peak above the process's base) in bytes
  tf.config.experimental.reset_memory_stats("CPU:0")
  start = current()
  fn()
  peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
  return peak - start, peak - base

def config(name, **kw):
  return loop.DistillConfig(dataset="memory16", store_dir=os.path.join(root, "store"),
                            run_dir=os.path.join(root, name), ipc=n // classes, syn_steps=2, expert_epochs=2,
                            max_start_epoch=2, batch_syn=16, pix_init="noise", dsa_strategy="none",
                            iterations=1, **kw)

out = {}
for name, kw in {"tesla": dict(mode="tesla", labels="teacher"), "exact": dict(mode="exact", labels="learned"),
                 "loop": dict(mode="tesla", labels="teacher")}.items():
  if name == "loop":  # the loop's step around a stand-in for matching that holds one gradient, no more
    # (its gradient depends on the labels, as matching's does: every read of the images is done by then)
    matching.matching_gradients = lambda fm, start, target, images, labels, lr, schedule, **_: (
        matching.MatchResult(tf.constant(1.0), images * (1e-3 + 0 * tf.reduce_sum(labels)),
                             tf.constant(0.0), None))
  gc.collect()
  base, box = current(), []
  out[name + "/init"] = peak_of(lambda: box.append(loop.Distiller(config(name, **kw))))
  d = box.pop()
  out[name + "/step"] = peak_of(d.iterate)
  if name == "tesla":
    writer = tf.summary.create_file_writer(os.path.join(root, "tensorboard"))
    with writer.as_default():
      out["grid"] = peak_of(lambda: loop._log_grid(d, 0))
    out["rms"] = peak_of(tf.function(d.synthetic.rms))  # the divergence guard's, compiled as in the step
    out["delivered"] = peak_of(lambda: box.append(d.distilled_set()))
    result = box.pop()
    out["export"] = peak_of(lambda: distilled.export(result, os.path.join(root, "export"),
                                                     preprocessor=d.preprocessor))
    del result
    manager = tf.train.CheckpointManager(d.checkpoint(), os.path.join(root, "checkpoints"), max_to_keep=1)
    out["save"] = peak_of(lambda: manager.save(checkpoint_number=1))
    out["restore"] = peak_of(lambda: run_dir_lib.restore_newest(d.checkpoint_entries(),
                                                                os.path.join(root, "checkpoints")))
  del d
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
  """{phase: (copies of the set added over the phase's start, copies above the process's base)}, each the
  growth per extra row in units of one row's bytes."""
  procs = []
  for n in ROWS:
    root = str(tmp_path_factory.mktemp(f"rows{n}"))
    procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(n), root], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}))
  records = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    records.append(json.loads(out.strip().splitlines()[-1]))
  rows = ROWS[1] - ROWS[0]
  result = {k: tuple((b - a) / (rows * ROW_BYTES) for a, b in zip(records[0][k], records[1][k]))
            for k in records[0]}
  print("copies of the synthetic set per phase (added, above base):",
        {k: tuple(round(c, 2) for c in v) for k, v in result.items()})
  return result


def test_loop_step_holds_images_momentum_and_one_gradient(copies):
  """The step around matching (labels, the SGD update, the RMS and gradient-norm metrics) adds nothing
  full-size to the one gradient matching returns."""
  assert copies["loop/step"][1] <= 3 + TOLERANCE


@pytest.mark.parametrize("phase", ["rms", "grid", "delivered", "export", "save"])
def test_whole_set_passes_run_in_bounded_batches(copies, phase):
  """The images' RMS, image grids, the delivered (teacher) labels, the export and a checkpoint add no
  copy of the set."""
  assert copies[phase][0] <= TOLERANCE


def test_restore_and_initialisation_stay_within_three_copies(copies):
  """A restore reads one variable at a time (≤ 1 copy over images + momentum); building the set (noise
  init, teacher and learned labels) holds the initial images, the variable and its momentum."""
  assert copies["restore"][0] <= 1 + TOLERANCE
  for name in ("tesla", "exact", "loop"):
    assert copies[name + "/init"][1] <= 3 + TOLERANCE, name


@pytest.mark.parametrize("mode", ["tesla", "exact"])
def test_tesla_and_exact_peak_grows_by_at_most_three_copies(copies, mode):
  """Images, momentum and one dense gradient: matching keeps each step's gradient rows (N·batch_syn rows,
  not growing with n) and sums them into the set's shape once."""
  assert copies[mode + "/step"][1] <= 3 + TOLERANCE, copies[mode + "/step"]


@pytest.mark.parametrize("rows", [1024, 7, 3000])
def test_chunked_sum_of_squares_is_the_formula(rows):
  x = tf.random.stateless_normal([3000, 4, 4, 2], seed=[0, 1])
  np.testing.assert_allclose(synthetic.sum_of_squares(x, rows), tf.reduce_sum(tf.square(x)), rtol=1e-6)
  variable = tf.Variable(x)
  np.testing.assert_allclose(tf.function(lambda: synthetic.sum_of_squares(variable, rows))(),
                             tf.reduce_sum(tf.square(x)), rtol=1e-6)
  exact = tf.cast(x, tf.float64)
  np.testing.assert_allclose(synthetic.sum_of_squares(exact, rows), np.sum(np.square(exact)), rtol=1e-13)


def test_grid_of_the_shown_rows_is_the_grid_of_the_whole_set():
  """_log_grid converts only tile_rows: the same picture as picking the tiles from the whole set."""
  pixels = np.random.default_rng(0).uniform(-0.2, 1.2, size=(7 * 3, 4, 4, 3)).astype(np.float32)
  for max_classes in (7, 4, 100):
    rows = summaries.tile_rows(len(pixels), 3, max_classes)
    classes = np.linspace(0, 6, min(7, max_classes)).round().astype(int)
    np.testing.assert_array_equal(rows, classes * 3)
    grid = summaries.class_grid(pixels[rows], columns=3)[0]
    tiles = np.clip(pixels[classes * 3], 0, 1)
    assert grid.shape == (-(-len(classes) // 3) * 4, 3 * 4, 3)
    for k, tile in enumerate(tiles):
      np.testing.assert_array_equal(grid[k // 3 * 4:(k // 3 + 1) * 4, k % 3 * 4:(k % 3 + 1) * 4], tile)

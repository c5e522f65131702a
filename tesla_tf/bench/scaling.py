"""Per-image and per-step costs at ImageNet-1K scale, measured here, for the plan in docs/scaling.md
(tools/benchmark_scaling.py; results in docs/scaling_results.json).

Network: ConvNetD4 (width 128, instance norm) on 64×64×3 with 1000 classes, P = 2,496,360, float32 — the
TESLA ImageNet-1K student. Parts (`measure`); every measurement runs in a fresh child process
(bench/process.py), RSS-watched and killed above memory_cap_gb:
  step      one outer iteration of a distillation — schedule, DSA sampling, teacher soft labels for the
            scheduled rows, `matching.matching_gradients`, SGD(momentum) on the images — for tesla and
            exact at small N over batch_syn (step_batches), at N = step_n_slope too (the per-step
            cost and constancy in N), and tesla with larger synthetic sets (rows_slope: what costs
            scale with n rather than with batch_syn).
  unrolled  the same iteration in unrolled mode at N = unrolled_steps: memory per kept step.
  expert    the expert recipe's train step (experts.TrainStep) and the teacher forward pass at
            expert_batch: s/step and the achieved FLOP rate (analytic conv + dense FLOPs).
  pipeline  the expert input pipeline (pipeline.train_pipeline: shuffle, batch, normalise, DSA) on
            in-memory 64×64×3 uint8 images: images/s.
  store     TrajectoryStore.write of one [51, P] expert, then .read of a (t, t+M) pair after evicting
            the file from the page cache (posix_fadvise DONTNEED) and again warm.
  decode    ImageNet preparation's per-image work (data/imagenet.py `encode_fn`: decode a JPEG,
            area-resize to 64×64, PNG-encode) on a synthetic 500×375 JPEG, and decoding that 64×64 PNG
            (what reading the prepared shards costs), one thread.
  summary   linear fits over the records (per-image and per-step slopes) into the json's "summary".
Each child returns one JSON record: wall and CPU (user+sys) seconds, RSS before the first call (baseline),
peak RSS of the timed iterations (VmHWM reset after the warm-up), TF's CPU allocator peak of the timed
iterations (reset after the warm-up) and its bytes in use at the baseline; the parent adds the load
average before/after and the child's wall time.

The parent imports no TensorFlow; the children do.
"""

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

from absl import logging

from tesla_tf import errors
from tesla_tf import bench
from tesla_tf import files
from tesla_tf.bench import process

PARTS = ("step", "unrolled", "expert", "pipeline", "store", "decode", "summary")
SHAPE, CLASSES = (64, 64, 3), 1000
GB = process.GB
# A record holds a measurement (is not kept for a rerun otherwise) when it has one of these.
MEASURED = ("s", "s_per_image", "reads", "forward", "images_per_s")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
  """What tools/benchmark_scaling.py runs (its flags, same names and defaults).

  Attributes:
    measure: parts to run, from PARTS.
    step_modes, step_batches, step_n: the step part's batch_syn sweep at N = step_n.
    step_n_slope: a second N (at batch_syn slope_batch), for the per-step cost; 0 = skip.
    slope_batch: batch_syn of the N- and n-slope runs and of unrolled.
    rows_slope: synthetic-set sizes n of extra tesla runs at N = step_n, batch_syn slope_batch.
    unrolled_steps: N values of the unrolled part.
    expert_batch, expert_iters: batch and timed train steps of the expert part (batch also of pipeline).
    lr_img: image learning rate of the measured outer step (so that iterations differ).
    out: the results json.  redo: re-measure records already in it (default: keep them, resume).
    iters: timed iterations per step measurement after the warm-up.
    memory_cap_gb, min_available_gb: when a child is killed (RSS cap, machine MemAvailable floor).
    width: ConvNet width.  dsa_strategy: DSA strategy, or "none".
  """
  measure: tuple = PARTS
  step_modes: tuple = ("tesla", "exact")
  step_batches: tuple = (25, 50, 100)
  step_n: int = 2
  step_n_slope: int = 4
  slope_batch: int = 50
  rows_slope: tuple = (10000, 20000)
  unrolled_steps: tuple = (2, 3, 4)
  expert_batch: int = 256
  expert_iters: int = 3
  lr_img: float = 100.0
  out: str = os.path.join(process.REPO, "docs", "scaling_results.json")
  redo: bool = False
  iters: int = 2
  memory_cap_gb: float = 20.0
  min_available_gb: float = 1.0
  width: int = 128
  dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"

  def __post_init__(self):
    for name in ("measure", "step_modes"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ("step_batches", "rows_slope", "unrolled_steps"):
      object.__setattr__(self, name, bench.int_tuple(getattr(self, name), name))
    unknown = set(self.measure) - set(PARTS)
    if unknown:
      raise errors.UsageError(f"Unknown --measure value(s) {sorted(unknown)}; expected some of {PARTS}.")


# --------------------------------------------------------------------------- children


def _start_memory():
  """(baseline VmRSS GB, TF allocator bytes in use GB) before the first call."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  current = tf.config.experimental.get_memory_info("CPU:0")["current"] / GB
  return process.rss_gb(), current


def _timed(fn, iters):
  """Warm-up call (traces), then `iters` timed calls with RSS and TF peaks reset in between."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  t0, c0 = time.perf_counter(), time.process_time()
  fn(0)
  warmup = (time.perf_counter() - t0, time.process_time() - c0)
  warm_peak = process.max_rss_gb()
  can_reset = process.reset_peak_rss()
  tf.config.experimental.reset_memory_stats("CPU:0")
  walls, cpus = [], []
  for it in range(iters):
    t0, c0 = time.perf_counter(), time.process_time()
    fn(it + 1)
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  timed_peak = process.hwm_gb() if can_reset else None
  return {"warmup_s": warmup[0], "warmup_cpu_s": warmup[1], "s_all": walls, "cpu_s_all": cpus,
          "s": statistics.median(walls), "cpu_s": statistics.median(cpus),
          "warmup_peak_rss_gb": warm_peak, "timed_peak_rss_gb": timed_peak,
          "peak_rss_gb": process.max_rss_gb(), "tf_timed_peak_gb": process.tf_peak_gb()}


def _student(config):
  from tesla_tf import models  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.flat import FlatModel  # pylint: disable=g-import-not-at-top
  return FlatModel(models.build("convnet", CLASSES, SHAPE, seed=0, width=config.width))


def _teacher_labels(fmodel, theta, images, schedule, hard):
  """Teacher soft labels softmax(f(X̃; θ)) of just the rows the schedule uses, scattered into [n, C]
  (the other rows stay zero: they take no part in this iteration)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows, _ = tf.unique(tf.reshape(schedule, [-1]))
  probs = tf.nn.softmax(fmodel.apply(theta, tf.gather(images, rows), training=False))
  return tf.scatter_nd(rows[:, None], tf.stop_gradient(probs), tf.shape(hard))


def measure_step(config, mode, steps, batch, rows=0):
  """One outer iteration of a distillation with teacher labels, with stand-in start/target/images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf import augment  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill import matching  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill import synthetic  # pylint: disable=g-import-not-at-top

  n = rows or steps * batch
  fmodel = _student(config)
  rng = np.random.default_rng(0)
  start = fmodel.initial_flat(1) + tf.constant(rng.normal(scale=0.01, size=fmodel.num_params), tf.float32)
  target = start + tf.constant(rng.normal(scale=0.01, size=fmodel.num_params), tf.float32)
  images = tf.Variable(tf.random.stateless_normal((n,) + SHAPE, seed=[0, 0]), name="images")
  images_buf = tf.Variable(tf.zeros_like(images), name="images_momentum")
  strategy = config.dsa_strategy
  hard = tf.one_hot(tf.range(n) % CLASSES, CLASSES)

  @tf.function
  def iteration(lr, seed):
    schedule = matching.make_schedule(n, steps, batch, seed)
    aug = None
    if strategy != "none":
      aug = augment.sample_steps(strategy, steps, [batch, *SHAPE], seed + 1)
    labels = _teacher_labels(fmodel, target, images, schedule, hard)
    out = matching.matching_gradients(fmodel, start, target, images.value(), labels, lr, schedule,
                                      mode=mode, augment_params=aug)
    synthetic.sgd_momentum(images, images_buf, out.images_grad, config.lr_img)
    return out.loss

  lr = tf.constant(0.01)
  baseline, tf_current = _start_memory()
  losses = []
  timing = _timed(lambda it: losses.append(float(iteration(lr, tf.constant([it, 0])))), config.iters)
  return {"kind": "step", "mode": mode, "steps": steps, "batch_syn": batch, "rows": n,
          "num_params": fmodel.num_params, "baseline_rss_gb": baseline, "tf_baseline_gb": tf_current,
          **timing, "timed_above_baseline_gb": (timing["timed_peak_rss_gb"] or timing["peak_rss_gb"]) - baseline,
          "tf_timed_above_baseline_gb": timing["tf_timed_peak_gb"] - tf_current, "losses": losses,
          "dsa_strategy": strategy, "labels": "teacher", "tf_version": tf.__version__,
          "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def analytic_flops(model):
  """Forward multiply-add FLOPs (×2) per image of the convolutions and dense layers (norms, pools,
  ReLU and bias adds left out: < 1 % here)."""
  import keras  # pylint: disable=g-import-not-at-top
  total = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      h, w, cout = layer.output.shape[1:]
      k0, k1, cin, _ = layer.kernel.shape
      total += 2 * h * w * cout * k0 * k1 * cin
    elif isinstance(layer, keras.layers.Dense):
      total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
  return int(total)


def measure_expert(config):
  """The expert recipe's train step (experts.TrainStep, plain SGD) and the no-grad teacher forward, one
  batch."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf import experts  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.flat import FlatModel  # pylint: disable=g-import-not-at-top

  batch = config.expert_batch
  expert_config = experts.ExpertConfig(dataset="imagenet64", store_dir=tempfile.gettempdir(),
                                       model="convnet_d4", model_kwargs={"width": config.width})
  model = experts.build_expert(expert_config, 0)
  step = experts.TrainStep(model, learning_rate=expert_config.lr_teacher, global_batch_size=batch)
  fmodel = FlatModel(model)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal((batch,) + SHAPE, dtype=np.float32))
  y = tf.constant(rng.integers(0, CLASSES, batch), tf.int32)
  # The teacher's labels: softmax of the logits at the expert's parameters, no augmentation.
  forward = tf.function(lambda: tf.nn.softmax(fmodel.apply(fmodel.get_flat(), x, training=False)))
  baseline, tf_current = _start_memory()
  fwd = _timed(lambda _: forward().numpy(), config.expert_iters)
  train = _timed(lambda _: step.train((x, y)).numpy(), config.expert_iters)
  flops = analytic_flops(model)
  return {"kind": "expert", "batch": batch, "num_params": fmodel.num_params, "forward_flops_per_image": flops,
          "baseline_rss_gb": baseline, "tf_baseline_gb": tf_current, "forward": fwd, "train_step": train,
          "forward_gflops_per_s_wall": flops * batch / fwd["s"] / 1e9,
          "train_gflops_per_s_wall_3x": 3 * flops * batch / train["s"] / 1e9,
          "jit_compile": False, "tf_version": tf.__version__}


def measure_store(config):
  """TrajectoryStore write of one [51, P] expert and cold/warm reads of a (t, t + M) pair."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tesla_tf import store as store_lib  # pylint: disable=g-import-not-at-top
  from tesla_tf.data import preprocess, sources  # pylint: disable=g-import-not-at-top

  fmodel, epochs = _student(config), 50
  num_params = fmodel.num_params
  trajectory = np.random.default_rng(0).standard_normal((epochs + 1, num_params), dtype=np.float32)
  info = sources.get_info("imagenet64")
  manifest = {"dataset": "imagenet64", "num_classes": CLASSES, "image_shape": list(SHAPE), "model": "convnet",
              "model_kwargs": {"width": config.width}, "num_params": num_params, "layout": fmodel.layout(),
              "preprocessing": preprocess.build("normalize", info).to_dict(), "epochs": epochs,
              "lr_teacher": 0.01}
  with tempfile.TemporaryDirectory(dir=tempfile.gettempdir()) as tmp:
    store = store_lib.TrajectoryStore.create_or_open(tmp, manifest)
    t0 = time.perf_counter()
    store.write(0, trajectory, {})
    write_s = time.perf_counter() - t0
    path = os.path.join(tmp, "expert_00000.npy")  # the store's layout (store.py)
    reads = []
    for t in (3, 17, 30):
      fd = os.open(path, os.O_RDONLY)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      os.close(fd)
      t0 = time.perf_counter()
      cold = store.read(0, epochs=[t, t + 2])
      cold_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      warm = store.read(0, epochs=[t, t + 2])
      warm_s = time.perf_counter() - t0
      assert np.array_equal(cold, warm)
      reads.append({"start_epoch": t, "cold_s": cold_s, "warm_s": warm_s})
  return {"kind": "store", "num_params": num_params, "epochs": epochs,
          "file_bytes": int(trajectory.nbytes + 128), "write_s": write_s, "reads": reads,
          "pair_bytes": 2 * num_params * 4, "dir": tempfile.gettempdir()}


def measure_decode(config):  # pylint: disable=unused-argument
  """ImageNet preparation's per-image map (decode → area resize to 64 → PNG) on one thread.

  Sets TF to one thread: call it only in a fresh process (a child) before TF has run an op.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from tesla_tf.data import imagenet  # pylint: disable=g-import-not-at-top

  # A photo-like test image: smooth colour fields plus mild noise, the most common ImageNet size.
  rng = np.random.default_rng(0)
  coarse = tf.image.resize(rng.uniform(0, 255, (1, 12, 16, 3)), [375, 500], method="bicubic")[0]
  pixels = tf.cast(tf.clip_by_value(coarse + rng.normal(0, 8, (375, 500, 3)), 0, 255), tf.uint8)
  jpeg = tf.io.encode_jpeg(pixels, quality=90)
  encode = tf.function(imagenet.encode_fn(64))
  count = 200
  run_all = lambda _: [encode(tf.constant(i, tf.int64), jpeg, tf.constant(0)) for i in range(count)]
  timing = _timed(run_all, 1)
  # What reading the prepared shards costs per image (imagenet64's loader decodes the 64×64 PNG).
  png = encode(tf.constant(0, tf.int64), jpeg, tf.constant(0))[1]
  decode_png = tf.function(lambda data: tf.io.decode_png(data, channels=3))
  png_timing = _timed(lambda _: [decode_png(png) for _ in range(count)], 1)
  return {"kind": "decode", "jpeg_bytes": int(tf.strings.length(jpeg)), "jpeg_shape": [375, 500, 3],
          "images": count, "s_per_image": timing["s"] / count, "cpu_s_per_image": timing["cpu_s"] / count,
          "png_bytes": int(tf.strings.length(png)), "png_decode_s_per_image": png_timing["s"] / count,
          "png_decode_cpu_s_per_image": png_timing["cpu_s"] / count, "threads": 1}


def measure_pipeline(config):
  """The expert input pipeline (pipeline.train_pipeline: shuffle, batch, normalise, DSA) at 64×64×3."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf.data import pipeline, preprocess, sources  # pylint: disable=g-import-not-at-top

  info = sources.get_info("imagenet64")
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2048,) + SHAPE, dtype=np.uint8)
  ds = tf.data.Dataset.from_tensor_slices((pixels, rng.integers(0, CLASSES, 2048).astype(np.int64)))
  batch = config.expert_batch
  it = iter(pipeline.train_pipeline(ds, preprocess.build("normalize", info), batch, seed=0, repeat=True,
                                    dsa_strategy=config.dsa_strategy))
  count = 20
  timing = _timed(lambda first: [next(it) for _ in range(5 if first == 0 else count)], 1)
  return {"kind": "pipeline", "batch": batch, "batches": count, "images_per_s": count * batch / timing["s"],
          "cpu_s_per_image": timing["cpu_s"] / (count * batch), "dsa_strategy": config.dsa_strategy,
          "source": "in-memory uint8 (no PNG decode)"}


MEASUREMENTS = {"step": measure_step, "expert": measure_expert, "pipeline": measure_pipeline,
                "store": measure_store, "decode": measure_decode}


# --------------------------------------------------------------------------- parent


def plan(config):
  """(key, measurement kind, its arguments) of every measurement the requested parts need, cheapest first."""
  out = []

  def step(mode, steps, batch, rows=0):
    key = {"kind": "step", "mode": mode, "steps": steps, "batch_syn": batch, "rows": rows or steps * batch}
    out.append((key, "step", {"mode": mode, "steps": steps, "batch": batch, "rows": rows}))

  if "decode" in config.measure:
    out.append(({"kind": "decode"}, "decode", {}))
  if "store" in config.measure:
    out.append(({"kind": "store"}, "store", {}))
  if "pipeline" in config.measure:
    out.append(({"kind": "pipeline", "batch": config.expert_batch}, "pipeline", {}))
  if "expert" in config.measure:
    out.append(({"kind": "expert", "batch": config.expert_batch}, "expert", {}))
  if "step" in config.measure:
    for batch in sorted(config.step_batches):
      for mode in config.step_modes:
        step(mode, config.step_n, batch)
    if config.step_n_slope:
      for mode in config.step_modes:
        step(mode, config.step_n_slope, config.slope_batch)
    for rows in sorted(config.rows_slope):
      step("tesla", config.step_n, config.slope_batch, rows)
  if "unrolled" in config.measure:
    for steps in sorted(config.unrolled_steps):
      step("unrolled", steps, config.slope_batch)
  return out


def _fit(points):
  """Least-squares line through [(x, y)]: (slope, intercept), or None with fewer than 2 distinct x."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  points = [(x, y) for x, y in points if y is not None]
  if len({x for x, _ in points}) < 2:
    return None
  slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
  return {"slope": float(slope), "intercept": float(intercept), "points": points}


def summary(config, records):
  """Per-image and per-step slopes from the step records (what docs/scaling.md scales up)."""
  steps = [r for r in records if r.get("kind") == "step" and "s" in r]
  out = {}

  def fits(records, x):
    """Linear fits of time and memory against the record field x."""
    return {name: _fit([(r[x], r[field]) for r in records]) for name, field in (
        ("cpu_s_per_iter", "cpu_s"), ("wall_s_per_iter", "s"),
        ("rss_above_baseline_gb", "timed_above_baseline_gb"),
        ("tf_peak_above_baseline_gb", "tf_timed_above_baseline_gb"))}

  for mode in ("tesla", "exact"):
    full = [r for r in steps if r["mode"] == mode and r["rows"] == r["steps"] * r["batch_syn"]]
    out[f"{mode}_vs_batch_syn"] = {"N": config.step_n,
                                   **fits([r for r in full if r["steps"] == config.step_n], "batch_syn")}
    out[f"{mode}_vs_N"] = {"batch_syn": config.slope_batch,
                           **fits([r for r in full if r["batch_syn"] == config.slope_batch], "steps")}
  rows = [r for r in steps if r["mode"] == "tesla" and r["steps"] == config.step_n
          and r["batch_syn"] == config.slope_batch]
  image_gb = SHAPE[0] * SHAPE[1] * SHAPE[2] * 4 / GB
  out["tesla_vs_rows"] = {
      "N": config.step_n, "batch_syn": config.slope_batch, "image_gb": image_gb,
      "baseline_rss_gb": _fit([(r["rows"], r["baseline_rss_gb"]) for r in rows]),
      "peak_rss_gb": _fit([(r["rows"], r["timed_peak_rss_gb"]) for r in rows]),
      "tf_peak_gb": _fit([(r["rows"], r["tf_timed_peak_gb"]) for r in rows]),
      "cpu_s_per_iter": _fit([(r["rows"], r["cpu_s"]) for r in rows])}
  for name in ("peak_rss_gb", "tf_peak_gb", "baseline_rss_gb"):
    fit = out["tesla_vs_rows"][name]
    if fit:
      fit["copies_of_the_set"] = fit["slope"] / image_gb
  unrolled = [r for r in steps if r["mode"] == "unrolled" and r["batch_syn"] == config.slope_batch]
  out["unrolled_vs_N"] = {
      "batch_syn": config.slope_batch,
      "rss_above_baseline_gb": _fit([(r["steps"], r["timed_above_baseline_gb"]) for r in unrolled]),
      "tf_peak_above_baseline_gb": _fit([(r["steps"], r["tf_timed_above_baseline_gb"]) for r in unrolled]),
      "cpu_s_per_iter": _fit([(r["steps"], r["cpu_s"]) for r in unrolled])}
  return out


def _key_of(record):
  fields = ("kind", "mode", "steps", "batch_syn", "rows", "batch")
  return {k: record[k] for k in fields if k in record}


def run(config):
  """Measures what config.measure asks for and the records in config.out lack (all with config.redo),
  one child process each, rewriting config.out after each; returns the results."""
  results = {"records": []}
  if os.path.exists(config.out):
    results = files.read_json(config.out)
  results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB}
  started = time.perf_counter()
  for key, kind, args in plan(config):
    done = next((r for r in results["records"] if _key_of(r) == key), None)
    if done and any(k in done for k in MEASURED) and not config.redo:
      logging.info("kept %s", key)
      continue
    record, notes = process.run_child(process.child_command(__name__, kind, config, **args), json.dumps(key),
                                      config.memory_cap_gb, config.min_available_gb)
    record = {**key, **(record or {}), **notes}
    logging.info("%s: %s", key, {k: record.get(k) for k in ("s", "cpu_s", "timed_above_baseline_gb",
                                                            "tf_timed_above_baseline_gb", "wall_s",
                                                            "load_before", "stopped", "error")})
    results["records"] = [r for r in results["records"] if _key_of(r) != key] + [record]
    results["summary"] = summary(config, results["records"])
    files.write_json(config.out, results, indent=1)
  results["summary"] = summary(config, results["records"])
  files.write_json(config.out, results, indent=1)
  logging.info("measuring took %.0f s; results in %s", time.perf_counter() - started, config.out)
  return results


if __name__ == "__main__":
  process.child_main(ScalingConfig, MEASUREMENTS)

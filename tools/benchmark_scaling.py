"""Per-image and per-step costs at ImageNet-1K scale, measured here, for the plan in docs/scaling.md.

  .venv/bin/python tools/benchmark_scaling.py                       # every part → docs/scaling_results.json
  .venv/bin/python tools/benchmark_scaling.py --measure=step --step_batches=25,50 --step_modes=tesla
  .venv/bin/python tools/benchmark_scaling.py --measure=summary     # recompute the fits from the json

Network: ConvNetD4 (width 128, instance norm) on 64×64×3 with 1000 classes, P = 2,496,360, float32 — the
TESLA ImageNet-1K student. Parts (--measure); every measurement runs in a fresh child process of this
script, started and RSS-watched by tools/benchmark.py's `run_child` (killed above --memory_cap_gb):
  step      one outer iteration as in distill/loop.py — schedule, DSA sampling, teacher soft labels for the
            scheduled rows, `matching.matching_gradients`, SGD(momentum) on the images — for tesla and
            exact at small N over batch_syn (--step_batches), at N = --step_n_slope too (the per-step
            cost and constancy in N), and tesla with larger synthetic sets (--rows_slope: what costs
            scale with n rather than with batch_syn).
  unrolled  the same iteration in unrolled mode at N = --unrolled_steps: memory per kept step.
  expert    the expert recipe's Keras train step (experts.build_expert) and the teacher forward pass at
            --expert_batch: s/step and the achieved FLOP rate (analytic conv + dense FLOPs).
  pipeline  the expert input pipeline (pipeline.train_pipeline: shuffle, batch, normalise, DSA) on
            in-memory 64×64×3 uint8 images: images/s.
  store     TrajectoryStore.write of one [51, P] expert, then .read of a (t, t+M) pair after evicting
            the file from the page cache (posix_fadvise DONTNEED) and again warm.
  decode    ImageNet preparation's per-image work (tools/prepare_imagenet.py: decode a JPEG, area-resize
            to 64×64, PNG-encode) on a synthetic 500×375 JPEG, and decoding that 64×64 PNG (what
            reading the prepared shards costs), one thread.
  summary   linear fits over the records (per-image and per-step slopes) into the json's "summary".
Each child prints one JSON record: wall and CPU (user+sys) seconds, RSS before the first call (baseline),
peak RSS of the timed iterations (VmHWM reset after the warm-up), TF's CPU allocator peak of the timed
iterations (reset after the warm-up) and its bytes in use at the baseline; the parent adds the load
average before/after and the child's wall time.
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = bench.REPO
GB = bench.GB
PARTS = ("step", "unrolled", "expert", "pipeline", "store", "decode", "summary")
SHAPE, CLASSES = (64, 64, 3), 1000

flags.DEFINE_list("measure", list(PARTS), f"Parts to run, from {PARTS}.")
flags.DEFINE_list("step_modes", ["tesla", "exact"], "Modes of the step part.")
flags.DEFINE_list("step_batches", ["25", "50", "100"], "batch_syn values of the step part (at N = --step_n).")
flags.DEFINE_integer("step_n", 2, "N of the batch_syn sweep.", lower_bound=1)
flags.DEFINE_integer("step_n_slope", 4, "A second N (at batch_syn --slope_batch), for the per-step cost; "
                     "0 = skip.", lower_bound=0)
flags.DEFINE_integer("slope_batch", 50, "batch_syn of the N- and n-slope runs and of unrolled.", lower_bound=1)
flags.DEFINE_list("rows_slope", ["10000", "20000"], "Synthetic-set sizes n of extra tesla runs at N = "
                  "--step_n, batch_syn --slope_batch (the sweep's own n is N·batch_syn).")
flags.DEFINE_list("unrolled_steps", ["2", "3", "4"], "N values of the unrolled part.")
flags.DEFINE_integer("expert_batch", 256, "Batch of the expert part (the expert recipe's 256).", lower_bound=1)
flags.DEFINE_integer("expert_iters", 3, "Timed train steps of the expert part.", lower_bound=1)
flags.DEFINE_float("lr_img", 100.0, "Image learning rate of the measured outer step (iterations differ).")
flags.DEFINE_string("out", os.path.join(REPO, "docs", "scaling_results.json"), "Results json.")
flags.DEFINE_bool("redo", False, "Re-measure records already in --out (default: keep them, resume).")
# child-only (tools/benchmark.py's --child_mode and --child_steps are reused for mode and N)
flags.DEFINE_enum("child_kind", None, ["step", "expert", "pipeline", "store", "decode"], "Internal: one measurement.")
flags.DEFINE_integer("child_batch", 50, "Internal: batch_syn of a step child.")
flags.DEFINE_integer("child_rows", 0, "Internal: n of a step child (0 = N·batch_syn).")
# Flags of tools/benchmark.py that mean the same here.
for _name in ("iters", "memory_cap_gb", "min_available_gb", "width", "dsa_strategy"):
  flags.declare_key_flag(_name)

FLAGS = flags.FLAGS


# --------------------------------------------------------------------------- children


def _start_memory(tf):
  """(baseline VmRSS GB, TF allocator bytes in use GB) before the first call."""
  current = tf.config.experimental.get_memory_info("CPU:0")["current"] / GB
  return bench._status_kb(os.getpid(), "VmRSS") * 1e3 / GB, current  # pylint: disable=protected-access


def _timed(fn, iters, tf):
  """Warm-up call (traces), then `iters` timed calls with RSS and TF peaks reset in between."""
  t0, c0 = time.perf_counter(), time.process_time()
  fn(0)
  warmup = (time.perf_counter() - t0, time.process_time() - c0)
  warm_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1e3 / GB
  can_reset = bench._reset_peak_rss()  # pylint: disable=protected-access
  tf.config.experimental.reset_memory_stats("CPU:0")
  walls, cpus = [], []
  for it in range(iters):
    t0, c0 = time.perf_counter(), time.process_time()
    fn(it + 1)
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  timed_peak = (bench._status_kb(os.getpid(), "VmHWM") * 1e3 / GB if can_reset  # pylint: disable=protected-access
                else None)
  return {"warmup_s": warmup[0], "warmup_cpu_s": warmup[1], "s_all": walls, "cpu_s_all": cpus,
          "s": statistics.median(walls), "cpu_s": statistics.median(cpus),
          "warmup_peak_rss_gb": warm_peak, "timed_peak_rss_gb": timed_peak,
          "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1e3 / GB,
          "tf_timed_peak_gb": bench._tf_peak_gb(tf)}  # pylint: disable=protected-access


def _student():
  from tesla_tf import models  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.flat import FlatModel  # pylint: disable=g-import-not-at-top
  return FlatModel(models.build("convnet", CLASSES, SHAPE, seed=0, width=FLAGS.width))


def _step_child():
  """One outer iteration of distill/loop.py's Distiller._step, with stand-in start/target/images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill import labels as labels_lib  # pylint: disable=g-import-not-at-top
  from tesla_tf import augment
  from tesla_tf.distill import matching  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill.synthetic import sgd_momentum as _sgd_momentum  # pylint: disable=g-import-not-at-top

  mode, steps, batch = FLAGS.child_mode, FLAGS.child_steps, FLAGS.child_batch
  n = FLAGS.child_rows or steps * batch
  fmodel = _student()
  rng = np.random.default_rng(0)
  start = fmodel.initial_flat(1) + tf.constant(rng.normal(scale=0.01, size=fmodel.num_params), tf.float32)
  target = start + tf.constant(rng.normal(scale=0.01, size=fmodel.num_params), tf.float32)
  images = tf.Variable(tf.random.stateless_normal((n,) + SHAPE, seed=[0, 0]), name="images")
  images_buf = tf.Variable(tf.zeros_like(images), name="images_momentum")
  strategy = FLAGS.dsa_strategy
  hard = tf.one_hot(tf.range(n) % CLASSES, CLASSES)

  @tf.function
  def iteration(lr, seed):
    schedule = matching.make_schedule(n, steps, batch, seed)
    aug = None
    if strategy != "none":
      aug = augment.sample_steps(strategy, steps, [batch, *SHAPE], seed + 1)
    labels = labels_lib.teacher_labels_for_schedule(fmodel, target, images, schedule, hard)
    out = matching.matching_gradients(fmodel, start, target, images.value(), labels, lr, schedule,
                                      mode=mode, augment_params=aug)
    _sgd_momentum(images, images_buf, out.images_grad, FLAGS.lr_img)
    return out.loss

  lr = tf.constant(0.01)
  baseline, tf_current = _start_memory(tf)
  losses = []
  timing = _timed(lambda it: losses.append(float(iteration(lr, tf.constant([it, 0])))), FLAGS.iters, tf)
  return {"kind": "step", "mode": mode, "steps": steps, "batch_syn": batch, "rows": n,
          "num_params": fmodel.num_params, "baseline_rss_gb": baseline, "tf_baseline_gb": tf_current,
          **timing, "timed_above_baseline_gb": (timing["timed_peak_rss_gb"] or timing["peak_rss_gb"]) - baseline,
          "tf_timed_above_baseline_gb": timing["tf_timed_peak_gb"] - tf_current, "losses": losses,
          "dsa_strategy": strategy, "labels": "teacher", "tf_version": tf.__version__,
          "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def _analytic_flops(model):
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


def _expert_child():
  """The expert recipe's train step (Keras, plain SGD) and the no-grad teacher forward, one batch."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf import experts  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill import labels as labels_lib  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.flat import FlatModel  # pylint: disable=g-import-not-at-top

  batch = FLAGS.expert_batch
  config = experts.ExpertConfig(dataset="imagenet64", store_dir=tempfile.gettempdir(), model="convnet_d4",
                                model_kwargs={"width": FLAGS.width})
  model = experts.build_expert(config, 0)
  fmodel = FlatModel(model)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal((batch,) + SHAPE, dtype=np.float32))
  y = tf.constant(rng.integers(0, CLASSES, batch), tf.int32)
  forward = tf.function(lambda: labels_lib.teacher_labels(fmodel, fmodel.get_flat(), x))
  baseline, tf_current = _start_memory(tf)
  fwd = _timed(lambda _: forward().numpy(), FLAGS.expert_iters, tf)
  train = _timed(lambda _: model.train_on_batch(x, y), FLAGS.expert_iters, tf)
  flops = _analytic_flops(model)
  return {"kind": "expert", "batch": batch, "num_params": fmodel.num_params, "forward_flops_per_image": flops,
          "baseline_rss_gb": baseline, "tf_baseline_gb": tf_current, "forward": fwd, "train_step": train,
          "forward_gflops_per_s_wall": flops * batch / fwd["s"] / 1e9,
          "train_gflops_per_s_wall_3x": 3 * flops * batch / train["s"] / 1e9,
          "jit_compile": bool(getattr(model, "jit_compile", False)), "tf_version": tf.__version__}


def _store_child():
  """TrajectoryStore write of one [51, P] expert and cold/warm reads of a (t, t + M) pair."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tesla_tf import store as store_lib  # pylint: disable=g-import-not-at-top

  num_params, epochs = _student().num_params, 50
  trajectory = np.random.default_rng(0).standard_normal((epochs + 1, num_params), dtype=np.float32)
  with tempfile.TemporaryDirectory(dir=tempfile.gettempdir()) as tmp:
    store = store_lib.TrajectoryStore.create_or_open(tmp, {"epochs": epochs, "num_params": num_params})
    t0 = time.perf_counter()
    store.write(0, trajectory, {})
    write_s = time.perf_counter() - t0
    path = os.path.join(tmp, "expert_00000.npy")
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


def _decode_child():
  """prepare_imagenet's per-image map (decode → area resize to 64 → PNG) on one thread."""
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
  encode = tf.function(imagenet._encode_fn(64))  # pylint: disable=protected-access
  count = 200
  run = lambda _: [encode(tf.constant(i, tf.int64), jpeg, tf.constant(0)) for i in range(count)]
  timing = _timed(run, 1, tf)
  # What reading the prepared shards costs per image (imagenet64's loader decodes the 64×64 PNG).
  png = encode(tf.constant(0, tf.int64), jpeg, tf.constant(0))[1]
  decode_png = tf.function(lambda data: tf.io.decode_png(data, channels=3))
  png_timing = _timed(lambda _: [decode_png(png) for _ in range(count)], 1, tf)
  return {"kind": "decode", "jpeg_bytes": int(tf.strings.length(jpeg)), "jpeg_shape": [375, 500, 3],
          "images": count, "s_per_image": timing["s"] / count, "cpu_s_per_image": timing["cpu_s"] / count,
          "png_bytes": int(tf.strings.length(png)), "png_decode_s_per_image": png_timing["s"] / count,
          "png_decode_cpu_s_per_image": png_timing["cpu_s"] / count, "threads": 1}


def _pipeline_child():
  """The expert input pipeline (pipeline.train_pipeline: shuffle, batch, normalise, DSA) at 64×64×3."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf.data import pipeline, preprocess, sources  # pylint: disable=g-import-not-at-top

  info = sources.get_info("imagenet64")
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2048,) + SHAPE, dtype=np.uint8)
  ds = tf.data.Dataset.from_tensor_slices((pixels, rng.integers(0, CLASSES, 2048).astype(np.int64)))
  batch = FLAGS.expert_batch
  it = iter(pipeline.train_pipeline(ds, preprocess.build("normalize", info), batch, seed=0, repeat=True,
                                    augment_strategy=FLAGS.dsa_strategy))
  count = 20
  timing = _timed(lambda first: [next(it) for _ in range(5 if first == 0 else count)], 1, tf)
  return {"kind": "pipeline", "batch": batch, "batches": count, "images_per_s": count * batch / timing["s"],
          "cpu_s_per_image": timing["cpu_s"] / (count * batch), "dsa_strategy": FLAGS.dsa_strategy,
          "source": "in-memory uint8 (no PNG decode)"}


# --------------------------------------------------------------------------- parent


def _run(args, label):
  return bench.run_child(args, label, script=__file__)


def _plan():
  """(key, child args) of every measurement the requested parts need, cheapest first."""
  common = [f"--iters={FLAGS.iters}", f"--width={FLAGS.width}", f"--dsa_strategy={FLAGS.dsa_strategy}",
            f"--lr_img={FLAGS.lr_img}"]
  plan = []

  def step(mode, steps, batch, rows=0):
    key = {"kind": "step", "mode": mode, "steps": steps, "batch_syn": batch, "rows": rows or steps * batch}
    plan.append((key, ["--child_kind=step", f"--child_mode={mode}", f"--child_steps={steps}",
                       f"--child_batch={batch}", f"--child_rows={rows}"] + common))

  if "decode" in FLAGS.measure:
    plan.append(({"kind": "decode"}, ["--child_kind=decode"]))
  if "store" in FLAGS.measure:
    plan.append(({"kind": "store"}, ["--child_kind=store", f"--width={FLAGS.width}"]))
  if "pipeline" in FLAGS.measure:
    plan.append(({"kind": "pipeline", "batch": FLAGS.expert_batch},
                 ["--child_kind=pipeline", f"--expert_batch={FLAGS.expert_batch}",
                  f"--dsa_strategy={FLAGS.dsa_strategy}"]))
  if "expert" in FLAGS.measure:
    plan.append(({"kind": "expert", "batch": FLAGS.expert_batch},
                 ["--child_kind=expert", f"--expert_batch={FLAGS.expert_batch}",
                  f"--expert_iters={FLAGS.expert_iters}", f"--width={FLAGS.width}"]))
  if "step" in FLAGS.measure:
    for batch in sorted(int(b) for b in FLAGS.step_batches):
      for mode in FLAGS.step_modes:
        step(mode, FLAGS.step_n, batch)
    if FLAGS.step_n_slope:
      for mode in FLAGS.step_modes:
        step(mode, FLAGS.step_n_slope, FLAGS.slope_batch)
    for rows in sorted(int(r) for r in FLAGS.rows_slope):
      step("tesla", FLAGS.step_n, FLAGS.slope_batch, rows)
  if "unrolled" in FLAGS.measure:
    for steps in sorted(int(s) for s in FLAGS.unrolled_steps):
      step("unrolled", steps, FLAGS.slope_batch)
  return plan


def _fit(points):
  """Least-squares line through [(x, y)]: (slope, intercept), or None with fewer than 2 distinct x."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  points = [(x, y) for x, y in points if y is not None]
  if len({x for x, _ in points}) < 2:
    return None
  slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
  return {"slope": float(slope), "intercept": float(intercept), "points": points}


def _summary(records):
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
    out[f"{mode}_vs_batch_syn"] = {"N": FLAGS.step_n,
                                   **fits([r for r in full if r["steps"] == FLAGS.step_n], "batch_syn")}
    out[f"{mode}_vs_N"] = {"batch_syn": FLAGS.slope_batch,
                           **fits([r for r in full if r["batch_syn"] == FLAGS.slope_batch], "steps")}
  rows = [r for r in steps if r["mode"] == "tesla" and r["steps"] == FLAGS.step_n
          and r["batch_syn"] == FLAGS.slope_batch]
  image_gb = SHAPE[0] * SHAPE[1] * SHAPE[2] * 4 / GB
  out["tesla_vs_rows"] = {
      "N": FLAGS.step_n, "batch_syn": FLAGS.slope_batch, "image_gb": image_gb,
      "baseline_rss_gb": _fit([(r["rows"], r["baseline_rss_gb"]) for r in rows]),
      "peak_rss_gb": _fit([(r["rows"], r["timed_peak_rss_gb"]) for r in rows]),
      "tf_peak_gb": _fit([(r["rows"], r["tf_timed_peak_gb"]) for r in rows]),
      "cpu_s_per_iter": _fit([(r["rows"], r["cpu_s"]) for r in rows])}
  for name in ("peak_rss_gb", "tf_peak_gb", "baseline_rss_gb"):
    fit = out["tesla_vs_rows"][name]
    if fit:
      fit["copies_of_the_set"] = fit["slope"] / image_gb
  unrolled = [r for r in steps if r["mode"] == "unrolled" and r["batch_syn"] == FLAGS.slope_batch]
  out["unrolled_vs_N"] = {
      "batch_syn": FLAGS.slope_batch,
      "rss_above_baseline_gb": _fit([(r["steps"], r["timed_above_baseline_gb"]) for r in unrolled]),
      "tf_peak_above_baseline_gb": _fit([(r["steps"], r["tf_timed_above_baseline_gb"]) for r in unrolled]),
      "cpu_s_per_iter": _fit([(r["steps"], r["cpu_s"]) for r in unrolled])}
  return out


def _key_of(record):
  fields = ("kind", "mode", "steps", "batch_syn", "rows", "batch")
  return {k: record[k] for k in fields if k in record}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  children = {"step": _step_child, "expert": _expert_child, "pipeline": _pipeline_child,
              "store": _store_child, "decode": _decode_child}
  if FLAGS.child_kind:
    print(json.dumps(children[FLAGS.child_kind]()), flush=True)
    return
  unknown = set(FLAGS.measure) - set(PARTS)
  if unknown:
    raise app.UsageError(f"Unknown --measure value(s) {sorted(unknown)}; expected some of {PARTS}.")
  results = {"records": []}
  if os.path.exists(FLAGS.out):
    with open(FLAGS.out) as f:
      results = json.load(f)
  results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB}
  started = time.perf_counter()
  for key, args in _plan():
    done = next((r for r in results["records"] if _key_of(r) == key), None)
    measured = ("s", "s_per_image", "reads", "forward", "images_per_s")
    if done and any(k in done for k in measured) and not FLAGS.redo:
      logging.info("kept %s", key)
      continue
    record, notes = _run(args, json.dumps(key))
    record = {**key, **(record or {}), **notes}
    logging.info("%s: %s", key, {k: record.get(k) for k in ("s", "cpu_s", "timed_above_baseline_gb",
                                                            "tf_timed_above_baseline_gb", "wall_s",
                                                            "load_before", "stopped", "error")})
    results["records"] = [r for r in results["records"] if _key_of(r) != key] + [record]
    results["summary"] = _summary(results["records"])
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)
  results["summary"] = _summary(results["records"])
  with open(FLAGS.out, "w") as f:
    json.dump(results, f, indent=1)
  logging.info("measuring took %.0f s; results in %s", time.perf_counter() - started, FLAGS.out)


if __name__ == "__main__":
  app.run(main)

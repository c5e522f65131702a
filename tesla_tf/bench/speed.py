"""Time and memory of the three matching-gradient modes, and how far tesla's gradient is from the exact one
(tools/benchmark.py; results in docs/benchmarks.md).

Speed/memory (part "speed"): ConvNet-3 (width 128) on 32×32×3, 10 classes, 100 N(0,1) synthetic images,
batch_syn 100, float32 (or `precision`), DSA on, start/target two random flat vectors near a PyTorch-style
init. Every (mode, N) runs in a fresh child process (bench/process.py) that builds everything, wraps
`matching.matching_gradients` in one tf.function, runs one warm-up iteration (which traces) and k timed
ones, and prints one JSON record: wall and CPU seconds per iteration, the process's peak RSS, its RSS
before the first iteration (the baseline), the peak RSS of the timed iterations only, and TensorFlow's
own allocator peak (of the iterations). The parent watches each child's RSS in /proc and kills it above
memory_cap_gb; unrolled N values whose linear projection from the smaller N exceeds the cap are skipped.

Achieved rate: after its baseline RSS and before the warm-up, each child measures the machine's own
rates in TensorFlow (`flops.machine_rates`: a 3×3 conv 128 → 128 at 16×16, batch 100, and a 4096²
matmul, in float32 and bfloat16); the record holds them beside the achieved rate, the analytic conv and
matmul FLOPs of one iteration (bench/flops.py) over its median wall time. `precision` = "bfloat16" builds
the ConvNet with bfloat16 convolutions and activations (models.build); the FLOP count is the same.

Fidelity (part "fidelity"): cosine and relative error between tesla's and exact's image gradients on
real Fashion-MNIST expert trajectories (one expert trained with tesla_tf.experts, cached in
expert_store), for several N, start epochs and seeds (a child process too).

Results: <out_dir>/benchmark_results.json, and the generated section of <out_dir>/benchmarks.md (between
the BEGIN/END GENERATED markers; the prose around it is kept) with <out_dir>/benchmark_memory.png and
<out_dir>/benchmark_rates.png (achieved GFLOP/s, every precision) (part "report").

The parent imports no TensorFlow; the children do.
"""

import dataclasses
import os
import statistics
import sys
import time
from typing import Optional

from absl import logging

from tesla_tf import errors
from tesla_tf import bench
from tesla_tf import files
from tesla_tf.bench import flops
from tesla_tf.bench import process

PARTS = ("speed", "fidelity", "report")
MODES = ("unrolled", "tesla", "exact")  # = matching.MODES (not imported: the parent stays free of TF)
PRECISIONS = ("float32", "bfloat16")  # = models.PRECISIONS (not imported either)
# The value of a key field in records written before the field existed.
KEY_DEFAULTS = {"tag": "", "precision": "float32"}
SPEED_KEY = ("part", "mode", "steps", "tag", "precision")
BEGIN, END = "<!-- BEGIN GENERATED (tools/benchmark.py) -->", "<!-- END GENERATED -->"
GB = process.GB
REPO = process.REPO


@dataclasses.dataclass(frozen=True)
class SpeedConfig:
  """What tools/benchmark.py runs (its flags, same names and defaults).

  Attributes:
    parts: from PARTS.
    modes, syn_steps: the (mode, N) grid of the speed part.
    iters: timed iterations per (mode, N) after the warm-up; from N = big_n on, big_iters instead
      (0 = report the warm-up iteration, which includes tracing).
    resume: skip (mode, N, tag) runs already measured in the results json.
    memory_cap_gb: kill a child above this RSS; skip unrolled N projected above it.
    min_available_gb: also kill a child when the machine's MemAvailable drops below this.
    batch_syn: synthetic images per step (= the whole set of the speed part).
    width: ConvNet width of the speed part.
    dsa_strategy: DSA strategy, or "none".
    jit, row_chunks: matching_gradients options of the speed part (tesla/exact).
    tag: label stored with every speed record (e.g. the variant being measured).
    precision: from PRECISIONS, how the speed part's ConvNet computes (models.build); part of the record
      key, like tag.
    yardstick_runs, yardstick_batch, yardstick_gemm: the machine's rates measured in every speed child
      (`flops.machine_rates`: timed runs, batch of the conv, n of the n×n matmul).
    fidelity_steps, fidelity_start_epochs, fidelity_seeds: the fidelity grid.
    expert_epochs: M of the fidelity part.  syn_lr: its α.  ipc: real images per class of its set.
    expert_store, expert_width, expert_train_examples: the fidelity expert (trained once, cached).
    fidelity_unrolled_check: also compare exact with unrolled at the smallest fidelity N.
    out_dir: where the json, markdown and png go.  results: the json (default in out_dir).
  """
  parts: tuple = PARTS
  modes: tuple = MODES
  syn_steps: tuple = (5, 10, 20, 40, 80)
  iters: int = 2
  big_n: int = 40
  big_iters: int = 1
  resume: bool = False
  memory_cap_gb: float = 20.0
  min_available_gb: float = 1.0
  batch_syn: int = 100
  width: int = 128
  dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
  jit: bool = False
  row_chunks: int = 1
  tag: str = ""
  precision: str = "float32"
  yardstick_runs: int = 5
  yardstick_batch: int = 100
  yardstick_gemm: int = 4096
  fidelity_steps: tuple = (10, 20, 50)
  fidelity_start_epochs: tuple = (0, 1)
  fidelity_seeds: int = 2
  expert_epochs: int = 2
  syn_lr: float = 0.01
  ipc: int = 10
  expert_store: str = "/tmp/tesla_tf_benchmark_experts"
  expert_width: int = 128
  expert_train_examples: int = 20000
  fidelity_unrolled_check: bool = True
  out_dir: str = os.path.join(REPO, "docs")
  results: Optional[str] = None

  def __post_init__(self):
    for name in ("parts", "modes"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ("syn_steps", "fidelity_steps", "fidelity_start_epochs"):
      object.__setattr__(self, name, bench.int_tuple(getattr(self, name), name))
    unknown = set(self.parts) - set(PARTS) or set(self.modes) - set(MODES)
    if unknown:
      raise errors.UsageError(f"Unknown --parts/--modes value(s) {sorted(unknown)}.")
    if self.precision not in PRECISIONS:
      raise errors.UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")

  @property
  def results_path(self):
    return self.results or os.path.join(self.out_dir, "benchmark_results.json")


# --------------------------------------------------------------------------- children


def measure_speed(config, mode, steps):
  """One (mode, N) measurement in this (fresh) process; returns the JSON record."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf import augment, models  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill import matching  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.convnet import default_depth  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.flat import FlatModel  # pylint: disable=g-import-not-at-top

  n, shape, classes = config.batch_syn, (32, 32, 3), 10
  fmodel = FlatModel(models.build("convnet", classes, shape, seed=0, width=config.width,
                                  precision=config.precision))
  row_chunks = 1 if mode == "unrolled" else config.row_chunks
  flops_per_iter = flops.iteration_flops(shape, config.width, default_depth(shape), classes,
                                         config.batch_syn, steps, mode, fused_last_step=row_chunks == 1)
  rng = np.random.default_rng(0)
  # Near a PyTorch-style init: the segment of an early expert epoch, roughly.
  start = fmodel.initial_flat(1) + tf.constant(rng.normal(scale=0.01, size=fmodel.num_params), tf.float32)
  target = start + tf.constant(rng.normal(scale=0.01, size=fmodel.num_params), tf.float32)
  images = tf.Variable(rng.normal(size=(n,) + shape).astype(np.float32))
  labels = tf.one_hot(np.arange(n) % classes, classes)
  strategy = config.dsa_strategy

  @tf.function
  def iteration(lr, seed):
    schedule = matching.make_schedule(n, steps, config.batch_syn, seed)
    aug = None
    if strategy != "none":
      aug = augment.sample_steps(strategy, steps, [config.batch_syn, *shape], seed + 1)
    out = matching.matching_gradients(fmodel, start, target, tf.convert_to_tensor(images), labels, lr,
                                      schedule, mode=mode, augment_params=aug,
                                      jit_compile=config.jit and mode != "unrolled",
                                      row_chunks=row_chunks)
    images.assign_sub(100.0 * out.images_grad)  # an outer step, so that iterations differ
    return out.loss, out.lr_grad

  lr = tf.constant(0.01)
  baseline_gb = process.rss_gb()
  t0 = time.perf_counter()
  rates = flops.machine_rates(config.yardstick_runs, config.yardstick_batch, config.yardstick_gemm)
  yardstick_s, yardstick_rss_gb = time.perf_counter() - t0, process.rss_gb()
  try:  # TF's allocator peak of the matching only, not of the yardsticks' matrices
    tf.config.experimental.reset_memory_stats("CPU:0")
  except (ValueError, RuntimeError):
    pass
  t0, c0 = time.perf_counter(), time.process_time()
  loss, _ = iteration(lr, tf.constant([0, 0]))
  float(loss)
  warmup = (time.perf_counter() - t0, time.process_time() - c0)
  warm_peak_gb = process.max_rss_gb()
  can_reset = process.reset_peak_rss()
  iters = config.big_iters if steps >= config.big_n else config.iters
  walls, cpus = [], []
  for it in range(iters):
    t0, c0 = time.perf_counter(), time.process_time()
    loss, _ = iteration(lr, tf.constant([it + 1, 0]))
    float(loss)  # the only host sync: one per outer iteration
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  if not walls:
    walls, cpus = [warmup[0]], [warmup[1]]
  peak_gb = process.max_rss_gb()
  timed_peak_gb = process.hwm_gb() if can_reset and iters else None
  s_per_iter = float(np.median(walls))
  gflops = flops_per_iter / s_per_iter / 1e9
  return {
      "part": "speed", "mode": mode, "steps": steps, "tag": config.tag, "precision": config.precision,
      "jit": config.jit, "row_chunks": config.row_chunks, "iters": iters,
      "num_params": fmodel.num_params, "s_per_iter": s_per_iter, "s_per_iter_all": walls,
      "flops_per_iter": flops_per_iter, "gflops": gflops, **rates,
      "conv_fraction": gflops / rates["conv_gflops"],
      "yardsticks": {"runs": config.yardstick_runs, "conv_batch": config.yardstick_batch,
                     "gemm_n": config.yardstick_gemm, "seconds": yardstick_s, "rss_after_gb": yardstick_rss_gb},
      "cpu_s_per_iter": float(np.median(cpus)), "cpu_s_per_iter_all": cpus,
      "warmup_s": warmup[0], "warmup_cpu_s": warmup[1],
      "baseline_rss_gb": baseline_gb, "peak_rss_gb": peak_gb, "above_baseline_gb": peak_gb - baseline_gb,
      "warmup_peak_rss_gb": warm_peak_gb, "timed_peak_rss_gb": timed_peak_gb,
      "timed_above_baseline_gb": None if timed_peak_gb is None else timed_peak_gb - baseline_gb,
      "tf_peak_gb": process.tf_peak_gb(), "loss": float(loss), "tf_version": tf.__version__,
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def _expert_trajectory(config, last_epoch):
  """[last_epoch + 1, P] flat params of a Fashion-MNIST expert, trained (once) into config.expert_store."""
  from tesla_tf import experts  # pylint: disable=g-import-not-at-top
  expert_config = experts.ExpertConfig(
      dataset="fashion_mnist", store_dir=config.expert_store, model="convnet",
      model_kwargs={"width": config.expert_width}, preprocessing="normalize", num_experts=1,
      epochs=last_epoch, lr_teacher=0.01, batch_size=256, dsa_strategy=config.dsa_strategy, seed=0,
      max_train_examples=config.expert_train_examples, verbose=2)
  started = time.perf_counter()
  store = experts.train_experts(expert_config)
  return store.read(0), store.info(0), time.perf_counter() - started


def measure_fidelity(config):
  """tesla vs exact image gradients on real expert segments; returns the JSON record."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tesla_tf import augment, models  # pylint: disable=g-import-not-at-top
  from tesla_tf.data import preprocess, sources  # pylint: disable=g-import-not-at-top
  from tesla_tf.distill import matching  # pylint: disable=g-import-not-at-top
  from tesla_tf.models.flat import FlatModel  # pylint: disable=g-import-not-at-top

  starts = list(config.fidelity_start_epochs)
  trajectory, expert_info, expert_s = _expert_trajectory(config, max(starts) + config.expert_epochs)
  info = sources.get_info("fashion_mnist")
  x_train, y_train = sources.load_numpy("fashion_mnist", "train")
  pre = preprocess.build("normalize", info)
  rng = np.random.default_rng(0)
  rows = np.concatenate([rng.choice(np.flatnonzero(y_train == c), config.ipc, replace=False)
                         for c in range(info.num_classes)])
  images = tf.constant(pre.apply(x_train[rows]), tf.float32)
  labels = tf.one_hot(y_train[rows], info.num_classes)
  n = images.shape[0]
  fmodels = {p: FlatModel(models.build("convnet", info.num_classes, info.image_shape, width=config.expert_width,
                                       precision=p)) for p in PRECISIONS}
  fmodel = fmodels["float32"]
  lr = tf.constant(config.syn_lr, tf.float32)
  strategy = config.dsa_strategy
  batch_syn = min(config.batch_syn, n)

  def grads(mode, steps, start, target, seed, precision="float32"):
    schedule = matching.make_schedule(n, steps, batch_syn, seed)
    aug = None
    if strategy != "none":
      aug = augment.sample_steps(strategy, steps, [batch_syn, *info.image_shape], seed + 1)
    return matching.matching_gradients(fmodels[precision], start, target, images, labels, lr, schedule,
                                       mode=mode, augment_params=aug)

  compiled = {}
  records = []
  smallest = min(config.fidelity_steps)
  for steps in config.fidelity_steps:
    for mode in ("tesla", "exact") + (("unrolled",) if config.fidelity_unrolled_check and steps == smallest
                                      else ()):
      compiled[mode, steps] = tf.function(lambda a, b, s, m=mode, k=steps: grads(m, k, a, b, s))
    for mode in ("tesla", "exact"):  # the same gradients with the student in bfloat16
      compiled[mode + "_bf16", steps] = tf.function(
          lambda a, b, s, m=mode, k=steps: grads(m, k, a, b, s, "bfloat16"))
    for t in starts:
      start, target = (tf.constant(trajectory[e]) for e in (t, t + config.expert_epochs))
      for seed in range(config.fidelity_seeds):
        seed_t = tf.constant([1000 * steps + seed, t])
        out = {m: compiled[m, k](start, target, seed_t) for (m, k) in compiled if k == steps}
        te, ex = out["tesla"].images_grad.numpy().ravel(), out["exact"].images_grad.numpy().ravel()
        rec = {"steps": steps, "start_epoch": t, "seed": seed, "loss": float(out["exact"].loss),
               "cos": _cos(te, ex), "rel_error": _rel_error(te, ex),
               "norm_ratio": float(np.linalg.norm(te) / np.linalg.norm(ex)),
               "lr_grad_tesla": float(out["tesla"].lr_grad), "lr_grad_exact": float(out["exact"].lr_grad)}
        if "unrolled" in out:
          un = out["unrolled"].images_grad.numpy().ravel()
          rec["exact_vs_unrolled_rel_error"] = _rel_error(ex, un)
        for mode, fp32 in (("tesla", te), ("exact", ex)):
          bf16 = out[mode + "_bf16"].images_grad.numpy().ravel()
          rec[f"bf16_cos_{mode}"], rec[f"bf16_rel_error_{mode}"] = _cos(bf16, fp32), _rel_error(bf16, fp32)
        records.append(rec)
        logging.info("fidelity %s", rec)
  return {"part": "fidelity", "records": records, "expert_info": expert_info, "expert_s": expert_s,
          "num_params": fmodel.num_params, "ipc": config.ipc, "syn_lr": config.syn_lr,
          "expert_width": config.expert_width, "expert_train_examples": config.expert_train_examples,
          "expert_epochs": config.expert_epochs, "batch_syn": batch_syn, "dsa_strategy": strategy}


def _cos(a, b):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _rel_error(a, b):
  """‖a − b‖ / ‖b‖."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


MEASUREMENTS = {"speed": measure_speed, "fidelity": measure_fidelity}


# --------------------------------------------------------------------------- parent


def _child(config, kind, label, **args):
  return process.run_child(process.child_command(__name__, kind, config, **args), label,
                           config.memory_cap_gb, config.min_available_gb)


def _projected_gb(records, steps):
  """Linear fit of peak RSS against N over the measured records, evaluated at `steps`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  points = [(r["steps"], r["peak_rss_gb"]) for r in records if "peak_rss_gb" in r]
  if len(points) < 2:
    return None
  slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
  return float(slope * steps + intercept)


def _key_value(record, field):
  return record.get(field, KEY_DEFAULTS.get(field))


def _store(config, results, record, key_fields):
  """Puts `record` in place of the record with the same key_fields and rewrites the results json."""
  results["records"] = [r for r in results["records"]
                        if any(_key_value(r, k) != _key_value(record, k) for k in key_fields)] + [record]
  files.write_json(config.results_path, results, indent=1)


def _speed_part(config, results):
  """N in the outer loop, modes inside, so that the runs compared at one N are close in time (load)."""
  done, stopped = {m: [] for m in config.modes}, {}
  for steps in sorted(config.syn_steps):
    for mode in config.modes:
      key = {"part": "speed", "mode": mode, "steps": steps, "tag": config.tag, "precision": config.precision}
      projected = _projected_gb(done[mode], steps) if mode == "unrolled" else None
      previous = next((r for r in results["records"] if all(_key_value(r, k) == v for k, v in key.items())),
                      None)
      if config.resume and previous and "s_per_iter" in previous:
        done[mode].append(previous)
        continue
      if mode in stopped:
        record = {**key, "skipped": f"larger N than a run {stopped[mode]}"}
      elif projected is not None and projected > config.memory_cap_gb:
        record = {**key, "skipped": f"projected {projected:.1f} GB > cap {config.memory_cap_gb:g} GB"}
      else:
        record, notes = _child(config, "speed", f"{mode} N={steps}", mode=mode, steps=steps)
        record = {**key, **(record or {}), **notes}
        if "s_per_iter" in record:
          done[mode].append(record)
        if "stopped" in record:
          stopped[mode] = record["stopped"]
      logging.info("%s N=%d: %s", mode, steps,
                   {k: record.get(k) for k in ("s_per_iter", "cpu_s_per_iter", "peak_rss_gb",
                                               "above_baseline_gb", "tf_peak_gb", "stopped", "skipped")})
      _store(config, results, record, SPEED_KEY)


def _fidelity_part(config, results):
  record, notes = _child(config, "fidelity", "fidelity")
  _store(config, results, {"part": "fidelity", **(record or {}), **notes}, ("part",))


def run(config):
  """Runs config.parts: measurements into the results json, then the report; returns the results."""
  os.makedirs(config.out_dir, exist_ok=True)
  results = {"records": []}
  if os.path.exists(config.results_path):
    results = files.read_json(config.results_path)
  results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
  if "speed" in config.parts:
    _speed_part(config, results)
  if "fidelity" in config.parts:
    _fidelity_part(config, results)
  if "report" in config.parts:
    write_report(config, results)
  return results


# --------------------------------------------------------------------------- report


def _fmt(value, digits=2):
  return "–" if value is None else f"{value:.{digits}f}"


def _speed_rows(records):
  by = {(r["mode"], r["steps"]): r for r in records}
  lines = ["| mode | N | s/iter (wall) | CPU s/iter | GFLOP/s | % of conv rate | peak RSS GB | above "
           "baseline GB | timed-iteration peak RSS GB (above baseline) | TF allocator peak GB | load avg (1 "
           "min) before → after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for mode in MODES:
    for steps in sorted({s for m, s in by if m == mode}):
      r = by[mode, steps]
      if "s_per_iter" not in r:
        why = r.get("skipped") or r.get("stopped") or "failed: " + " ".join(r.get("error", []))[-120:]
        lines.append(f"| {mode} | {steps} | {why} | | | | | | | | |")
        continue
      timed = (f"{_fmt(r['timed_peak_rss_gb'])} ({_fmt(r['timed_above_baseline_gb'])})"
               if r.get("timed_peak_rss_gb") is not None else "–")
      iters = ("" if r["iters"] == 2 else f" (k={r['iters']})" if r["iters"] else " (warm-up incl. trace)")
      # Records from before the FLOP count have neither: blank.
      rate = "" if "gflops" not in r else _fmt(r["gflops"], 1)
      fraction = "" if "conv_fraction" not in r else _fmt(100 * r["conv_fraction"], 0)
      lines.append(
          f"| {mode} | {steps} | {_fmt(r['s_per_iter'], 1)}{iters} | {_fmt(r['cpu_s_per_iter'], 1)} | "
          f"{rate} | {fraction} | {_fmt(r['peak_rss_gb'])} | {_fmt(r['above_baseline_gb'])} | {timed} | "
          f"{_fmt(r['tf_peak_gb'])} | {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |")
  return lines


def _targets(records):
  by = {(r["mode"], r["steps"]): r for r in records if "s_per_iter" in r}
  lines = []

  def check(name, ok, detail):
    if ok is None:
      lines.append(f"- {name}: NOT MEASURED ({detail})")
    else:
      lines.append(f"- {name}: **{'PASS' if ok else 'FAIL'}** — {detail}")

  for mode in ("tesla", "exact"):
    a, b = by.get((mode, 5)), by.get((mode, 80))
    if a and b:
      ratio = b["peak_rss_gb"] / a["peak_rss_gb"]
      above = (b["above_baseline_gb"] / a["above_baseline_gb"]) if a["above_baseline_gb"] > 0 else None
      check(f"{mode}: peak RSS at N=80 ≤ 1.25 × at N=5", ratio <= 1.25,
            f"{b['peak_rss_gb']:.2f} / {a['peak_rss_gb']:.2f} GB = {ratio:.2f}× (above baseline: "
            f"{b['above_baseline_gb']:.2f} / {a['above_baseline_gb']:.2f} GB = {_fmt(above)}×)")
    else:
      check(f"{mode}: peak RSS at N=80 ≤ 1.25 × at N=5", None, "N=5 or N=80 missing")
  u = by.get(("unrolled", 20))
  for mode in ("tesla", "exact"):
    r = by.get((mode, 20))
    if u and r:
      raw = u["peak_rss_gb"] / r["peak_rss_gb"]
      above = u["above_baseline_gb"] / r["above_baseline_gb"]
      check(f"{mode}: N=20 memory ≥ 8 × lower than unrolled (above baseline)", above >= 8,
            f"above baseline {u['above_baseline_gb']:.2f} / {r['above_baseline_gb']:.2f} GB = {above:.1f}×; "
            f"raw peak RSS {u['peak_rss_gb']:.2f} / {r['peak_rss_gb']:.2f} GB = {raw:.1f}× "
            f"({'≥' if raw >= 8 else '<'} 8 raw)")
    else:
      check(f"{mode}: N=20 memory ≥ 8 × lower than unrolled", None, "a run is missing")
  u = by.get(("unrolled", 10))
  for mode, limit in (("tesla", 1.3), ("exact", 1.35)):
    r = by.get((mode, 10))
    if u and r:
      wall, cpu = r["s_per_iter"] / u["s_per_iter"], r["cpu_s_per_iter"] / u["cpu_s_per_iter"]
      check(f"{mode}: time per iteration at N=10 ≤ {limit} × unrolled", wall <= limit,
            f"wall {r['s_per_iter']:.1f} / {u['s_per_iter']:.1f} s = {wall:.2f}×; CPU "
            f"{r['cpu_s_per_iter']:.1f} / {u['cpu_s_per_iter']:.1f} s = {cpu:.2f}× "
            f"({'≤' if cpu <= limit else '>'} {limit} in CPU time)")
    else:
      check(f"{mode}: time at N=10 ≤ {limit} × unrolled", None, "a run is missing")
  return lines


def _fidelity_rows(record):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not record or "records" not in record:
    why = (record or {}).get("stopped") or " ".join((record or {}).get("error", ["not run"]))
    return [f"Fidelity part not available: {why}"]
  recs = record["records"]
  lines = ["| N | runs (start epochs × seeds) | cos(tesla, exact) mean [min, max] | rel. error ‖tesla − exact‖/‖exact‖ "
           "mean [min, max] | ‖tesla‖/‖exact‖ mean | exact vs unrolled rel. error | cos(bfloat16, float32) "
           "tesla / exact, min |", "|---|---|---|---|---|---|---|"]
  for steps in sorted({r["steps"] for r in recs}):
    rs = [r for r in recs if r["steps"] == steps]
    cos, rel = [r["cos"] for r in rs], [r["rel_error"] for r in rs]
    unrolled = [r["exact_vs_unrolled_rel_error"] for r in rs if "exact_vs_unrolled_rel_error" in r]
    bf16 = ("–" if "bf16_cos_tesla" not in rs[0] else  # records from before the bfloat16 student: blank
            " / ".join(f"{min(r[f'bf16_cos_{m}'] for r in rs):.4f}" for m in ("tesla", "exact")))
    lines.append(f"| {steps} | {len(rs)} | {np.mean(cos):.3f} [{min(cos):.3f}, {max(cos):.3f}] | "
                 f"{np.mean(rel):.3f} [{min(rel):.3f}, {max(rel):.3f}] | "
                 f"{np.mean([r['norm_ratio'] for r in rs]):.3f} | "
                 f"{f'{max(unrolled):.1e} (max)' if unrolled else '–'} | {bf16} |")
  info = record.get("expert_info", {})
  acc = info.get("test_accuracy")
  lines += ["", f"Expert: ConvNet width {record['expert_width']} ({record['num_params']:,} params), "
            f"{record['expert_train_examples']:,} Fashion-MNIST train images, SGD lr 0.01 batch 256, DSA, "
            f"test accuracy per epoch {acc}; expert training + fidelity child wall time "
            f"{record.get('wall_s', 0) / 60:.0f} min. Synthetic set: IPC {record['ipc']} real images "
            f"(normalised), α = {record['syn_lr']}, batch_syn {record['batch_syn']}, M = "
            f"{record['expert_epochs']}, DSA {record['dsa_strategy']}."]
  return lines


def _variant(record):
  """The label of a run made with a tag or a non-default precision, "" for a default run."""
  precision = _key_value(record, "precision")
  return ", ".join(([record["tag"]] if record.get("tag") else [])
                   + ([precision] if precision != KEY_DEFAULTS["precision"] else []))


def _variant_rows(results):
  """Variant runs (a tag, e.g. --jit, or --precision=bfloat16) beside the default run at the same (mode, N)."""
  speed = [r for r in results["records"] if r.get("part") == "speed" and "s_per_iter" in r]
  base = {(r["mode"], r["steps"]): r for r in speed if not _variant(r)}
  tagged = sorted((r for r in speed if _variant(r)), key=lambda r: (_variant(r), r["mode"], r["steps"]))
  if not tagged:
    return []
  lines = ["### Variants (--tag, --precision runs) against the default run", "",
           "| variant | mode | N | CPU s/iter (default) | wall s/iter (default) | peak RSS GB (default) | "
           "above baseline GB (default) | load before → after |", "|---|---|---|---|---|---|---|---|"]
  for r in tagged:
    d = base.get((r["mode"], r["steps"]), {})
    lines.append(f"| {_variant(r)} | {r['mode']} | {r['steps']} | {_fmt(r['cpu_s_per_iter'], 1)} "
                 f"({_fmt(d.get('cpu_s_per_iter'), 1)}) | {_fmt(r['s_per_iter'], 1)} ({_fmt(d.get('s_per_iter'), 1)}) | "
                 f"{_fmt(r['peak_rss_gb'])} ({_fmt(d.get('peak_rss_gb'))}) | {_fmt(r['above_baseline_gb'])} "
                 f"({_fmt(d.get('above_baseline_gb'))}) | {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |")
  return lines + [""]


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _style_n_axis(ax, steps, legend_size):
  """N on a log2 axis ticked at the measured N, grid, legend."""
  ax.set_xscale("log", base=2)
  ax.set_xticks(steps, [str(n) for n in steps])
  ax.minorticks_off()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=legend_size)


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)


def _plot(records, path, precision):
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  all_steps = sorted({r["steps"] for r in records})
  for mode, marker, colour in zip(MODES, "o^s", ("C0", "C1", "C2")):
    rs = sorted((r for r in records if r["mode"] == mode and "s_per_iter" in r), key=lambda r: r["steps"])
    if not rs:
      continue
    steps = [r["steps"] for r in rs]
    axes[0].plot(steps, [r["peak_rss_gb"] for r in rs], marker=marker, color=colour, label=mode)
    axes[1].plot(steps, [r["above_baseline_gb"] for r in rs], marker=marker, color=colour, label=mode)
    axes[2].plot(steps, [r["cpu_s_per_iter"] for r in rs], marker=marker, color=colour, label=f"{mode} CPU")
    axes[2].plot(steps, [r["s_per_iter"] for r in rs], marker=marker, color=colour, ls=":", alpha=0.5,
                 label=f"{mode} wall")
    for r in records:
      if r["mode"] == mode and "stopped" in r:
        axes[0].scatter([r["steps"]], [r["watched_max_rss_gb"]], marker="x", color=colour)
  axes[0].set(title="peak RSS (whole process)", xlabel="N (syn_steps)", ylabel="GB")
  axes[1].set(title="peak RSS above the pre-iteration baseline", xlabel="N (syn_steps)", ylabel="GB")
  axes[2].set(title="time per outer iteration (CPU = user+sys, 2 threads)", xlabel="N (syn_steps)",
              ylabel="s", yscale="log")
  for ax in axes:
    _style_n_axis(ax, all_steps, legend_size=8)
  fig.suptitle(f"ConvNet-3 (320,010 params), 32×32×3, batch_syn 100, DSA, {precision} — TF 2.21 CPU, "
               "2 cores")
  _save(fig, path)


def _plot_rates(records, path):
  """Achieved GFLOP/s against N, a line per mode and precision, beside the median conv yardsticks."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for precision, style in zip(PRECISIONS, ("-", "--")):
    of_precision = [r for r in records if _key_value(r, "precision") == precision and r.get("gflops")]
    for mode, marker, colour in zip(MODES, "o^s", ("C0", "C1", "C2")):
      rs = sorted((r for r in of_precision if r["mode"] == mode), key=lambda r: r["steps"])
      if rs:
        ax.plot([r["steps"] for r in rs], [r["gflops"] for r in rs], marker=marker, color=colour, ls=style,
                label=f"{mode} {precision}")
  for key, label in (("conv_gflops", "float32"), ("conv_gflops_bf16", "bfloat16")):
    rates = [r[key] for r in records if r.get(key)]
    if rates:
      ax.axhline(statistics.median(rates), color="grey", ls=":" if label == "float32" else "-.",
                 label=f"3×3 conv yardstick, {label} (median)")
  steps = sorted({r["steps"] for r in records if r.get("gflops")})
  ax.set(title="achieved conv + matmul GFLOP/s per iteration", xlabel="N (syn_steps)", ylabel="GFLOP/s")
  _style_n_axis(ax, steps, legend_size=7)
  _save(fig, path)


def write_report(config, results):
  """The generated section of <out_dir>/benchmarks.md, <out_dir>/benchmark_memory.png and
  <out_dir>/benchmark_rates.png (the records of every precision that have a FLOP rate), from the
  speed records of config.tag and config.precision and the fidelity record of `results`."""
  records = [r for r in results["records"] if r.get("part") == "speed"
             and (_key_value(r, "tag"), _key_value(r, "precision")) == (config.tag, config.precision)]
  fidelity = next((r for r in results["records"] if r.get("part") == "fidelity"), None)
  png = os.path.join(config.out_dir, "benchmark_memory.png")
  if records:
    _plot(records, png, config.precision)
  rates_png = os.path.join(config.out_dir, "benchmark_rates.png")
  rated = [r for r in results["records"] if r.get("part") == "speed" and r.get("gflops")
           and _key_value(r, "tag") == config.tag]  # every precision
  if rated:
    _plot_rates(rated, rates_png)
  lines = ["", f"Generated {time.strftime('%Y-%m-%d %H:%M')} from "
           f"`{os.path.relpath(config.results_path, REPO)}`.",
           "", "### Speed and memory", ""] + _speed_rows(records) + [
           "", "### Targets", ""] + _targets(records) + [
           "", f"![memory and time vs N]({os.path.basename(png)})", ""] + (
           [f"![achieved GFLOP/s vs N]({os.path.basename(rates_png)})", ""] if rated else []) + _variant_rows(results) + [
           "",
           "### tesla vs exact image gradients on a real expert (Fashion-MNIST)", ""] + _fidelity_rows(fidelity) + [
           "", ""]
  doc = os.path.join(config.out_dir, "benchmarks.md")
  bench.write_generated(doc, BEGIN, END, "\n".join(lines), "Benchmarks")
  logging.info("wrote %s and %s", doc, png)


if __name__ == "__main__":
  process.child_main(SpeedConfig, MEASUREMENTS)

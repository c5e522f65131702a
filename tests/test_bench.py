"""Smoke tests of the benchmarks (tesla_tf/bench, tools/benchmark*.py) at tiny sizes: each runs, and what it
writes has the expected structure and finite positive numbers. Nothing here checks a timing. The analytic
FLOP count (bench/flops.py) is checked against the convolutions and matmuls TensorFlow executes.

The quality benchmark has its own tests (test_quality.py).
"""

import contextlib
import functools
import json
import math
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import augment, errors, models
from tesla_tf.bench import experts as bench_experts
from tesla_tf.bench import flops, jit, process, scaling, speed
from tesla_tf.data import service
from tesla_tf.distill import matching
from tesla_tf.models.flat import FlatModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True,
                        text=True, timeout=300, check=False)


def _positive(record, *keys):
  for key in keys:
    value = record[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def _refused_in_one_line(done, words):
  assert done.returncode == 2, done.stderr
  assert f"FATAL {words}" in done.stderr and "Traceback" not in done.stderr, done.stderr


# --------------------------------------------------------------------------- speed (tools/benchmark.py)


def test_speed_benchmark_measures_in_a_child_and_writes_the_report(tmp_path):
  config = speed.SpeedConfig(parts=("speed", "report"), modes=("tesla",), syn_steps=(2,), iters=1,
                             batch_syn=10, width=8, yardstick_runs=1, yardstick_batch=2, yardstick_gemm=64,
                             out_dir=str(tmp_path))
  results = speed.run(config)
  saved = json.loads((tmp_path / "benchmark_results.json").read_text())
  assert saved == json.loads(json.dumps(results)) and saved["machine"]["cpus"] >= 1
  [record] = saved["records"]
  assert "error" not in record and "stopped" not in record, record
  assert (record["part"], record["mode"], record["steps"], record["tag"], record["precision"],
          record["iters"]) == ("speed", "tesla", 2, "", "float32", 1)
  _positive(record, "s_per_iter", "cpu_s_per_iter", "warmup_s", "baseline_rss_gb", "peak_rss_gb",
            "timed_peak_rss_gb", "tf_peak_gb", "loss", "num_params", "wall_s", "watched_max_rss_gb",
            "flops_per_iter", "gflops", "conv_gflops", "gemm_gflops", "conv_gflops_bf16", "gemm_gflops_bf16",
            "conv_fraction")
  assert record["peak_rss_gb"] >= record["baseline_rss_gb"] and len(record["s_per_iter_all"]) == 1
  assert record["flops_per_iter"] == flops.iteration_flops((32, 32, 3), 8, 3, 10, 10, 2, "tesla")
  assert record["gflops"] == pytest.approx(record["flops_per_iter"] / record["s_per_iter"] / 1e9, rel=1e-12)
  assert record["conv_fraction"] == pytest.approx(record["gflops"] / record["conv_gflops"], rel=1e-12)
  assert record["yardsticks"]["gemm_n"] == 64 and record["yardsticks"]["seconds"] > 0
  page = (tmp_path / "benchmarks.md").read_text()
  assert page.startswith("# Benchmarks\n") and speed.BEGIN in page and speed.END in page
  [row] = [line for line in page.splitlines() if line.startswith("| tesla | 2 |")]
  assert row.count("|") == 12 and "(k=1)" in row
  assert f"| {record['gflops']:.1f} | {100 * record['conv_fraction']:.0f} |" in row
  assert (tmp_path / "benchmark_memory.png").stat().st_size > 1000


def _speed_record(mode, steps, peak_gb, tag=""):
  return {"part": "speed", "mode": mode, "steps": steps, "tag": tag, "iters": 2, "s_per_iter": 1.5,
          "cpu_s_per_iter": 2.5, "peak_rss_gb": peak_gb, "above_baseline_gb": peak_gb - 0.5,
          "timed_peak_rss_gb": peak_gb, "timed_above_baseline_gb": peak_gb - 0.5, "tf_peak_gb": 0.4,
          "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 2.0, 2.0]}


def test_speed_resumes_and_skips_unrolled_runs_projected_above_the_cap(tmp_path):
  measured = [_speed_record("unrolled", 2, 1.0), _speed_record("unrolled", 3, 10.0)]
  (tmp_path / "benchmark_results.json").write_text(json.dumps({"records": measured}))
  config = speed.SpeedConfig(parts=("speed",), modes=("unrolled",), syn_steps=(2, 3, 4), resume=True,
                             memory_cap_gb=5.0, out_dir=str(tmp_path))
  records = speed.run(config)["records"]  # no child: N = 2, 3 (float32, before --precision) are kept
  assert records[:2] == measured
  assert records[2] == {"part": "speed", "mode": "unrolled", "steps": 4, "tag": "", "precision": "float32",
                        "skipped": "projected 19.0 GB > cap 5 GB"}


def test_speed_tool_rebuilds_the_report_and_keeps_the_prose(tmp_path):
  records = [_speed_record(m, n, 1.0 + n / 10) for m in speed.MODES for n in (5, 10, 20, 80)]
  records[0].update(gflops=12.34, conv_fraction=0.256)  # unrolled N = 5; the others predate the FLOPs
  records += [_speed_record("tesla", 10, 0.8, tag="row_chunks=2"),
              {**_speed_record("exact", 5, 0.9), "precision": "bfloat16", "cpu_s_per_iter": 1.25}]
  (tmp_path / "benchmark_results.json").write_text(json.dumps({"records": records}))
  (tmp_path / "benchmarks.md").write_text(f"# Title\n\nprose\n\n{speed.BEGIN}\nold\n{speed.END}\n\nafter\n")
  done = _tool("benchmark.py", "--parts=report", f"--out_dir={tmp_path}")
  assert done.returncode == 0, done.stderr
  page = (tmp_path / "benchmarks.md").read_text()
  assert page.startswith("# Title\n\nprose\n\n") and page.endswith("\n\nafter\n") and "\nold\n" not in page
  rows = [line for line in page.splitlines() if line.startswith(("| unrolled |", "| tesla |", "| exact |"))]
  assert len(rows) == 12 and all(r.count("|") == 12 for r in rows)
  assert rows[0].startswith("| unrolled | 5 | 1.5 | 2.5 | 12.3 | 26 | 1.50 |")
  assert rows[1].startswith("| unrolled | 10 | 1.5 | 2.5 |  |  | 2.00 |")
  assert page.count("**PASS**") + page.count("**FAIL**") == 6 and "NOT MEASURED" not in page
  assert "| row_chunks=2 | tesla | 10 | 2.5 (2.5) |" in page and "| bfloat16 | exact | 5 | 1.2 (2.5) |" in page
  assert "Fidelity part not available: not run" in page
  assert (tmp_path / "benchmark_memory.png").stat().st_size > 1000
  assert (tmp_path / "benchmark_rates.png").stat().st_size > 1000 and "(benchmark_rates.png)" in page
  _refused_in_one_line(_tool("benchmark.py", "--parts=speed,bogus", f"--out_dir={tmp_path}"),
                       "Unknown --parts/--modes value(s) ['bogus'].")
  _refused_in_one_line(_tool("benchmark.py", "--syn_steps=5,x", f"--out_dir={tmp_path}"),
                       "--syn_steps: expected integers")
  _refused_in_one_line(_tool("benchmark.py", "--precision=float16", f"--out_dir={tmp_path}"),
                       "--precision must be one of float32, bfloat16, got 'float16'.")


# --------------------------------------------------------------------------- FLOPs (bench/flops.py)


def _size(shape):
  return math.prod(shape)


def _executed_flops(session, fetches, feed):
  """2 × multiply-adds of every conv and matmul op TensorFlow executes for `fetches` (after grappler and
  oneDNN's rewrites), from the op's input and output shapes in the run's step stats."""
  meta = tf.compat.v1.RunMetadata()
  session.run(fetches, feed, options=tf.compat.v1.RunOptions(
      trace_level=tf.compat.v1.RunOptions.FULL_TRACE, output_partition_graphs=True), run_metadata=meta)
  nodes = {n.name: n for graph in meta.partition_graphs for n in graph.node}
  executed = [s for dev in meta.step_stats.dev_stats for s in dev.node_stats if s.node_name in nodes]
  shapes = {(s.node_name, out.slot): [d.size for d in out.tensor_description.shape.dim]
            for s in executed for out in s.output}

  def input_shape(node, index):
    name, _, slot = node.input[index].partition(":")
    return shapes[name, int(slot or 0)]

  total = 0
  for stats in executed:  # one entry per execution: a while loop's body counts every iteration
    node = nodes[stats.node_name]
    op = node.op.removeprefix("_MklNative").removeprefix("_Mkl").removeprefix("_")
    out = shapes.get((stats.node_name, 0))
    if op.startswith("Conv2DBackpropInput"):  # (input sizes, filter, dy) -> dx
      kernel, dy = input_shape(node, 1), input_shape(node, 2)
      total += 2 * _size(dy) * _size(kernel) // kernel[3]
    elif op.startswith("Conv2DBackpropFilter"):  # (input, filter sizes, dy) -> dW [, db]
      total += 2 * _size(input_shape(node, 2)) * _size(out) // out[3]
    elif "Conv2D" in op:  # Conv2D, FusedConv2D, PadWithConv2D, ...: (input, filter, ...) -> y
      kernel = input_shape(node, 1)
      total += 2 * _size(out) * _size(kernel) // kernel[3]
    elif op in ("MatMul", "FusedMatMul"):
      a = input_shape(node, 0)
      total += 2 * _size(out) * a[0 if node.attr["transpose_a"].b else 1]
    else:
      assert not any(word in op for word in ("Conv", "MatMul", "Einsum")), f"uncounted op {node.op}"
  return total


def test_flop_count_equals_the_convolutions_and_matmuls_tensorflow_executes():
  shape = (14, 14, 3)  # 14 → 7 → 3: an odd side, floored by the second pool
  width, depth, classes, batch, steps = 8, 2, 10, 4, 2
  fmodel = FlatModel(models.build("convnet", classes, shape, seed=0, width=width, depth=depth))
  units = flops.step_flops(shape, width, depth, classes, batch)
  rng = np.random.default_rng(0)
  with tf.Graph().as_default() as graph:
    # Placeholders, not constants: grappler would fold work on constants away.
    theta, target, adjoint = (tf.compat.v1.placeholder(tf.float32, [fmodel.num_params]) for _ in range(3))
    x = tf.compat.v1.placeholder(tf.float32, (batch,) + shape)
    images = tf.compat.v1.placeholder(tf.float32, (2 * batch,) + shape)
    y, labels = tf.one_hot(np.arange(batch) % classes, classes), tf.one_hot(np.arange(2 * batch) % 2, classes)
    step = matching._Matching(fmodel, theta, target, x, y, 0.01, None, None, False, matching.AllRows())
    same = lambda structure: structure  # noqa: E731
    runs = {"sgd": (step.sgd_step(theta, x, y, None, same), units["sgd"])}
    for mode in ("tesla", "exact"):
      grads = step.double_backward(theta, x, y, None, adjoint, mode == "exact", same)
      runs["double_backward_" + mode] = (grads, units["double_backward_" + mode])
    # Whole iterations, with DSA (it adds no conv or matmul) and, for tesla, row chunks (no fused step).
    schedule = matching.make_schedule(2 * batch, steps, batch, [0, 0])
    aug = augment.sample_steps("color_crop_cutout_flip_scale_rotate", steps, [batch, *shape], [1, 0])
    for mode, rows in [(m, matching.AllRows()) for m in matching.MODES] + [("tesla", matching.RowChunks(2))]:
      problem = matching._Matching(fmodel, theta, target, images, labels, tf.constant(0.01), schedule, aug,
                                   False, rows)
      result = [t for t in matching.MODES[mode](problem) if t is not None]
      runs[f"{mode} {type(rows).__name__}"] = (result, flops.iteration_flops(
          shape, width, depth, classes, batch, steps, mode, fused_last_step=rows.fuses_last_step))
    feed = {theta: 0.1 * rng.normal(size=fmodel.num_params), target: 0.1 * rng.normal(size=fmodel.num_params),
            adjoint: rng.normal(size=fmodel.num_params), x: rng.normal(size=(batch,) + shape),
            images: rng.normal(size=(2 * batch,) + shape)}
    with tf.compat.v1.Session(graph=graph) as session:
      executed = {name: _executed_flops(session, fetches, feed) for name, (fetches, _) in runs.items()}
  assert executed == {name: count for name, (_, count) in runs.items()}


def test_fidelity_compares_tesla_with_exact_on_a_tiny_expert(tmp_path):
  config = speed.SpeedConfig(parts=("report",), fidelity_steps=(2,), fidelity_start_epochs=(0,),
                             fidelity_seeds=1, expert_epochs=1, ipc=1, batch_syn=10, dsa_strategy="none",
                             expert_store=str(tmp_path / "experts"), expert_width=8, expert_train_examples=256,
                             fidelity_unrolled_check=False, out_dir=str(tmp_path))
  record = speed.measure_fidelity(config)
  [rec] = record["records"]
  assert (rec["steps"], rec["start_epoch"], rec["seed"]) == (2, 0, 0)
  _positive(rec, "loss", "cos", "rel_error", "norm_ratio")
  assert rec["cos"] <= 1 + 1e-6 and all(math.isfinite(rec[k]) for k in ("lr_grad_tesla", "lr_grad_exact"))
  assert record["expert_info"]["shape"] == [2, record["num_params"]] and record["batch_syn"] == 10
  speed.write_report(config, {"records": [{"part": "fidelity", **record, "wall_s": 60.0}]})
  page = (tmp_path / "benchmarks.md").read_text()
  assert f"| 2 | 1 | {rec['cos']:.3f} [" in page and "Expert: ConvNet width 8" in page
  # the bfloat16 student: close to float32, not equal to it
  for mode in ("tesla", "exact"):
    assert 0.9 < rec[f"bf16_cos_{mode}"] < 1 - 1e-7 and 0 < rec[f"bf16_rel_error_{mode}"] < 0.5
  assert f"{rec['bf16_cos_tesla']:.4f} / {rec['bf16_cos_exact']:.4f} |" in page


# --------------------------------------------------------------------------- scaling (tools/benchmark_scaling.py)


def test_scaling_step_measurements_and_their_fits():
  config = scaling.ScalingConfig(width=8, iters=1, dsa_strategy="none", step_n=2, lr_img=1.0)
  records = [scaling.measure_step(config, "tesla", 2, batch) for batch in (2, 4)]
  for record, batch in zip(records, (2, 4)):
    assert (record["kind"], record["mode"], record["steps"], record["batch_syn"], record["rows"]) == (
        "step", "tesla", 2, batch, 2 * batch)
    _positive(record, "s", "cpu_s", "warmup_s", "baseline_rss_gb", "timed_peak_rss_gb", "peak_rss_gb",
              "tf_timed_peak_gb", "num_params")
    assert len(record["losses"]) == 2 and all(math.isfinite(v) and v > 0 for v in record["losses"])
  fits = scaling.summary(config, records)
  fit = fits["tesla_vs_batch_syn"]["cpu_s_per_iter"]
  assert fits["tesla_vs_batch_syn"]["N"] == 2 and [x for x, _ in fit["points"]] == [2, 4]
  assert math.isfinite(fit["slope"]) and fits["exact_vs_N"]["cpu_s_per_iter"] is None


def test_scaling_expert_pipeline_and_store_measurements():
  config = scaling.ScalingConfig(width=8, expert_batch=2, expert_iters=1)
  expert = scaling.measure_expert(config)
  assert expert["batch"] == 2 and not expert["jit_compile"]
  _positive(expert, "forward_flops_per_image", "forward_gflops_per_s_wall", "train_gflops_per_s_wall_3x",
            "baseline_rss_gb")
  _positive(expert["forward"], "s", "cpu_s")
  _positive(expert["train_step"], "s", "cpu_s")
  pipe = scaling.measure_pipeline(config)
  assert pipe["batches"] == 20
  _positive(pipe, "images_per_s", "cpu_s_per_image")
  store = scaling.measure_store(config)
  assert store["epochs"] == 50 and [r["start_epoch"] for r in store["reads"]] == [3, 17, 30]
  _positive(store, "write_s", "file_bytes", "pair_bytes")
  for read in store["reads"]:
    _positive(read, "cold_s", "warm_s")


def test_scaling_run_measures_in_a_child_and_keeps_what_it_has(tmp_path):
  config = scaling.ScalingConfig(measure=("decode", "summary"), out=str(tmp_path / "scaling.json"))
  results = scaling.run(config)
  saved = json.loads((tmp_path / "scaling.json").read_text())
  assert saved == json.loads(json.dumps(results)) and saved["machine"]["mem_total_gb"] > 0
  [record] = saved["records"]
  assert record["kind"] == "decode" and record["images"] == 200 and record["threads"] == 1, record
  _positive(record, "s_per_image", "cpu_s_per_image", "png_decode_s_per_image", "jpeg_bytes", "png_bytes",
            "wall_s")
  assert set(saved["summary"]) == {"tesla_vs_batch_syn", "tesla_vs_N", "exact_vs_batch_syn", "exact_vs_N",
                                   "tesla_vs_rows", "unrolled_vs_N"}
  assert scaling.run(config)["records"] == saved["records"]  # measured already: no second child


def test_scaling_tool_runs_one_measurement_and_refuses_bad_flags(tmp_path):
  done = _tool("benchmark_scaling.py", "--child_kind=store", "--width=8")
  assert done.returncode == 0, done.stderr
  record = json.loads(done.stdout.strip().splitlines()[-1])
  assert record["kind"] == "store" and len(record["reads"]) == 3
  _positive(record, "write_s", "num_params")
  _refused_in_one_line(_tool("benchmark_scaling.py", "--measure=step,bogus", f"--out={tmp_path / 'x.json'}"),
                       "Unknown --measure value(s) ['bogus']")
  assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- experts (tools/benchmark_experts.py)


@contextlib.contextmanager
def _in_process_service(num_workers):
  """The tf.data service in this process: the same measurements without starting TF in new processes."""
  dispatcher = service.start_dispatcher(0)
  port = dispatcher.target.rsplit(":", 1)[1]
  workers = [service.start_worker(f"localhost:{port}") for _ in range(num_workers)]
  try:
    yield f"grpc://localhost:{port}"
  finally:
    for w in workers:
      w.stop()
    dispatcher.stop()


def test_experts_benchmark_writes_every_measurement(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(bench_experts, "service_processes", _in_process_service)
  monkeypatch.setattr(bench_experts.flops, "machine_rates",
                      functools.partial(bench_experts.flops.machine_rates, 1, 2, 64))  # tiny yardsticks
  out = tmp_path / "experts.json"
  config = bench_experts.ExpertsBenchConfig(width=8, epochs=1, service_epochs=1, pipeline_batches=2,
                                            step_batches=2, max_train_examples=256, precision="bfloat16",
                                            out=str(out))
  results = bench_experts.run(config, command="benchmark_experts smoke test")
  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(results)) and saved["command"] == "benchmark_experts smoke test"
  assert saved["num_train"] == 256 and saved["precision"] == "bfloat16"
  _positive(saved["machine_rates_gflops"], "conv_gflops", "gemm_gflops", "conv_gflops_bf16", "gemm_gflops_bf16")
  _positive(saved, "pipeline_local_batches_per_s", "train_step_only_steps_per_s",
            "pipeline_service_batches_per_s")
  for key in ("expert_local", "expert_service"):
    assert saved[key]["steps"] == 1 and saved[key]["trajectory_shape"][0] == 2
    _positive(saved[key], "wall_time_s", "steps_per_s")
    assert len(saved[key]["test_accuracy"]) == 1 and 0 < saved[key]["test_accuracy"][0] <= 1
  printed = capsys.readouterr().out
  assert all(f"{key}: " in printed for key in saved if key.startswith(("pipeline_", "expert_", "train_")))


def test_service_processes_serve_from_the_checkout():
  with bench_experts.service_processes(1) as address:
    port = int(address.rsplit(":", 1)[1])
    deadline = time.time() + 120
    while True:
      with socket.socket() as s:
        if s.connect_ex(("localhost", port)) == 0:
          break
      assert time.time() < deadline, "the dispatcher process never listened"
      time.sleep(0.2)


# --------------------------------------------------------------------------- jit (tools/benchmark_jit.py)


def test_jit_benchmark_tool_runs(tmp_path):
  out = tmp_path / "jit.json"
  done = _tool("benchmark_jit.py", "--width=8", "--expert_epochs=0", "--eval_sizes=4", "--eval_epochs=1",
               "--precision=bfloat16", f"--out={out}")
  assert done.returncode == 0, done.stderr
  results = json.loads(out.read_text())
  assert results["precision"] == "bfloat16"
  assert set(results["evaluation"]) == {"n=4 jit_compile=False", "n=4 jit_compile=True"}
  assert all(s > 0 for s in results["evaluation"].values()) and results["expert"] == {}
  assert "evaluation n=4 jit_compile=True: " in done.stdout


def test_jit_expert_epochs_are_timed(tmp_path):
  config = jit.JitConfig(width=8, expert_epochs=2, max_train_examples=256)
  seconds = jit.expert_seconds(config, False, str(tmp_path))
  assert len(seconds) == 2 and all(math.isfinite(s) and s > 0 for s in seconds)


# --------------------------------------------------------------------------- shared


def test_configs_keep_the_flag_defaults():
  assert speed.MODES == tuple(matching.MODES)  # the report orders its rows by speed.MODES
  assert speed.SpeedConfig().syn_steps == (5, 10, 20, 40, 80)
  assert speed.SpeedConfig().results_path == os.path.join(ROOT, "docs", "benchmark_results.json")
  assert scaling.ScalingConfig().out == os.path.join(ROOT, "docs", "scaling_results.json")
  assert process.REPO == ROOT
  assert speed.SpeedConfig(syn_steps=["10", "5"]).syn_steps == (10, 5)
  with pytest.raises(ValueError, match="--eval_sizes"):
    jit.JitConfig(eval_sizes=("a",))
  assert jit.JitConfig(jit_compile=[True]).jit_compile == (True,)
  for bad in (("false",), (0,), ()):  # a string is truthy: it must not pass as True
    with pytest.raises(errors.UsageError, match="--jit_compile"):
      jit.JitConfig(jit_compile=bad)


def test_child_main_prints_one_record(capsys):
  config = scaling.ScalingConfig(width=8)
  cmd = process.child_command("tesla_tf.bench.scaling", "echo", config, value=3)
  assert cmd[:3] == [sys.executable, "-m", "tesla_tf.bench.scaling"]
  process.child_main(scaling.ScalingConfig, {"echo": lambda c, value: {"width": c.width, "value": value,
                                                                        "batches": c.step_batches}}, cmd[2:])
  assert json.loads(capsys.readouterr().out) == {"width": 8, "value": 3, "batches": [25, 50, 100]}

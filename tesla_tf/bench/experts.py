"""Expert training on Fashion-MNIST: accuracy, input pipeline vs train step, tf.data service
(tools/benchmark_experts.py; results in docs/experts_benchmark.md).

Measures, on the train set with the expert recipe (batch 256, DSA, SGD lr 0.01):
  1. pipeline batches/s alone (local, and through a tf.data service dispatcher + worker processes);
  2. the model's train step alone (one cached batch repeated: no input cost) in steps/s;
  3. an expert trained for `epochs` epochs with `experts.train_expert` (local input): test accuracy per
     epoch and steps/s of the whole fit (input + step + per-epoch test evaluation);
  4. the same expert recipe for `service_epochs` epochs reading through the tf.data service.
The machine's own conv and GEMM rates (bench/flops.machine_rates) are measured first, in the same process.
Each result is printed as `key: value` when measured; all of them are written as json to `out`.
"""

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import keras
import tensorflow as tf

from tesla_tf import experts as experts_lib
from tesla_tf import files
from tesla_tf.bench import flops
from tesla_tf.bench import process
from tesla_tf.data import pipeline


@dataclasses.dataclass(frozen=True)
class ExpertsBenchConfig:
  """What tools/benchmark_experts.py runs (its flags, same names and defaults).

  Attributes:
    width: ConvNet width.
    epochs: epochs of the local expert (the accuracy measurement).
    service_epochs: epochs of the expert reading through the tf.data service (0 = skip).
    pipeline_batches: batches timed for the pipeline-only measurements.
    step_batches: steps timed for the train-step-only measurement.
    service_workers: tf.data service worker processes.
    max_train_examples: subset of the train set (None = all of it).
    precision: how the expert's layers compute (experts.ExpertConfig.precision: float32 or bfloat16).
    data_dir: Fashion-MNIST IDX folder (None = the Debian location).
    out: json file for the results (None = print only).
  """
  width: int = 128
  epochs: int = 5
  service_epochs: int = 1
  pipeline_batches: int = 100
  step_batches: int = 30
  service_workers: int = 1
  max_train_examples: Optional[int] = None
  precision: str = "float32"
  data_dir: Optional[str] = None
  out: Optional[str] = None


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _server_command(**server_config):
  """A process running one tf.data service server (as tools/data_service.py does) from the checkout."""
  code = ("from tesla_tf.data import service; "
          f"service.serve(service.ServerConfig(**{server_config!r}))")
  return [sys.executable, "-c", code]


@contextlib.contextmanager
def service_processes(num_workers):
  """A dispatcher and workers, one process each; yields the grpc address."""
  port = _free_port()
  procs = [subprocess.Popen(_server_command(role="dispatcher", port=port), cwd=process.REPO,
                            stderr=subprocess.DEVNULL)]
  try:
    for _ in range(num_workers):
      procs.append(subprocess.Popen(_server_command(role="worker", dispatcher_address=f"localhost:{port}"),
                                    cwd=process.REPO, stderr=subprocess.DEVNULL))
    yield f"grpc://localhost:{port}"
  finally:
    for p in procs:
      p.terminate()
    for p in procs:
      p.wait(timeout=30)


def pipeline_rate(data, config, data_service, batches):
  """Batches/s of the training pipeline alone (after 5 warm-up batches)."""
  ds = pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=0, repeat=True,
                               dsa_strategy=config.dsa_strategy, data_service=data_service)
  it = iter(ds)
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches / (time.perf_counter() - start)


def step_rate(data, config, steps):
  """Train steps/s of the expert recipe's compiled step (experts.TrainStep) on one cached batch (no input
  cost)."""
  step = experts_lib.TrainStep(experts_lib.build_expert(config, 0), learning_rate=config.lr_teacher,
                               global_batch_size=config.batch_size)
  batch = next(iter(pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=0,
                                            dsa_strategy=config.dsa_strategy)))
  for _ in range(5):
    step.train(batch)
  start = time.perf_counter()
  for _ in range(steps):
    stats = step.train(batch)
  stats.numpy()
  return steps / (time.perf_counter() - start)


def expert_run(data, config, epochs, data_service=None):
  """Trains one expert; returns test accuracy per epoch and steps/s of the fit."""
  config = dataclasses.replace(config, epochs=epochs, data_service=data_service)
  _, trajectory, info = experts_lib.train_expert(config, 0, data)
  steps = epochs * (data.num_train // config.batch_size)
  return {"test_accuracy": info["test_accuracy"], "train_loss": info["train_loss"],
          "wall_time_s": info["wall_time_s"], "steps": steps,
          "steps_per_s": round(steps / info["wall_time_s"], 3), "trajectory_shape": list(trajectory.shape)}


def run(config, command=None):
  """Runs the four measurements, printing each; writes config.out; returns the results.

  Args:
    config: ExpertsBenchConfig.
    command: the command line recorded in the results (default: this process's).
  """
  results = {"command": command or " ".join(sys.argv), "tensorflow": tf.__version__,
             "keras": keras.__version__, "cpus": os.cpu_count()}
  with tempfile.TemporaryDirectory() as store_dir:
    expert_config = experts_lib.ExpertConfig(
        dataset="fashion_mnist", store_dir=store_dir, data_dir=config.data_dir,
        model_kwargs={"width": config.width}, epochs=config.epochs,
        max_train_examples=config.max_train_examples, precision=config.precision, verbose=2)
    _, data = experts_lib.open_store(expert_config)
    results["num_train"] = data.num_train

    def report(key, value):
      results[key] = value
      print(f"{key}: {value}", flush=True)

    report("precision", config.precision)
    report("machine_rates_gflops", flops.machine_rates())
    report("pipeline_local_batches_per_s", round(pipeline_rate(data, expert_config, None,
                                                                config.pipeline_batches), 2))
    report("train_step_only_steps_per_s", round(step_rate(data, expert_config, config.step_batches), 3))
    with service_processes(config.service_workers) as address:
      report("pipeline_service_batches_per_s", round(pipeline_rate(data, expert_config, address,
                                                                  config.pipeline_batches), 2))
      if config.service_epochs:
        report("expert_service", expert_run(data, expert_config, config.service_epochs, address))
    report("expert_local", expert_run(data, expert_config, config.epochs))
  if config.out:
    files.write_json(config.out, results, indent=1)
  return results

"""Benchmarks expert training on Fashion-MNIST: accuracy, input pipeline vs train step, tf.data service.

  python tools/benchmark_experts.py --epochs=5 --width=128 --out=/tmp/experts_benchmark.json

Measures, on the full train set with the expert recipe (batch 256, DSA, SGD lr 0.01):
  1. pipeline batches/s alone (local, and through a tf.data service dispatcher + worker processes);
  2. the model's train step alone (one cached batch repeated: no input cost) in steps/s;
  3. an expert trained for --epochs epochs with `experts.train_expert` (local input): test accuracy per
     epoch and steps/s of the whole fit (input + step + per-epoch test evaluation);
  4. the same expert recipe for --service_epochs epochs reading through the tf.data service.
Results are printed and written as json to --out.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import keras
import tensorflow as tf

from tesla_tf import experts
from tesla_tf.data import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position

flags.DEFINE_integer("width", 128, "ConvNet width.", lower_bound=1)
flags.DEFINE_integer("epochs", 5, "Epochs of the local expert (accuracy measurement).", lower_bound=1)
flags.DEFINE_integer("service_epochs", 1, "Epochs of the expert reading through the tf.data service "
                     "(0 = skip).", lower_bound=0)
flags.DEFINE_integer("pipeline_batches", 100, "Batches timed for the pipeline-only measurement.",
                     lower_bound=1)
flags.DEFINE_integer("step_batches", 30, "Steps timed for the train-step-only measurement.", lower_bound=1)
flags.DEFINE_integer("service_workers", 1, "tf.data service worker processes.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", None, "Subset of the train set (default: all 60,000).")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the Debian location).")
flags.DEFINE_string("out", None, "json file for the results.")
FLAGS = flags.FLAGS


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _service(num_workers):
  """A dispatcher and workers as tools/data_service.py processes; yields the grpc address."""
  tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_service.py")
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, tool, "--role=dispatcher", f"--port={port}"],
                            stderr=subprocess.DEVNULL)]
  try:
    for _ in range(num_workers):
      procs.append(subprocess.Popen([sys.executable, tool, "--role=worker",
                                     f"--dispatcher_address=localhost:{port}"], stderr=subprocess.DEVNULL))
    yield f"grpc://localhost:{port}"
  finally:
    for p in procs:
      p.terminate()
    for p in procs:
      p.wait(timeout=30)


def _pipeline_rate(data, config, data_service, batches):
  """Batches/s of the training pipeline alone (after 5 warm-up batches)."""
  ds = pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=0, repeat=True,
                               augment_strategy=config.augment_strategy, data_service=data_service)
  it = iter(ds)
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches / (time.perf_counter() - start)


def _step_rate(data, config, steps):
  """Train steps/s of the compiled Keras step on one cached batch (no input cost)."""
  model = experts.build_expert(config, 0)
  batch = next(iter(pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=0,
                                            augment_strategy=config.augment_strategy)))
  ds = tf.data.Dataset.from_tensors(batch).repeat()
  model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
  start = time.perf_counter()
  model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
  return steps / (time.perf_counter() - start)


def _expert(data, config, epochs, data_service=None):
  """Trains one expert; returns test accuracy per epoch and steps/s of the fit."""
  config = experts.ExpertConfig(**{**config.__dict__, "epochs": epochs, "data_service": data_service})
  _, trajectory, info = experts.train_expert(config, 0, data)
  steps = epochs * (data.num_train // config.batch_size)
  return {"test_accuracy": info["test_accuracy"], "train_loss": info["train_loss"],
          "wall_time_s": info["wall_time_s"], "steps": steps,
          "steps_per_s": round(steps / info["wall_time_s"], 3), "trajectory_shape": list(trajectory.shape)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  results = {"command": " ".join(sys.argv), "tensorflow": tf.__version__, "keras": keras.__version__,
             "cpus": os.cpu_count()}
  with tempfile.TemporaryDirectory() as store_dir:
    config = experts.ExpertConfig(dataset="fashion_mnist", store_dir=store_dir, data_dir=FLAGS.data_dir,
                                  model_kwargs={"width": FLAGS.width}, epochs=FLAGS.epochs,
                                  max_train_examples=FLAGS.max_train_examples, verbose=2)
    _, data = experts.open_store(config)
    results["num_train"] = data.num_train

    def report(key, value):
      results[key] = value
      print(f"{key}: {value}", flush=True)

    report("pipeline_local_batches_per_s", round(_pipeline_rate(data, config, None,
                                                                 FLAGS.pipeline_batches), 2))
    report("train_step_only_steps_per_s", round(_step_rate(data, config, FLAGS.step_batches), 3))
    with _service(FLAGS.service_workers) as address:
      report("pipeline_service_batches_per_s", round(_pipeline_rate(data, config, address,
                                                                   FLAGS.pipeline_batches), 2))
      if FLAGS.service_epochs:
        report("expert_service", _expert(data, config, FLAGS.service_epochs, address))
    report("expert_local", _expert(data, config, FLAGS.epochs))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)

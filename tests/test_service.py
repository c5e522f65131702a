"""Tests for tesla_tf.data.service and tools/data_service.py: in-process and multi-process (127.0.0.1)."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf.data import pipeline
from tesla_tf.data import preprocess
from tesla_tf.data import service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_port(port, procs, timeout=40.0):
  """Waits until 127.0.0.1:port accepts connections; fails early if a process died."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    for p in procs:
      if p.poll() is not None:
        raise AssertionError(f"server {p.args[2:]} exited early with code {p.returncode}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.2)
  raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def test_in_process(tmp_path):
  dispatcher = service.start_dispatcher(0, work_dir=str(tmp_path / "journal"))
  port = dispatcher.target.rsplit(":", 1)[1]
  address = f"grpc://127.0.0.1:{port}"
  workers = [service.start_worker(f"127.0.0.1:{port}", worker_address="127.0.0.1:%port%")
             for _ in range(2)]
  try:
    ds = service.distribute(tf.data.Dataset.range(20), address, job_name="in_process")
    assert sorted(int(x) for x in ds) == list(range(20))  # distributed_epoch: each once
    ds = service.distribute(tf.data.Dataset.range(5), address, processing_mode="parallel_epochs")
    assert sorted(int(x) for x in ds) == sorted(list(range(5)) * 2)  # one epoch per worker

    images = np.arange(24 * 4 * 4 * 1, dtype=np.uint8).reshape(24, 4, 4, 1)
    raw = tf.data.Dataset.from_tensor_slices((images, np.arange(24)))
    norm = preprocess.Normalize((0.5,), (0.5,))
    ds = pipeline.train_pipeline(raw, norm, 4, seed=0, dsa_strategy="none", data_service=address,
                                 job_name="pipeline")
    labels = [y for _, batch in ds for y in batch.numpy().tolist()]
    # Each worker batches its share of the epoch and drops its own partial batch.
    assert len(set(labels)) == len(labels) >= 24 - 2 * 3 and set(labels) <= set(range(24))
    arrays = (images, np.arange(24))
    served = pipeline.train_pipeline(arrays, norm, 4, seed=0, data_service=address, repeat=True,
                                     job_name="arrays")
    local = pipeline.train_pipeline(arrays, norm, 4, seed=0, repeat=True)
    # In-memory arrays: the workers share out batch indices: two workers send local batches, none twice
    # (in the order they come: a worker may run a few batches ahead).
    served_batches = [b.numpy().tolist() for _, b in served.take(12)]
    local_batches = [b.numpy().tolist() for _, b in local.take(40)]
    assert all(b in local_batches for b in served_batches)
    assert len({tuple(b) for b in served_batches}) == 12
    assert sorted(y for _, b in local.take(6) for y in b.numpy().tolist()) == list(range(24))
    with pytest.raises(ValueError, match="repeat=True only"):
      pipeline.train_pipeline(arrays, norm, 4, seed=0, data_service=address)
    ds = pipeline.train_pipeline(raw, norm, 4, seed=0, data_service=address, repeat=True, job_name="rep")
    assert all(x.shape == (4, 4, 4, 1) for x, _ in ds.take(15))  # more than one epoch, full batches
    assert os.listdir(tmp_path / "journal")  # fault-tolerant journal written
  finally:
    for w in workers:
      w.stop()
    dispatcher.stop()
  with pytest.raises(ValueError, match="processing_mode"):
    service.distribute(tf.data.Dataset.range(2), address, processing_mode="epochs")
  with pytest.raises(ValueError, match="dispatcher_address"):
    service.start_worker("")


def test_multi_process(tmp_path):
  port = _free_port()
  tool = [sys.executable, os.path.join(REPO, "tools", "data_service.py")]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  procs = []

  def launch(*args):
    # Logs go to files: a full pipe would block the server.
    with open(tmp_path / f"server{len(procs)}.log", "w") as log:
      procs.append(subprocess.Popen(tool + list(args), cwd=str(tmp_path), env=env,
                                    stdout=log, stderr=subprocess.STDOUT))

  try:
    launch("--role=dispatcher", f"--port={port}", f"--work_dir={tmp_path / 'journal'}")
    _wait_for_port(port, procs)
    for _ in range(2):
      launch("--role=worker", f"--dispatcher_address=127.0.0.1:{port}",
             "--worker_address=127.0.0.1:%port%")
    ds = service.distribute(tf.data.Dataset.range(50).map(lambda x: x * 2), f"grpc://127.0.0.1:{port}",
                            job_name="multi_process")
    assert sorted(int(x) for x in ds) == list(range(0, 100, 2))
    assert all(p.poll() is None for p in procs)
  finally:
    for p in procs:
      p.terminate()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def test_tool_rejects_worker_without_dispatcher():
  result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "data_service.py"),
                           "--role=worker"], capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and "--dispatcher_address" in result.stderr

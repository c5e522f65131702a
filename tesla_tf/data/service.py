"""tf.data service helpers: start a dispatcher or a worker, and route a dataset through them.

A dispatcher coordinates; workers run the dataset graph (decode, preprocess, batch, augment) and stream
batches to the trainer. `tools/data_service.py` starts one server per process from flags.

Processing modes (see `distribute`): "distributed_epoch" splits the source among the workers, so one
epoch sees every example once; "parallel_epochs" makes every worker produce the whole dataset, which,
with seeded shuffling and augmentation, repeats identical batches once per worker.
"""

import dataclasses

from absl import logging
import tensorflow as tf

PROCESSING_MODES = ("distributed_epoch", "parallel_epochs")
ROLES = ("dispatcher", "worker")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """What `serve` starts.

  Attributes:
    role: "dispatcher" or "worker".
    port: port to listen on (0 = any free port; dispatchers need a known one for workers to find).
    dispatcher_address: "host:port" or "grpc://host:port" of the dispatcher (workers only).
    work_dir: dispatcher journal directory, making it fault tolerant (restarts recover its state).
    worker_address: address workers advertise, "%port%" replaced by the bound port; default
      "localhost:%port%".
  """
  role: str
  port: int = 0
  dispatcher_address: str = ""
  work_dir: str = ""
  worker_address: str = ""


def check_address(address, flag="--data_service"):
  """Checks a dispatcher address for the trainer; returns it.

  Args:
    address: "grpc://host:port".
    flag: the flag name quoted in the error.

  Raises:
    ValueError: the address does not look like grpc://host:port.
  """
  if not isinstance(address, str) or not address.startswith("grpc://"):
    raise ValueError(f"{flag} must be a dispatcher address 'grpc://host:port', got {address!r}.")
  host, _, port = address[len("grpc://"):].rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"{flag} must be a dispatcher address 'grpc://host:port', got {address!r}.")
  return address


def start_dispatcher(port, work_dir=None):
  """Starts a dispatcher in this process.

  Args:
    port: port to listen on (0 = any free port).
    work_dir: journal directory for fault-tolerant mode, or None.

  Returns:
    The running tf.data.experimental.service.DispatchServer; `.target` is "grpc://localhost:port".
  """
  config = tf.data.experimental.service.DispatcherConfig(
      port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir))
  return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address, port=0, worker_address=None):
  """Starts a worker in this process and registers it with the dispatcher.

  Args:
    dispatcher_address: "host:port" or "grpc://host:port".
    port: port to listen on (0 = any free port).
    worker_address: address advertised to the dispatcher ("%port%" = the bound port), or None.

  Returns:
    The running tf.data.experimental.service.WorkerServer.
  """
  if not dispatcher_address:
    raise ValueError("A worker needs --dispatcher_address=host:port of the dispatcher.")
  host_port = dispatcher_address.split("://", 1)[-1]
  config = tf.data.experimental.service.WorkerConfig(
      dispatcher_address=host_port, port=port, worker_address=worker_address or None)
  return tf.data.experimental.service.WorkerServer(config)


def distribute(ds, address, job_name=None, processing_mode="distributed_epoch"):
  """Routes a dataset through the tf.data service: workers run `ds`, this process reads the output.

  Args:
    ds: the dataset to run on the workers (no Python functions inside: it is serialised).
    address: dispatcher "grpc://host:port".
    job_name: consumers with the same job name share one job (each element goes to one of them).
    processing_mode: one of PROCESSING_MODES.

  Returns:
    A dataset with ds's element spec.
  """
  check_address(address)
  if processing_mode not in PROCESSING_MODES:
    raise ValueError(f"processing_mode must be one of {PROCESSING_MODES}, got {processing_mode!r}.")
  return ds.apply(tf.data.experimental.service.distribute(
      processing_mode=processing_mode, service=address, job_name=job_name))


def serve(config):
  """Starts the server `config` describes, logs its address and blocks until it stops.

  Args:
    config: a ServerConfig.
  """
  if config.role == "dispatcher":
    server = start_dispatcher(config.port, config.work_dir)
    logging.info("tf.data dispatcher listening at %s (journal: %s)", server.target,
                 config.work_dir or "none")
  elif config.role == "worker":
    server = start_worker(config.dispatcher_address, config.port, config.worker_address)
    # The bound port is only exposed through the private `_address` ("localhost:<port>").
    logging.info("tf.data worker at %s registered with dispatcher %s",
                 server._address, config.dispatcher_address)  # pylint: disable=protected-access
  else:
    raise ValueError(f"role must be one of {ROLES}, got {config.role!r}.")
  server.join()

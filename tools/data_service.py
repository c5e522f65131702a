"""Runs one tf.data service server (dispatcher or worker) in this process until it is stopped.

A dispatcher, then any number of workers (one per input machine):
  python tools/data_service.py --role=dispatcher --port=5050 --work_dir=/tmp/tfdata_journal
  python tools/data_service.py --role=worker --dispatcher_address=HOST:5050 --worker_address=HOST:%port%
The trainer then reads its input through the workers with --data_service=grpc://HOST:5050.
"""

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf.data import service

flags.DEFINE_enum("role", None, list(service.ROLES), "Which server to run.")
flags.DEFINE_integer("port", 0, "Port to listen on (0 = any free port; give the dispatcher a fixed one).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_string("dispatcher_address", "", "Workers: the dispatcher's host:port (or grpc://host:port).")
flags.DEFINE_string("work_dir", "", "Dispatcher: journal directory for fault-tolerant restarts.")
flags.DEFINE_string("worker_address", "",
                    "Workers: address advertised to the dispatcher, %port% = the bound port "
                    "(default localhost:%port%).")
flags.mark_flag_as_required("role")
flags.register_multi_flags_validator(
    ["role", "dispatcher_address"], lambda f: f["role"] != "worker" or bool(f["dispatcher_address"]),
    "--role=worker needs --dispatcher_address=host:port.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  service.serve(service.ServerConfig(role=FLAGS.role, port=FLAGS.port,
                                     dispatcher_address=FLAGS.dispatcher_address,
                                     work_dir=FLAGS.work_dir, worker_address=FLAGS.worker_address))


if __name__ == "__main__":
  cli.run(main)

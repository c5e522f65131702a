"""What the speed and scaling benchmarks share: process memory read from /proc, and one fresh child process
per measurement, watched while it runs.

A measurement runs as `python -m tesla_tf.bench.<module> '<spec>'` (`child_command`), where the spec is
the JSON of the benchmark's config, the measurement's name and its arguments; the child prints one JSON
record as its last stdout line (`child_main`). `run_child` starts it in the checkout (so it imports this
checkout's tesla_tf without installation), polls its RSS in /proc and kills it above a cap.

Nothing here imports TensorFlow: the parent stays small while the children measure.
"""

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GB = 1e9


def status_kb(pid, key):
  """A field of /proc/<pid>/status in kB (VmRSS, VmHWM), or None once the process is gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1])
  except (FileNotFoundError, ProcessLookupError):
    return None
  return None


def rss_gb():
  """This process's current RSS (VmRSS) in GB."""
  return status_kb(os.getpid(), "VmRSS") * 1e3 / GB


def hwm_gb():
  """This process's peak RSS since the last `reset_peak_rss` (VmHWM) in GB."""
  return status_kb(os.getpid(), "VmHWM") * 1e3 / GB


def max_rss_gb():
  """This process's peak RSS over its whole life (getrusage ru_maxrss) in GB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1e3 / GB


def mem_available_gb():
  """The machine's MemAvailable in GB (inf where /proc/meminfo lacks it)."""
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1e3 / GB
  return float("inf")


def reset_peak_rss():
  """Resets this process's VmHWM (Linux ≥ 4.0); returns False where that is not allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def tf_peak_gb():
  """TensorFlow's CPU allocator peak in GB, or None where TF does not track it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] / GB
  except (ValueError, RuntimeError, KeyError):
    return None


def config_from_dict(cls, values):
  """A config dataclass from its JSON form (lists back to tuples)."""
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def child_command(module, kind, config, **args):
  """The command of a child that runs measurement `kind` of `module` (e.g. "tesla_tf.bench.speed")."""
  spec = {"kind": kind, "config": dataclasses.asdict(config), "args": args}
  return [sys.executable, "-m", module, json.dumps(spec)]


def child_main(config_class, measurements, argv=None):
  """The body of `python -m tesla_tf.bench.<module> '<spec>'`: one measurement, its record on stdout.

  Args:
    config_class: the module's config dataclass.
    measurements: {kind: fn(config, **args) -> json-able record}.
    argv: [program, spec json] (default sys.argv).
  """
  argv = sys.argv if argv is None else argv
  if len(argv) != 2:
    sys.exit(f"usage: python -m <module> '<spec json>' (started by tesla_tf.bench.process.run_child); got "
             f"{argv[1:]}")
  spec = json.loads(argv[1])
  record = measurements[spec["kind"]](config_from_dict(config_class, spec["config"]), **spec["args"])
  print(json.dumps(record), flush=True)


def run_child(cmd, label, memory_cap_gb, min_available_gb):
  """Runs `cmd` in the checkout, polling its RSS; kills it above memory_cap_gb or when the machine's
  MemAvailable drops below min_available_gb.

  Returns:
    (the JSON record of its last stdout line, or None when it was stopped or failed; notes dict: wall
    time, watched peak RSS, load average before/after, and "stopped" or "error").
  """
  logging.info("child %s: %s", label, " ".join(cmd[1:]))
  load_before = os.getloadavg()
  started = time.perf_counter()
  # Files, not pipes: a child blocked on a full pipe would stall while being watched.
  with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
    proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, text=True, cwd=REPO)
    watched_gb, stopped = 0.0, None
    while proc.poll() is None:
      rss = status_kb(proc.pid, "VmRSS")
      if rss is not None:
        watched_gb = max(watched_gb, rss * 1e3 / GB)
        available = mem_available_gb()
        if watched_gb > memory_cap_gb or available < min_available_gb:
          stopped = (f"stopped at {watched_gb:.1f} GB RSS" +
                     ("" if watched_gb > memory_cap_gb else f" (machine MemAvailable {available:.1f} GB)"))
          proc.kill()
          break
      time.sleep(0.25)
    proc.wait()
    out_file.seek(0)
    err_file.seek(0)
    out, err = out_file.read(), err_file.read()
  notes = {"wall_s": time.perf_counter() - started, "watched_max_rss_gb": watched_gb,
           "load_before": load_before, "load_after": os.getloadavg()}
  if stopped:
    notes["stopped"] = stopped
    logging.warning("child %s %s", label, stopped)
    return None, notes
  if proc.returncode != 0:
    notes["error"] = err.strip().splitlines()[-5:]
    logging.error("child %s failed (%d):\n%s", label, proc.returncode, "\n".join(err.splitlines()[-30:]))
    return None, notes
  return json.loads(out.strip().splitlines()[-1]), notes


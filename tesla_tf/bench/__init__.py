"""Benchmarks as library code: one module per benchmark, each a frozen dataclass config (the fields are its
tool's flags, same names and defaults) and `run(config)`; tools/benchmark*.py only parse flags.

  speed     tools/benchmark.py          matching-gradient modes: time, memory, tesla vs exact fidelity
  scaling   tools/benchmark_scaling.py  per-image and per-step costs at ImageNet-1K scale
  experts   tools/benchmark_experts.py  expert training: input pipeline, train step, tf.data service
  jit       tools/benchmark_jit.py      XLA on or off for expert training and evaluation epochs
  quality   tools/benchmark_quality.py  distilled Fashion-MNIST beside the random subset
  process   what speed and scaling share: /proc memory readings, watched child processes
"""

import os

from tesla_tf import errors, files


def int_tuple(values, flag):
  """`values` (ints or the strings of a list flag) as a tuple of ints; a UsageError naming --flag if not."""
  try:
    return tuple(int(v) for v in values)
  except (TypeError, ValueError):
    raise errors.UsageError(f"--{flag}: expected integers, got {values!r}.") from None


def write_generated(path, begin, end, block, title):
  """Writes `block` between the `begin` and `end` marker lines of the page at `path` (the rest of the page
  is hand-written and kept); a page without the markers gets them appended, a missing one `title`."""
  page = f"# {title}\n" if not os.path.exists(path) else open(path, encoding="utf-8").read()
  if begin in page and end in page:
    page = page[:page.index(begin)] + f"{begin}\n{block}{end}" + page[page.index(end) + len(end):]
  else:
    page = page.rstrip("\n") + f"\n\n{begin}\n{block}{end}\n"
  files.write_text(path, page)

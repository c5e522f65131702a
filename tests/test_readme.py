"""README's "From Python (a notebook)" example runs as written and leaves the files it names."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import tesla_tf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## From Python (a notebook)"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                                   reason=f"the README example reads Fashion-MNIST from {FASHION_DIR} "
                                   "(apt-get install dataset-fashion-mnist)")


def notebook_block(text):
  """The first ```python block of the README section under HEADING."""
  start = text.find("\n" + HEADING + "\n")
  assert start >= 0, f"README.md has no section {HEADING!r}"
  section = text[start + len(HEADING) + 2:].split("\n## ", 1)[0]
  block = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
  assert block, f"README.md section {HEADING!r} has no ```python block"
  return block.group(1)


def named_path(code, name):
  """The string literal the example assigns to `name` (as a keyword or a variable)."""
  found = re.search(rf"\b{name}\s*=\s*\"([^\"]+)\"", code)
  assert found, f"the README example gives no {name}=\"...\""
  return found.group(1)


def test_readme_names_the_notebook_section_and_block():
  code = notebook_block(README.read_text())
  for call in ("experts.train_experts(", "loop.distill(", "evaluate.evaluate_path(", "distilled.load("):
    assert call in code
  assert "sys.path" not in code


@needs_fashion
def test_readme_notebook_example_runs_as_written(tmp_path):
  code = notebook_block(README.read_text())
  # Where this process imports tesla_tf from, for a checkout without `pip install -e .`.
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(tesla_tf.__file__)))
  pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                        timeout=900, env={**os.environ, "PYTHONPATH": pythonpath,
                                          "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, f"the README example failed:\n{done.stderr[-3000:]}"
  assert "fashion_mnist IPC 1: final-epoch test accuracy %" in done.stdout, done.stdout
  assert "random real subset (teacher labels)" in done.stdout, done.stdout  # the run's kind of labels
  assert re.search(r"^convnet\s+\d+\.\d\d ± \d+\.\d\d \(n=2\)\s+\d+\.\d\d ± \d+\.\d\d \(n=2\)$",
                   done.stdout, re.M), done.stdout
  assert "(10, 28, 28, 1)" in done.stdout, done.stdout  # the batch read back from the export

  store_dir, run_dir = named_path(code, "store_dir"), named_path(code, "run_dir")
  for path in (f"{store_dir}/manifest.json", f"{run_dir}/distilled/metadata.json", f"{run_dir}/eval.json",
               f"{run_dir}/flags.cfg"):
    assert (tmp_path / path).is_file(), f"the README example left no {path}"

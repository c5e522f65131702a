"""The installable package (pyproject.toml): a wheel built from a copy of the checkout holds every module,
installs into a fresh venv, and its console scripts and `python -m tesla_tf.tools.<tool>` run from
outside the checkout.

The throw-away venv reuses this venv's TensorFlow etc. through a .pth line (nothing is downloaded). The
.pth files of that reused directory are not executed, so this venv's editable install of tesla_tf stays
inactive there: the tests check that tesla_tf comes from the wheel.
"""

import concurrent.futures
import email
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import tesla_tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "tesla_tf", "tools")
# Each console script and a flag its --helpfull must list.
SCRIPTS = {"tesla-distill": "--store_dir", "tesla-train-experts": "--store_dir",
           "tesla-evaluate": "--distilled_dir", "tesla-export": "--source"}
PYTHON_M = "python -m tesla_tf.tools.distill"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
    "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _call(argv, cwd):
  return subprocess.run([str(a) for a in argv], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=180,
                        check=False)


def _output(proc, status=0):
  """stdout of a finished process, after checking its exit status."""
  assert proc.returncode == status and "Traceback" not in proc.stderr, (
      f"{proc.args} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
  return proc.stdout


def _run(argv, cwd):
  return _output(_call(argv, cwd))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(wheel path, throw-away venv, a cwd outside the checkout) with the wheel installed in the venv."""
  tmp = tmp_path_factory.mktemp("package")
  source = tmp / "source"  # pip builds in place: build/ and *.egg-info land in the copy, not the checkout
  source.mkdir()
  for name in BUILD_INPUTS:
    if (ROOT / name).is_dir():
      shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(ROOT / name, source / name)
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", tmp / "dist", source], cwd=tmp)
  [wheel] = (tmp / "dist").glob("*.whl")

  venv = tmp / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
  python = venv / "bin" / "python"
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).strip()
  reused = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
  pathlib.Path(site, "project_venv.pth").write_text("".join(p + "\n" for p in reused))
  # --ignore-installed: the editable tesla_tf seen through the .pth line is not this venv's to replace.
  _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel],
       cwd=tmp)
  elsewhere = tmp / "elsewhere"
  elsewhere.mkdir()
  return wheel, venv, elsewhere


def test_wheel_version_is_the_package_version(built):
  wheel, _, _ = built
  with zipfile.ZipFile(wheel) as z:
    [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(z.read(name))
  assert metadata["Version"] == tesla_tf.__version__
  # TensorFlow only through the extras [cpu] / [gpu]: its two wheels have different distribution names.
  plain = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
  assert not [r for r in plain if re.split(r"[\[~=<>!; ]", r)[0] in ("tensorflow", "tensorflow-cpu")], plain


def test_wheel_holds_every_module_and_nothing_else(built):
  wheel, _, _ = built
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tesla_tf").rglob("*.py")
              if "__pycache__" not in p.parts}
  expected |= {f"tesla_tf/tools/{p.name}" for p in (ROOT / "tools").glob("*.py")}
  missing = sorted(expected - names)
  assert not missing, f"not in the wheel (a new subpackage? add it to packages in pyproject.toml): {missing}"
  stray = sorted(n for n in names - expected if not n.split("/")[0].endswith(".dist-info"))
  assert not stray, f"unexpected files in the wheel: {stray}"


def test_tesla_tf_comes_from_the_wheel_not_the_checkout(built):
  _, venv, elsewhere = built
  out = _run([venv / "bin" / "python", "-c", "import importlib.util, tesla_tf; print(tesla_tf.__file__); "
              "print(importlib.util.find_spec('tesla_tf.tools.distill').origin)"], cwd=elsewhere)
  for path in out.split():
    assert pathlib.Path(path).resolve().is_relative_to(venv.resolve()), out


@pytest.fixture(scope="module")
def helpfull(built):
  """{command: its finished `<command> --helpfull`} for every console script and `python -m`, two at a time."""
  _, venv, elsewhere = built
  commands = {script: [venv / "bin" / script] for script in SCRIPTS}
  commands[PYTHON_M] = [venv / "bin" / "python", "-m", "tesla_tf.tools.distill"]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    done = pool.map(lambda argv: _call([*argv, "--helpfull"], elsewhere), commands.values())
    return dict(zip(commands, done))


# absl's --helpfull prints the flags on stdout and exits with status 1.
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_lists_its_flags(helpfull, script):
  assert SCRIPTS[script] in _output(helpfull[script], status=1)


def test_python_m_runs_a_tool(helpfull):
  assert "--store_dir" in _output(helpfull[PYTHON_M], status=1)

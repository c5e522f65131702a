"""BUILD names every library module, tool and test, and no file that is gone (read without Bazel).

BUILD is kept by hand. When a check fails, its message gives the exact lines to paste into BUILD.
"""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "BUILD"
LIBRARY = "tesla_tf"
TEST_SUPPORT = "test_support"
RULES = ("py_library", "py_binary", "py_test", "filegroup")


class Glob(list):
  """What `glob([...])` stands for here: patterns, which Bazel checks and this test does not."""


def read_build(path=BUILD):
  """Runs BUILD's Starlark with stand-in rules.

  Returns:
    {target name: (rule, {attribute: value})}.
  """
  targets = {}

  def rule(kind):
    def record(name, **attrs):
      if name in targets:
        pytest.fail(f"{path}: target {name!r} is defined twice", pytrace=False)
      targets[name] = (kind, attrs)
    return record

  env = {
      "__builtins__": {},
      "load": lambda *args, **kwargs: None,
      "package": lambda **kwargs: None,
      "exports_files": lambda *args, **kwargs: None,
      "requirement": lambda package: "@pip//" + package.replace("-", "_").lower(),
      "glob": lambda include, exclude=(), **kwargs: Glob(include),
  }
  env.update({kind: rule(kind) for kind in RULES})
  try:
    exec(compile(path.read_text(), str(path), "exec"), env)  # pylint: disable=exec-used
  except NameError as e:
    pytest.fail(f"{path}: unknown name ({e}); this test knows the rules {RULES}", pytrace=False)
  except (SyntaxError, TypeError) as e:
    pytest.fail(f"{path} does not read as Starlark: {e}", pytrace=False)
  return targets


def sources(attrs):
  """Repository paths named by a target's srcs, main and data (labels and globs left out)."""
  paths = [attrs["main"]] if "main" in attrs else []
  for key in ("srcs", "data"):
    if not isinstance(attrs.get(key), Glob):
      paths += attrs.get(key, [])
  return {p for p in paths if not p.startswith((":", "@", "//"))}


def files(folder, pattern):
  return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern)
                if "__pycache__" not in p.parts)


def listed_in(targets, kind=None):
  """Every path in srcs/main of targets of `kind` (every kind when None)."""
  out = set()
  for rule_kind, attrs in targets.values():
    if kind in (None, rule_kind):
      out |= sources({k: v for k, v in attrs.items() if k != "data"})
  return out


def _stanza(rule, path, data, deps):
  """The BUILD lines of one tool or test target, as this file lays them out."""
  return "\n".join([
      f"{rule}(",
      f'    name = "{pathlib.PurePosixPath(path).stem}",',
      f'    srcs = ["{path}"],',
      f'    main = "{path}",',
      f"    data = {data},",
      "    deps = [",
      *(f"        {dep}," for dep in deps),
      "    ],",
      ")",
      "",
  ])


def binary_stanza(path):
  return _stanza("py_binary", path, '[":configs"]', [f'":{LIBRARY}"', 'requirement("absl-py")'])


def py_test_stanza(path):
  return _stanza("py_test", path, '[":configs"]',
                 [f'":{LIBRARY}"', f'":{TEST_SUPPORT}"', 'requirement("pytest")'])


def fail_with_lines(what, where, lines):
  message = f"BUILD is missing {len(lines)} {what}; add to {where}:\n\n" + "\n".join(lines)
  pytest.fail(message + "\n", pytrace=False)


@pytest.fixture(scope="module")
def targets():
  assert BUILD.is_file(), f"{BUILD} is missing"
  return read_build()


def test_library_lists_its_sources_one_by_one(targets):
  kind, attrs = targets.get(LIBRARY, (None, {}))
  assert kind == "py_library", f'BUILD needs py_library(name = "{LIBRARY}", srcs = [...])'
  srcs = attrs.get("srcs", [])
  assert not isinstance(srcs, Glob) and all(isinstance(s, str) for s in srcs), (
      f'py_library "{LIBRARY}": list srcs file by file, no glob()')


def test_every_library_module_is_in_build(targets):
  srcs = set(targets.get(LIBRARY, (None, {}))[1].get("srcs", []))
  missing = [p for p in files(LIBRARY, "**/*.py") if p not in srcs]
  if missing:
    fail_with_lines("library module(s)", f'srcs of py_library(name = "{LIBRARY}")',
                    [f'        "{p}",' for p in missing])


def test_every_tool_has_a_py_binary(targets):
  binaries = listed_in(targets, "py_binary")
  missing = [p for p in files("tools", "*.py")
             if not pathlib.PurePosixPath(p).name.startswith("_") and p not in binaries]
  if missing:
    fail_with_lines("tool target(s)", "BUILD, one py_binary per tool",
                    [binary_stanza(p) for p in missing])


def test_every_test_has_a_py_test(targets):
  tests = listed_in(targets, "py_test")
  missing = [p for p in files("tests", "test_*.py") if p not in tests]
  if missing:
    fail_with_lines("test target(s)", "BUILD, one py_test per test file",
                    [py_test_stanza(p) for p in missing])


def test_test_helpers_are_in_test_support(targets):
  kind, attrs = targets.get(TEST_SUPPORT, (None, {}))
  assert kind == "py_library", (
      f'BUILD needs py_library(name = "{TEST_SUPPORT}") for conftest.py and helpers.py')
  srcs = set(attrs.get("srcs", []))
  missing = [p for p in files("tests", "*.py")
             if not pathlib.PurePosixPath(p).name.startswith("test_") and p not in srcs]
  if missing:
    fail_with_lines("test helper module(s)", f'srcs of py_library(name = "{TEST_SUPPORT}")',
                    [f'        "{p}",' for p in missing])


def test_tool_helpers_are_in_a_library(targets):
  listed = listed_in(targets, "py_library")
  missing = [p for p in files("tools", "_*.py") if p not in listed]
  if missing:
    fail_with_lines("tool helper module(s)", "srcs of a py_library that the tools depend on",
                    [f'        "{p}",' for p in missing])


def test_build_names_only_files_that_exist(targets):
  gone = sorted((name, p) for name, (_, attrs) in targets.items() for p in sources(attrs)
                if not (ROOT / p).exists())
  if gone:
    lines = "\n".join(f'  "{p}"   (target "{name}")' for name, p in gone)
    pytest.fail("BUILD names files that do not exist; delete these lines (the whole target when "
                "it was a tool or a test):\n\n" + lines, pytrace=False)

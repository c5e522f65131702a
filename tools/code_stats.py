"""Line counts, the longest functions and the import graph of the tesla_tf package (no TensorFlow needed).

  python tools/code_stats.py [--root=<checkout>] [--top=10]

Prints every module's line count, the `top` longest functions (lines from `def` to the last line of the
body), and the package-internal imports that run against the flow of DESIGN.md (a module importing one
of a later stage: data/ or models/ importing distill/, evaluate.py importing distill/, ...).
"""

import argparse
import ast
import os

# The stages in flow order: a module may import its own stage and earlier ones only.
STAGES = ["errors", "files", "cli", "summaries", "augment", "models", "data", "store", "multi_worker",
          "experts", "evaluate", "distill", "demo", "bench"]


def _stage(module):
  if module == "tesla_tf":  # the package's __init__ (its version): every module may read it
    return -1
  part = module.split(".")[1] if module.count(".") else module
  return STAGES.index(part) if part in STAGES else len(STAGES)


def modules(root, package="tesla_tf"):
  """{dotted module name: path} of every .py file under <root>/<package>."""
  out = {}
  for directory, _, names in os.walk(os.path.join(root, package)):
    for name in sorted(names):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def imports(tree):
  """The tesla_tf modules a parsed module imports (from-imports of names resolved to their module)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("tesla_tf"))
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tesla_tf"):
      found.update(f"{node.module}.{a.name}" if node.module == "tesla_tf" else node.module for a in node.names)
  return found


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  parser.add_argument("--top", type=int, default=10)
  args = parser.parse_args()
  functions, back = [], []
  total = 0
  print(f"{'lines':>6}  module")
  for module, path in sorted(modules(args.root).items()):
    source = open(path, encoding="utf-8").read()
    lines = source.count("\n")
    total += lines
    print(f"{lines:6d}  {module}")
    tree = ast.parse(source)
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        functions.append((node.end_lineno - node.lineno + 1, f"{module}:{node.lineno} {node.name}"))
    for target in sorted(imports(tree)):
      if _stage(target) > _stage(module):
        back.append(f"{module} -> {target}")
  print(f"{total:6d}  total of the package")
  tool_lines = 0
  for module, path in sorted(modules(args.root, "tools").items()):
    source = open(path, encoding="utf-8").read()
    tool_lines += source.count("\n")
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        functions.append((node.end_lineno - node.lineno + 1, f"{module}:{node.lineno} {node.name}"))
  print(f"{tool_lines:6d}  total of tools/ ({total + tool_lines} with the package)")
  print("\nlongest functions (lines):")
  for length, name in sorted(functions, reverse=True)[:args.top]:
    print(f"{length:6d}  {name}")
  print(f"\nimports against the flow ({len(back)}):")
  for edge in back:
    print(f"        {edge}")


if __name__ == "__main__":
  main()

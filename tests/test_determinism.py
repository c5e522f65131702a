"""Ready for a GPU: every op type in the compiled steps is one TF 2.21 runs deterministically on a GPU.

The graphs are traced on the CPU at tiny shapes; op types do not depend on sizes or on the device.
Tracing happens with op determinism on, as in the main job, because the Python API then builds other
ops (nn_ops' cross-entropies). The graphs are:
  step/<mode>/<labels>       Distiller.step for every matching mode × label source, DSA on (default
                             strategy), plus step/<tesla|exact>/hard/row_chunks=2
  expert/train, expert/evaluate   experts.TrainStep (the experts' recipe)
  evaluate/<arch>            evaluate.Trainer's epoch for every architecture; evaluate/predict
Nested functions (while-loop bodies, tf.function calls, gradient functions) are followed through the
graph's FunctionDef library. Each op type is looked up in tests/gpu_determinism.py (status and source);
inside a jit_compile function, its status under XLA counts.
"""

import collections
import inspect

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # disable_op_determinism is not public

from tesla_tf import evaluate, experts, models
from tesla_tf import store as store_lib
from tesla_tf.data import preprocess, sources
from tesla_tf.distill import loop, matching
from tesla_tf.models.flat import FlatModel
from tests import gpu_determinism as table
from tests.test_loop import small_config

SHAPE = (32, 32, 3)  # vgg11 needs 32 px; 8 px would do for the rest


def _graph_names():
  steps = [f"step/{mode}/{labels}" for mode in matching.MODES for labels in loop.LABEL_MODES]
  chunked = [f"step/{mode}/hard/row_chunks=2" for mode in matching.MODES if mode != "unrolled"]
  return (steps + chunked + ["expert/train", "expert/evaluate"]
          + [f"evaluate/{arch}" for arch in models.ARCHITECTURES] + ["evaluate/predict"])


GRAPHS = _graph_names()


def _callees(node, library):
  """Names of the library functions a node calls: as its op, or through a func / list(func) attr."""
  names = [node.op] if node.op in library else []
  for value in node.attr.values():
    if value.HasField("func"):
      names.append(value.func.name)
    names += [f.name for f in value.list.func]
  return names


def _must_compile(attrs):
  return "_XlaMustCompile" in attrs and attrs["_XlaMustCompile"].b


def op_types(concrete):
  """{op type: {(function name, compiled with XLA)}} of a concrete function and everything it calls."""
  graph_def = concrete.graph.as_graph_def()
  library = {f.signature.name: f for f in graph_def.library.function}
  found = collections.defaultdict(set)
  todo, seen = [("<top>", graph_def.node, _must_compile(concrete.function_def.attr))], set()
  while todo:
    name, nodes, compiled = todo.pop()
    for node in nodes:
      found[node.op].add((name, compiled))
      for callee in _callees(node, library):
        key = (callee, compiled or _must_compile(library[callee].attr))
        if key not in seen:
          seen.add(key)
          todo.append((key[0], library[callee].node_def, key[1]))
  return found


@pytest.fixture(scope="module")
def determinism():
  """Op determinism on for this module only: it is process-wide, and later tests may draw unseeded."""
  was_on = tf_config.is_op_determinism_enabled()
  tf.config.experimental.enable_op_determinism()
  yield
  if not was_on:
    tf_config.disable_op_determinism()


def tiny_store(path):
  """One expert of random-walk epochs for a one-block ConvNet: test_loop.make_store at depth 1 (the op
  types of any depth, for a third of the tracing)."""
  info, kwargs, epochs = sources.get_info("fashion_mnist"), {"width": 8, "depth": 1}, 4
  fmodel = FlatModel(models.build("convnet", info.num_classes, info.image_shape, **kwargs))
  store = store_lib.TrajectoryStore.create_or_open(path, {
      "dataset": info.name, "model": "convnet", "model_kwargs": kwargs,
      "preprocessing": preprocess.build("normalize", info).to_dict(), "epochs": epochs, "lr_teacher": 0.01,
      "layout": fmodel.layout(), "num_params": fmodel.num_params, "num_classes": info.num_classes,
      "image_shape": info.image_shape})
  theta = fmodel.initial_flat(0).numpy()
  steps = np.random.default_rng(0).normal(scale=0.01, size=(epochs, theta.size)).astype(np.float32)
  store.write(0, np.concatenate([theta[None], theta + np.cumsum(steps, 0)]), {"seed": 0})


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("determinism_store"))
  tiny_store(path)
  return path


def _step(store_dir, run_dir, name):
  _, mode, labels, *chunks = name.split("/")
  config = small_config(store_dir, run_dir, mode=mode, labels=labels, pix_init="noise", ipc=1, syn_steps=2,
                        batch_syn=10, row_chunks=2 if chunks else 1)
  distiller = loop.Distiller(config)
  params = tf.TensorSpec([distiller.fmodel.num_params], tf.float32)
  return distiller.step.get_concrete_function(params, params, tf.TensorSpec([2, 2], tf.int32))


def _expert(name):
  step = experts.TrainStep(models.build("convnet", 10, SHAPE, width=8, depth=1), global_batch_size=4)
  batch = (tf.TensorSpec([4, *SHAPE], tf.float32), tf.TensorSpec([4], tf.int32))
  return (step.train if name == "expert/train" else step.evaluate).get_concrete_function(batch)


def _trainer(arch):
  options = inspect.signature(models.ARCHITECTURES[arch]).parameters
  kwargs = {"width": 8} if "width" in options else {"width_multiplier": 0.0625}
  config = evaluate.EvalConfig(epochs=2, batch_size=4)  # DSA on: the default strategy
  return evaluate.Trainer(arch, kwargs, 10, SHAPE, 6, config)


def _evaluate(name):
  arch = name.split("/")[1]
  if arch == "predict":
    return _trainer("convnet")._predict.get_concrete_function()  # pylint: disable=protected-access
  trainer = _trainer(arch)
  return trainer._epoch.get_concrete_function(  # pylint: disable=protected-access
      tf.TensorSpec([6, *SHAPE], tf.float32), tf.TensorSpec([6, 10], tf.float32),
      tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.float32))


@pytest.fixture(scope="module")
def traced(determinism, store_dir, tmp_path_factory):  # pylint: disable=unused-argument
  """name -> op_types of that graph, traced on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      if name.startswith("step/"):
        concrete = _step(store_dir, str(tmp_path_factory.mktemp("run")), name)
      else:
        concrete = _expert(name) if name.startswith("expert/") else _evaluate(name)
      cache[name] = op_types(concrete)
    return cache[name]
  return get


def _where(places):
  names = sorted({f for f, _ in places})
  return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


@pytest.mark.parametrize("graph", GRAPHS)
def test_every_op_type_has_a_reviewed_gpu_status(traced, graph):
  unknown = {op: places for op, places in traced(graph).items() if op not in table.OPS}
  assert not unknown, (
      f"Graph {graph} has op types not in tests/gpu_determinism.py: "
      + "; ".join(f"{op} (in {_where(p)})" for op, p in sorted(unknown.items()))
      + ". Look each up for TF's GPU kernel under enable_op_determinism (deterministic / host_copy / raises "
      "/ nondeterministic) and add it to OPS with a note and its sources.")


@pytest.mark.parametrize("graph", GRAPHS)
def test_no_op_raises_or_is_nondeterministic_on_gpu(traced, graph):
  bad = []
  for op, places in sorted(traced(graph).items()):
    entry = table.OPS.get(op)
    if entry is None:
      continue  # the test above names it
    for compiled in sorted({c for _, c in places}):
      status = (entry.xla or entry.status) if compiled else entry.status
      if status in table.RISKY:
        where = _where({p for p in places if p[1] == compiled})
        bad.append(f"{op} is '{status}' on GPU{' under jit_compile' if compiled else ''} (in {where}): "
                   f"{entry.note} (sources in tests/gpu_determinism.py: {', '.join(entry.sources)})")
  assert not bad, f"Graph {graph}:\n  " + "\n  ".join(bad)


def test_op_table_is_well_formed():
  for op, entry in table.OPS.items():
    assert entry.status in table.STATUSES and entry.xla in (None,) + table.STATUSES, op
    assert entry.note and entry.sources and set(entry.sources) <= set(table.SOURCES), op

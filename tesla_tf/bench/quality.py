"""The quality benchmark: how well do the distilled sets train a network, beside the random subset?

Real Fashion-MNIST, in stages that each leave their output in a work directory and are skipped when
re-run, so the table can be built over several sittings:
  1. experts        `num_experts` ConvNets into <workdir>/experts (the store's validation split is
                    held out of their training; finished experts are kept, a half-trained one is
                    trained again);
  2. one distillation per (IPC, mode, label variant, seed) into <workdir>/runs/<name>, evaluated every
                    `eval_every` iterations on the validation split and the test set, and at the end
                    beside the random subset (the loop resumes from its last checkpoint and keeps every
                    evaluation it made in eval_history.json);
  3. the report     <docs_dir>/quality.json (one record per run), quality.md (the table, generated from
                    the records) and quality_curve.png (validation accuracy against iteration).
A run is done when <workdir>/stages/<name>.json exists; it holds the run's wall time.
The headline is the final-iteration test accuracy; the iteration chosen on validation is shown beside it.
"""

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Mapping, Optional

from absl import logging
import numpy as np

from tesla_tf import store as store_lib
from tesla_tf import bench, evaluate, experts
from tesla_tf.distill import history as history_lib
from tesla_tf.distill import labels as labels_lib
from tesla_tf.distill import loop
from tesla_tf.distill import matching

# Matching settings per IPC: REFERENCE §8's CIFAR-10 values with N 20 for this machine. IPC 1 starts in
# the experts' first epochs (T⁺ 2, as MTT): with T⁺ 8 the sets ended 6 points lower (docs/quality.md). IPC 10: T⁺ 4 of the experts' 10 epochs, MTT's 20 of 50 rescaled.
IPC_SETTINGS = {
    1: {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0, "lr_lr": 1e-5,
        "lr_teacher": 0.01, "iterations": 600},
    10: {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 4, "lr_img": 1000.0, "lr_lr": 1e-5,
         "lr_teacher": 0.01, "iterations": 400},
}
# Published ConvNet results on Fashion-MNIST, IPC 1 / 10 (REFERENCE §9)
PUBLISHED = (("random real subset (DC/DSA papers)", 51.4, 73.8), ("DC", 70.5, 82.3), ("DSA", 70.6, 84.6),
             ("KIP trained into a ConvNet", 73.8, 86.8))


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """What the benchmark runs.

  Attributes:
    workdir: where every stage caches its output (outside the repository).
    docs_dir: where quality.{json,md} and quality_curve.png are written.
    data_dir: Fashion-MNIST IDX folder (None = the Debian package's).
    width: ConvNet width of experts, students and evaluation.
    num_experts / expert_epochs_trained: the expert budget.
    max_train_examples: experts train on a seeded subset of the rest of the train set (None = all of it).
    ipcs, modes, labels, seeds: the runs, every combination (labels: keys of labels_lib.VARIANTS).
    ipc_settings: {ipc: matching settings and iterations} (default IPC_SETTINGS).
    eval_every, num_eval, eval_epochs: evaluation of every run (REFERENCE §7 recipe).
    run_stages: False = only write the report from what the work directory holds.
  """
  workdir: str
  docs_dir: str = "docs"
  data_dir: Optional[str] = None
  width: int = 32
  num_experts: int = 6
  expert_epochs_trained: int = 10
  max_train_examples: Optional[int] = None
  ipcs: tuple = (1, 10)
  modes: tuple = ("tesla", "exact")
  labels: tuple = ("hard",)
  seeds: tuple = (0, 1)
  ipc_settings: Mapping = dataclasses.field(default_factory=lambda: dict(IPC_SETTINGS))
  eval_every: int = 200
  num_eval: int = 3
  eval_epochs: int = 1000
  run_stages: bool = True

  def __post_init__(self):
    for name in self.labels:
      if name not in labels_lib.VARIANTS:
        raise ValueError(f"Unknown label variant {name!r} (--labels); expected one of {list(labels_lib.VARIANTS)}.")
    for mode in self.modes:
      if mode not in matching.MODES:
        raise ValueError(f"Unknown mode {mode!r} (--modes); expected one of {list(matching.MODES)}.")
    for ipc in self.ipcs:
      if ipc not in self.ipc_settings:
        raise ValueError(f"--ipcs: no settings for IPC {ipc}; expected one of {sorted(self.ipc_settings)}.")


def run_name(config, ipc, mode, labels, seed):
  """The run's directory and stage name: its coordinates and a tag of every other setting, so a run of
  other settings (another sitting's IPC_SETTINGS, iterations or evaluation) is never taken for it."""
  settings = {**config.ipc_settings[ipc], "eval_every": config.eval_every, "num_eval": config.num_eval,
              "eval_epochs": config.eval_epochs}
  tag = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
  return f"ipc{ipc}_{mode}_{labels}_seed{seed}_{tag}"


def _stage(workdir, name, fn):
  """Runs fn() unless stage `name` is done; a done stage has <workdir>/stages/<name>.json (wall time)."""
  marker = os.path.join(workdir, "stages", name + ".json")
  if os.path.exists(marker):
    logging.info("Stage %s: done earlier (%s), skipped.", name, marker)
    return
  logging.info("Stage %s: running.", name)
  start = time.time()
  fn()
  evaluate.write_json(marker, {"stage": name, "seconds": round(time.time() - start, 1),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def expert_config(config):
  return experts.ExpertConfig(
      dataset="fashion_mnist", store_dir=os.path.join(config.workdir, "experts"), data_dir=config.data_dir,
      model="convnet", model_kwargs={"width": config.width}, num_experts=config.num_experts,
      epochs=config.expert_epochs_trained, max_train_examples=config.max_train_examples, verbose=2)


def distill_config(config, ipc, mode, labels, seed):
  settings = config.ipc_settings[ipc]
  return loop.DistillConfig(
      dataset="fashion_mnist", store_dir=os.path.join(config.workdir, "experts"),
      run_dir=os.path.join(config.workdir, "runs", run_name(config, ipc, mode, labels, seed)),
      data_dir=config.data_dir, ipc=ipc, mode=mode, seed=seed, eval_every=config.eval_every,
      eval_models=("convnet",), num_eval=config.num_eval, eval_epochs=config.eval_epochs,
      save_every=50, log_every=25, log_images_every=100, **settings, **labels_lib.VARIANTS[labels])


def runs(config):
  """(ipc, mode, labels, seed) of every run, cheapest first."""
  return [(ipc, mode, labels, seed) for ipc in sorted(config.ipcs) for labels in config.labels
          for mode in config.modes for seed in config.seeds]


def run(config):
  """Runs the stages still to do, then writes the report; returns the report's records."""
  if config.run_stages:
    experts.train_experts(expert_config(config))  # trains only the experts the store lacks
    for spec in runs(config):
      _stage(config.workdir, run_name(config, *spec), lambda spec=spec: loop.distill(distill_config(config,
                                                                                                  *spec)))
  return write_report(config)


# -- the report ------------------------------------------------------------------------------------

def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


_RUN_NAME = re.compile(r"^ipc(\d+)_([a-z]+)_(.+)_seed(-?\d+)_([0-9a-f]{6})$")


def run_record(workdir, name):
  """The quality.json record of the finished run `name` of workdir, or None when it has not finished.

  Everything comes from what the run and the experts wrote (the run's own settings from its export's
  metadata), so records of earlier sittings with other settings stay right.
  """
  run_dir = os.path.join(workdir, "runs", name)
  stage = _read_json(os.path.join(workdir, "stages", name + ".json"))
  history = history_lib.read(run_dir)
  final = _read_json(os.path.join(run_dir, "eval.json"))
  metadata = _read_json(os.path.join(run_dir, "distilled", "metadata.json"))
  if None in (stage, final, metadata) or not history["evaluations"]:
    return None
  d = metadata["config"]
  ipc, mode, labels, seed, tag = _RUN_NAME.match(name).groups()
  store = store_lib.TrajectoryStore(d["store_dir"])
  distilled, random = final["distilled"]["convnet"], final["random_subset"]["convnet"]
  selected = history["best_on_validation"]["convnet"]
  return {
      "name": name, "ipc": int(ipc), "mode": mode, "labels": labels, "seed": int(seed), "settings_tag": tag,
      "label_settings": {k: d[k] for k in ("labels", "label_temperature", "label_mix")},
      "iterations": d["iterations"],
      "final_test_accuracy": distilled["mean"], "final_test_std": distilled["std"],
      "final_test_accuracies": distilled["accuracies"],
      "final_validation_accuracy": distilled.get("validation_mean"),
      "val_selected_iteration": selected["iteration"] if selected else None,
      "val_selected_validation_accuracy": selected["validation_mean"] if selected else None,
      "val_selected_test_accuracy": selected["mean"] if selected else None,
      "random_subset_test_accuracy": random["mean"], "random_subset_test_std": random["std"],
      "learned_lr": final["settings"]["lr"],
      "validation_curve": [[e["iteration"], e["distilled"]["convnet"].get("validation_mean")]
                           for e in history["evaluations"]],
      "label_statistics": {tag: scalar_series(os.path.join(run_dir, "tensorboard"), "labels/" + tag)[-1:]
                           for tag in ("entropy", "argmax_is_class")} if d["labels"] != "hard" else None,
      "budget": {"experts": len(store.finished()), "expert_train_epochs": store.manifest.epochs,
                 "width": store.manifest.model_kwargs.get("width"),
                 "max_train_examples": store.manifest.max_train_examples,
                 "holdout": store.manifest.holdout,
                 **{k: d[k] for k in ("syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr",
                                      "lr_teacher", "batch_syn", "eval_every", "num_eval", "eval_epochs")}},
      "seconds": {"distill_and_evaluate": stage["seconds"],
                  "experts": round(sum(store.info(i)["wall_time_s"] for i in store.finished()), 1)},
  }


def scalar_series(logdir, tag):
  """[[step, value], ...] of one TensorBoard scalar of the event files in logdir, by step."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  series = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          series[int(event.step)] = float(tf.make_ndarray(value.tensor))
  return sorted([step, v] for step, v in series.items())


def finished_runs(workdir):
  """Names of the runs whose stage is done in workdir, sorted."""
  directory = os.path.join(workdir, "stages")
  names = [f[:-len(".json")] for f in os.listdir(directory)] if os.path.isdir(directory) else []
  return sorted(n for n in names if _RUN_NAME.match(n))


def _pct(values):
  values = [v for v in values if v is not None]
  if not values:
    return "–"
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def table(records):
  """The markdown table of quality.md, one row per (IPC, mode, labels, settings), from the records."""
  lines = ["| IPC | mode | labels | N | M | T⁺ | lr_img | iterations | seeds | **final test** (mean ± std over "
           "seeds) | per seed (mean ± std over networks) | selected on validation: iteration → test | "
           "random subset | distill + eval s/run |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  groups = {}
  for r in records:
    groups.setdefault((r["ipc"], r["mode"], r["labels"], r["settings_tag"]), []).append(r)
  for (ipc, mode, labels, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1],
                                                                          kv[1][0]["budget"]["max_start_epoch"])):
    b = rs[0]["budget"]
    per_seed = ", ".join(f"{100 * r['final_test_accuracy']:.2f} ± {100 * r['final_test_std']:.2f}" for r in rs)
    selected = ", ".join(f"{r['val_selected_iteration']} → {100 * r['val_selected_test_accuracy']:.2f}"
                         for r in rs if r["val_selected_iteration"] is not None)
    seconds = ", ".join(f"{r['seconds']['distill_and_evaluate']:.0f}" for r in rs)
    lines.append(f"| {ipc} | {mode} | {labels} | {b['syn_steps']} | {b['expert_epochs']} | "
                 f"{b['max_start_epoch']} | {b['lr_img']:g} | {rs[0]['iterations']} | {len(rs)} | "
                 f"**{_pct([r['final_test_accuracy'] for r in rs])}** | {per_seed} | {selected} | "
                 f"{_pct([r['random_subset_test_accuracy'] for r in rs])} | {seconds} |")
  return "\n".join(lines)


def _plot(records, path):
  """Validation accuracy against distillation iteration, mean over seeds, one panel per IPC."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ipcs = sorted({r["ipc"] for r in records})
  fig, axes = plt.subplots(1, len(ipcs), figsize=(5.5 * len(ipcs), 4), squeeze=False)
  for ax, ipc in zip(axes[0], ipcs):
    groups = {}
    for r in records:
      if r["ipc"] == ipc:
        key = f"{r['mode']}, {r['labels']}, T⁺ {r['budget']['max_start_epoch']}"
        groups.setdefault(key, []).append(dict(r["validation_curve"]))
    for label, curves in sorted(groups.items()):
      its = sorted(set.intersection(*(set(c) for c in curves)))
      ax.plot(its, [100 * np.mean([c[i] for c in curves]) for i in its], marker="o",
              label=f"{label} ({len(curves)} seeds)")
    ax.set(title=f"Fashion-MNIST IPC {ipc}", xlabel="distillation iteration", ylabel="validation accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(config):
  """Writes quality.json / quality.md / quality_curve.png from every finished run in the work directory
  (also those of other invocations); returns the records."""
  records = [r for r in (run_record(config.workdir, name) for name in finished_runs(config.workdir)) if r]
  done = {r["name"] for r in records}
  pending = [run_name(config, *spec) for spec in runs(config) if run_name(config, *spec) not in done]
  os.makedirs(config.docs_dir, exist_ok=True)
  evaluate.write_json(os.path.join(config.docs_dir, "quality.json"), {"records": records, "pending": pending})
  if records:
    _plot(records, os.path.join(config.docs_dir, "quality_curve.png"))
  published = "\n".join(f"| {name} | {a} | {b} |" for name, a, b in PUBLISHED)
  budget = records[0]["budget"] if records else {}
  text = GENERATED.format(
      table=table(records) if records else "(no finished run yet)",
      pending=", ".join(pending) or "none", experts=budget.get("experts", config.num_experts),
      epochs=budget.get("expert_train_epochs", config.expert_epochs_trained),
      width=budget.get("width", config.width),
      expert_seconds=records[0]["seconds"]["experts"] if records else "–", published=published)
  bench.write_generated(os.path.join(config.docs_dir, "quality.md"), BEGIN, END, text, "Quality benchmark")
  return records


BEGIN, END = "<!-- generated table: begin -->", "<!-- generated table: end -->"


GENERATED = """<!-- tools/benchmark_quality.py writes this block from quality.json; edit outside it. -->
Final-iteration test accuracy (%) on the real Fashion-MNIST test set, ConvNet width {width} trained on the
distilled set alone (REFERENCE §7: 1,000 epochs, lr = learned α, momentum 0.9, DSA), mean ± population
std. The random subset is IPC real images per class from the train set minus the validation split,
trained by the same recipe and seeds with the set's α. "Selected on validation" is the evaluated
iteration with the highest accuracy on the 5,000 held-out train images, and that iteration's test accuracy.
s/run is the wall time of the sitting that finished the run (a run resumed after a kill shows less).

{table}

Runs not finished yet: {pending}.
Experts: {experts} × {epochs} epochs, width {width}; {expert_seconds} s of Keras fit in all.

Published ConvNet results on Fashion-MNIST (REFERENCE §9):

| method | IPC 1 | IPC 10 |
|---|---|---|
{published}
"""

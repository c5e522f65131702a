"""The evaluation history of a distillation run (<run_dir>/eval_history.json).

Every evaluation by iteration — test and validation accuracy, mean ± std over the evaluation networks —
the final one (the headline) and the one selected on the validation split, reported with its test
accuracy. Nothing is ever selected on the test set (STYLE §11).
"""

import dataclasses
import os

from absl import logging

from tesla_tf import errors, evaluate, files

FILE = "eval_history.json"
# evaluate.py's summary keys → TensorBoard names ("final" = that evaluation's final-epoch test accuracy)
SCALARS = {"mean": "final_accuracy_mean", "std": "final_accuracy_std",
           "validation_mean": "validation_accuracy_mean", "validation_std": "validation_accuracy_std"}


def select_on_validation(evaluations, arch):
  """The evaluation of `arch` with the highest validation accuracy of the distilled set (the earliest
  on ties), or None when no evaluation measured validation.

  Args:
    evaluations: eval_history.json's "evaluations" list.
    arch: an architecture evaluated in them.

  Returns:
    {"iteration", "validation_mean", "mean" and "std" (its TEST accuracy)} or None.
  """
  measured = [e for e in evaluations if "validation_mean" in e["distilled"].get(arch, {})]
  if not measured:
    return None
  top = max(measured, key=lambda e: (e["distilled"][arch]["validation_mean"], -e["iteration"]))
  summary = top["distilled"][arch]
  return {"iteration": top["iteration"], "validation_mean": summary["validation_mean"],
          "mean": summary["mean"], "std": summary["std"]}


def read(run_dir):
  """<run_dir>/eval_history.json as a dict ({"evaluations": []} before the first evaluation)."""
  path = os.path.join(run_dir, FILE)
  if not os.path.exists(path):
    return {"evaluations": []}
  history = files.read_json(path, remedy="move it aside to resume (its evaluations leave the history)")
  if not isinstance(history.get("evaluations"), list):
    raise errors.CorruptFileError(f"{path}: expected an object with an 'evaluations' list.")
  return history


def iterations(run_dir):
  """The iterations evaluated so far."""
  return {e["iteration"] for e in read(run_dir)["evaluations"]}


def record(run_dir, step, results):
  """Adds one evaluation to <run_dir>/eval_history.json; returns {arch: select_on_validation(...)}.

  The history keeps test (and validation) mean ± std of every evaluation by iteration; "final" is the
  last one (the headline), "best_on_validation" the one selected on the validation split, with its
  test accuracy. Nothing is ever selected on the test set. A re-run of an iteration (after a resume)
  replaces its entry.
  """
  entry = {"iteration": step}
  for kind in ("distilled", "random_subset"):
    entry[kind] = {arch: {k: r[k] for k in SCALARS if k in r}
                   for arch, r in (results.get(kind) or {}).items()}
  evaluations = [e for e in read(run_dir)["evaluations"] if e["iteration"] != step] + [entry]
  evaluations.sort(key=lambda e: e["iteration"])
  best = {arch: select_on_validation(evaluations, arch) for arch in entry["distilled"]}
  evaluate.write_json(os.path.join(run_dir, FILE), {"evaluations": evaluations, "final": evaluations[-1],
                             "best_on_validation": best})
  return best


def evaluator(config, preprocessor, baseline_labeler=None):
  """A function (distilled_set, step, final) -> TensorBoard scalars that evaluates the set on
  config.eval_models (and, when final, the random-subset baseline, REFERENCE §7, labelled by
  `baseline_labeler` when the set's labels are soft), recording it in <run_dir>/eval_history.json and,
  when final, eval.json; None without eval_models."""
  if not config.eval_models:
    return None
  eval_config = evaluate.EvalConfig(models=tuple(config.eval_models), num_eval=config.num_eval,
                                    epochs=config.eval_epochs, dsa_strategy=config.dsa_strategy,
                                    seed=config.seed, data_dir=config.data_dir)

  def run(distilled_set, step, final):
    # The baseline does not change with the iteration: measured once, at the end.
    results = evaluate.evaluate_distilled(
        distilled_set, dataclasses.replace(eval_config, baseline=final), preprocessor=preprocessor,
        baseline_labeler=baseline_labeler, out_path=os.path.join(config.run_dir, "eval.json") if final else None)
    scalars = {}
    for kind in ("distilled", "random_subset"):
      for arch, summary in (results.get(kind) or {}).items():
        for key, name in SCALARS.items():
          if key in summary:
            scalars[f"eval/{kind}/{arch}/{name}"] = summary[key]
    for arch, best in record(config.run_dir, step, results).items():
      if best is None:
        continue
      scalars[f"eval/distilled/{arch}/val_selected_test_accuracy_mean"] = best["mean"]
      scalars[f"eval/distilled/{arch}/val_selected_iteration"] = best["iteration"]
      logging.info("[eval it %d] %s distilled: test %.2f %%; best on validation: iteration %d (validation "
                   "%.2f %%, test %.2f %%)", step, arch, 100 * results["distilled"][arch]["mean"],
                   best["iteration"], 100 * best["validation_mean"], 100 * best["mean"])
    return scalars

  return run

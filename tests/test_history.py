"""The evaluation history: final evaluation, selection on validation only, resume replaces an entry."""

import json

from tesla_tf.distill import history


def test_evaluation_history_selects_on_validation_and_reports_that_iterations_test(tmp_path):
  def results(test, validation):
    return {"distilled": {"convnet": {"mean": test, "std": 0.01, "validation_mean": validation,
                                      "validation_std": 0.02}},
            "random_subset": {}}

  # The test-best iteration (2000) is not the validation-best one (3000): selection must ignore test.
  for step, test, validation in ((1000, 0.61, 0.60), (2000, 0.70, 0.62), (3000, 0.64, 0.66),
                                 (4000, 0.65, 0.63)):
    best = history.record(str(tmp_path), step, results(test, validation))
  assert best == {"convnet": {"iteration": 3000, "validation_mean": 0.66, "mean": 0.64, "std": 0.01}}
  # A resumed run that evaluates iteration 3000 again replaces that entry: the selection moves to 4000.
  best = history.record(str(tmp_path), 3000, results(0.90, 0.50))
  assert best["convnet"]["iteration"] == 4000 and best["convnet"]["mean"] == 0.65
  with open(tmp_path / "eval_history.json") as f:
    saved = json.load(f)
  assert saved == history.read(str(tmp_path)) and history.iterations(str(tmp_path)) == {1000, 2000, 3000, 4000}
  assert [e["iteration"] for e in saved["evaluations"]] == [1000, 2000, 3000, 4000]
  assert saved["final"]["iteration"] == 4000 and saved["final"]["distilled"]["convnet"]["mean"] == 0.65
  assert saved["best_on_validation"]["convnet"]["iteration"] == 4000
  assert "best" not in saved


def test_selection_ties_take_the_earliest_and_no_validation_selects_nothing():
  evaluations = [{"iteration": i, "distilled": {"convnet": {"mean": m, "std": 0.0, "validation_mean": 0.5}}}
                 for i, m in ((100, 0.3), (200, 0.9))]
  assert history.select_on_validation(evaluations, "convnet")["iteration"] == 100
  without = [{"iteration": 100, "distilled": {"convnet": {"mean": 0.9, "std": 0.0}}}]
  assert history.select_on_validation(without, "convnet") is None

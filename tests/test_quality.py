"""The quality benchmark: stages cached and resumed, records and report built from what the runs wrote."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tesla_tf import store as store_lib
from tesla_tf import evaluate, experts
from tesla_tf.bench import quality
from tesla_tf.distill import loop

TINY_SETTINGS = {1: {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1, "lr_img": 100.0, "lr_lr": 1e-5,
                     "lr_teacher": 0.01, "iterations": 2}}


def _tiny(tmp_path, **kw):
  settings = dict(workdir=str(tmp_path / "work"), docs_dir=str(tmp_path / "docs"), width=8, num_experts=1,
                  expert_epochs_trained=2, max_train_examples=512, ipcs=(1,), modes=("tesla",),
                  labels=("hard",), seeds=(0,), ipc_settings=TINY_SETTINGS, eval_every=1, num_eval=1,
                  eval_epochs=2)
  return quality.QualityConfig(**{**settings, **kw})


class Interrupted(Exception):
  pass


def test_interrupted_benchmark_resumes_without_redoing_its_first_stage(tmp_path, monkeypatch):
  config = _tiny(tmp_path)
  real_distill = loop.distill

  def killed(_):
    raise Interrupted

  monkeypatch.setattr(loop, "distill", killed)
  with pytest.raises(Interrupted):
    quality.run(config)
  stages = tmp_path / "work" / "stages"
  assert not stages.exists()
  assert store_lib.TrajectoryStore(tmp_path / "work" / "experts").finished() == [0]

  def must_not_run(*_):
    raise AssertionError("an expert was trained again")

  monkeypatch.setattr(experts, "train_expert", must_not_run)
  monkeypatch.setattr(loop, "distill", real_distill)
  records = quality.run(config)
  name = quality.run_name(config, 1, "tesla", "hard", 0)
  assert os.listdir(stages) == [name + ".json"]
  [record] = records
  run_dir = tmp_path / "work" / "runs" / name
  final = json.loads((run_dir / "eval.json").read_text())
  history = json.loads((run_dir / "eval_history.json").read_text())
  assert record["final_test_accuracy"] == final["distilled"]["convnet"]["mean"]
  assert record["random_subset_test_accuracy"] == final["random_subset"]["convnet"]["mean"]
  assert [i for i, _ in record["validation_curve"]] == [1, 2]
  assert record["val_selected_iteration"] == history["best_on_validation"]["convnet"]["iteration"]
  assert record["budget"]["experts"] == 1 and record["budget"]["width"] == 8
  assert record["budget"]["expert_train_epochs"] == 2 and record["budget"]["expert_epochs"] == 1
  saved = json.loads((tmp_path / "docs" / "quality.json").read_text())
  assert saved["records"] == json.loads(json.dumps(records)) and saved["pending"] == []
  page = (tmp_path / "docs" / "quality.md").read_text()
  assert f"{100 * record['final_test_accuracy']:.2f}" in page
  assert (tmp_path / "docs" / "quality_curve.png").stat().st_size > 1000


def test_report_keeps_the_hand_written_part_of_the_page(tmp_path):
  config = _tiny(tmp_path, run_stages=False)
  os.makedirs(config.docs_dir)
  page = os.path.join(config.docs_dir, "quality.md")
  with open(page, "w") as f:
    f.write(f"# Title\n\nhand-written\n\n{quality.BEGIN}\nold\n{quality.END}\n\n## After\nmore\n")
  assert quality.run(config) == []
  text = open(page).read()
  assert text.startswith("# Title\n\nhand-written") and text.endswith("## After\nmore\n")
  assert "old" not in text and f"Runs not finished yet: {quality.run_name(config, 1, 'tesla', 'hard', 0)}." in text


def test_runs_of_other_settings_get_other_names(tmp_path):
  config = _tiny(tmp_path)
  other = _tiny(tmp_path, eval_every=2)
  longer = _tiny(tmp_path, ipc_settings={1: {**TINY_SETTINGS[1], "iterations": 3}})
  names = {quality.run_name(c, 1, "tesla", "hard", 0) for c in (config, other, longer)}
  assert len(names) == 3 and all(n.startswith("ipc1_tesla_hard_seed0_") for n in names)


def test_table_is_mean_and_std_over_seeds():
  budget = {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0}
  records = [{"ipc": 1, "mode": "exact", "labels": "hard", "iterations": 10, "final_test_accuracy": a,
              "settings_tag": "abcdef", "budget": budget,
              "final_test_std": 0.01, "val_selected_iteration": 5, "val_selected_test_accuracy": 0.5,
              "random_subset_test_accuracy": 0.4, "seconds": {"distill_and_evaluate": 3.0}}
             for a in (0.70, 0.74)]
  row = quality.table(records).splitlines()[-1]
  assert f"**{100 * np.mean([0.70, 0.74]):.2f} ± {100 * np.std([0.70, 0.74]):.2f}**" in row
  assert "| 1 | exact | hard | 20 | 2 | 2 | 100 | 10 | 2 |" in row


def test_a_kill_between_checkpoint_and_evaluation_loses_no_evaluation(tmp_path, monkeypatch):
  config = _tiny(tmp_path)
  experts.train_experts(quality.expert_config(config))
  distill_config = quality.distill_config(config, 1, "tesla", "hard", 0)
  distill_config = loop.DistillConfig(**{**distill_config.__dict__, "save_every": 1, "iterations": 3})
  real = evaluate.evaluate_distilled
  calls = []

  def killed_at_second(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise Interrupted  # after iteration 2's checkpoint, during its evaluation
    return real(*args, **kwargs)

  monkeypatch.setattr(evaluate, "evaluate_distilled", killed_at_second)
  with pytest.raises(Interrupted):
    loop.distill(distill_config)
  history = json.loads(open(os.path.join(distill_config.run_dir, "eval_history.json")).read())
  assert [e["iteration"] for e in history["evaluations"]] == [1]
  loop.distill(distill_config)
  history = json.loads(open(os.path.join(distill_config.run_dir, "eval_history.json")).read())
  assert [e["iteration"] for e in history["evaluations"]] == [1, 2, 3]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True,
                        text=True, timeout=300, check=False)


def test_quality_tool_reports_and_refuses_bad_flags_in_one_line(tmp_path):
  done = _tool("benchmark_quality.py", f"--workdir={tmp_path / 'w'}", f"--docs_dir={tmp_path / 'd'}",
               "--report_only", "--ipcs=1", "--modes=exact,tesla", "--seeds=3")
  assert done.returncode == 0, done.stderr
  assert "0 finished runs" in done.stdout
  assert "ipc1_exact_hard_seed3_" in (tmp_path / "d" / "quality.md").read_text()
  # A flag the tool parses itself; the config's own checks (the tool turns their ValueError into this
  # same usage line) in process.
  bad = _tool("benchmark_quality.py", f"--workdir={tmp_path / 'w'}", "--report_only", "--iterations=1:x")
  assert bad.returncode != 0 and "--iterations" in bad.stderr and "Traceback" not in bad.stderr
  for field, words in ((dict(labels=("bogus",)), "Unknown label variant 'bogus'"),
                       (dict(modes=("fast",)), "Unknown mode 'fast'")):
    with pytest.raises(ValueError, match=words):
      _tiny(tmp_path, **field)


"""The quality benchmark on real Fashion-MNIST: experts → distillation runs → evaluation → docs/quality.md.

Every stage caches its output in --workdir and is skipped when re-run, so the table can be built over
several sittings (interrupt it at any time; run the same command again to go on):

  python tools/benchmark_quality.py --workdir=$HOME/.cache/tesla_tf/quality
  python tools/benchmark_quality.py --workdir=... --ipcs=1 --labels=hard,teacher,teacher_mix0.5 --modes=tesla
  python tools/benchmark_quality.py --workdir=... --report_only    # rewrite docs/quality* from the cache
"""

import os

from absl import app, flags

from tesla_tf import cli
from tesla_tf.bench import quality
from tesla_tf.distill import labels, matching

_D = quality.QualityConfig(workdir="")
flags.DEFINE_string("workdir", os.path.expanduser("~/.cache/tesla_tf/quality"),
                    "Cache of every stage (keep it outside the checkout).")
flags.DEFINE_string("docs_dir", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                             "docs"), "Where quality.{md,json} and quality_curve.png go.")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the Debian package's).")
flags.DEFINE_integer("width", _D.width, "ConvNet width (experts, students, evaluation).", lower_bound=1)
flags.DEFINE_integer("num_experts", _D.num_experts, "Experts.", lower_bound=1)
flags.DEFINE_integer("train_epochs", _D.expert_epochs_trained, "Epochs per expert.", lower_bound=1)
flags.DEFINE_list("ipcs", [str(i) for i in _D.ipcs], f"IPCs, from {sorted(quality.IPC_SETTINGS)}.")
flags.DEFINE_list("modes", list(_D.modes), f"Gradient modes, from {list(matching.MODES)}.")
flags.DEFINE_list("labels", list(_D.labels), f"Label variants, from {list(labels.VARIANTS)}.")
flags.DEFINE_list("seeds", [str(s) for s in _D.seeds], "Distillation seeds.")
_OVERRIDES = ("iterations", "max_start_epoch", "syn_steps", "lr_img")
for _name in _OVERRIDES:
  flags.DEFINE_list(_name, [], f"Per-IPC {_name} as ipc:value pairs (default: "
                    + ", ".join(f"{k}:{v[_name]}" for k, v in quality.IPC_SETTINGS.items()) + ").")
flags.DEFINE_integer("eval_every", _D.eval_every, "Evaluate every this many iterations.", lower_bound=1)
flags.DEFINE_integer("num_eval", _D.num_eval, "Networks per evaluation.", lower_bound=1)
flags.DEFINE_integer("eval_epochs", _D.eval_epochs, "Epochs of each evaluation.", lower_bound=1)
flags.DEFINE_bool("report_only", False, "Only rewrite the report from the cached stages.")
FLAGS = flags.FLAGS


def _ints(values, flag):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{flag}: expected integers, got {','.join(values)}.") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  settings = {ipc: dict(s) for ipc, s in quality.IPC_SETTINGS.items()}
  for name in _OVERRIDES:
    try:
      for ipc, value in (item.split(":") for item in FLAGS[name].value):
        settings[int(ipc)][name] = type(settings[int(ipc)][name])(value)
    except (ValueError, KeyError):
      raise app.UsageError(f"--{name}: expected ipc:value pairs with ipc in {sorted(settings)}, got "
                           f"{','.join(FLAGS[name].value)}.") from None
  try:
    config = quality.QualityConfig(
        workdir=FLAGS.workdir, docs_dir=FLAGS.docs_dir, data_dir=FLAGS.data_dir, width=FLAGS.width,
        num_experts=FLAGS.num_experts, expert_epochs_trained=FLAGS.train_epochs,
        ipcs=_ints(FLAGS.ipcs, "ipcs"), modes=tuple(FLAGS.modes), labels=tuple(FLAGS.labels),
        seeds=_ints(FLAGS.seeds, "seeds"), ipc_settings=settings, eval_every=FLAGS.eval_every,
        num_eval=FLAGS.num_eval, eval_epochs=FLAGS.eval_epochs, run_stages=not FLAGS.report_only)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  records = quality.run(config)
  print(f"{len(records)} finished runs; report in {os.path.join(config.docs_dir, 'quality.md')}")


if __name__ == "__main__":
  cli.run(main)

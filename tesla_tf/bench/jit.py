"""Does XLA (`jit_compile`) speed up expert training or evaluation on this machine? Seconds per epoch, both
ways (tools/benchmark_jit.py; quoted in docs/quality.md).

Expert training: the expert recipe (`experts.TrainStep`, DSA input pipeline) on the Fashion-MNIST
train set minus its validation split, compiled with jit_compile False and True; epoch 1 (tracing) is
reported apart from the others. Evaluation: one `evaluate.Trainer` epoch function on a set of n images
(IPC 1 and 10 sizes), plain and XLA-compiled. The two variants run one after the other in this process,
so the ratios are from one machine at one time.
"""

import dataclasses
import tempfile
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from tesla_tf import bench
from tesla_tf import errors
from tesla_tf import evaluate
from tesla_tf import experts
from tesla_tf import files
from tesla_tf.data import pipeline


@dataclasses.dataclass(frozen=True)
class JitConfig:
  """What tools/benchmark_jit.py runs (its flags, same names and defaults).

  Attributes:
    width: ConvNet width.
    expert_epochs: expert epochs per variant (0 = skip experts).
    max_train_examples: expert train subset (None = all of the train set minus validation).
    eval_sizes: distilled-set sizes n of the evaluation epochs.
    eval_epochs: timed evaluation epochs per variant.
    precision: the expert's and the evaluation networks' layers (a key of models.PRECISIONS).
    jit_compile: the variants measured, in order (False = plain tf.function, True = XLA).
    out: json file for the results (None = print only).
  """
  width: int = 32
  expert_epochs: int = 3
  max_train_examples: Optional[int] = None
  eval_sizes: tuple = (10, 100)
  eval_epochs: int = 50
  precision: str = "float32"
  jit_compile: tuple = (False, True)
  out: Optional[str] = None

  def __post_init__(self):
    object.__setattr__(self, "eval_sizes", bench.int_tuple(self.eval_sizes, "eval_sizes"))
    object.__setattr__(self, "jit_compile", tuple(self.jit_compile))
    if not self.jit_compile or not all(isinstance(v, bool) for v in self.jit_compile):
      raise errors.UsageError(f"--jit_compile: expected some of false, true; got {self.jit_compile!r}.")


def expert_seconds(config, jit, store_dir):
  """Seconds of every epoch of one expert trained with the recipe (experts.TrainStep), jit_compile=jit."""
  expert_config = experts.ExpertConfig(dataset="fashion_mnist", store_dir=store_dir,
                                       model_kwargs={"width": config.width}, epochs=config.expert_epochs,
                                       max_train_examples=config.max_train_examples,
                                       precision=config.precision)
  _, data = experts.open_store(expert_config)
  train = pipeline.train_pipeline(data.train, data.preprocessor, expert_config.batch_size, seed=0)
  step = experts.TrainStep(experts.build_expert(expert_config, 0), learning_rate=expert_config.lr_teacher,
                           global_batch_size=expert_config.batch_size, jit_compile=jit)
  seconds = []
  for _ in range(expert_config.epochs):
    start = time.time()
    step.run(train)
    seconds.append(time.time() - start)
  return seconds


def _trainer(config, n, jit):
  return evaluate.Trainer("convnet", {"width": config.width}, 10, (28, 28, 1), n,
                          evaluate.EvalConfig(precision=config.precision), jit_compile=jit)


def eval_seconds(config, jit, n):
  """Mean seconds of an evaluation epoch on n images after one untimed (tracing) epoch."""
  trainer = _trainer(config, n, jit)
  images = tf.random.stateless_normal([n, 28, 28, 1], seed=[0, 0])
  labels = tf.one_hot(np.arange(n) % 10, 10)
  trainer.reset(0)
  trainer.train_epoch(images, labels, 0, 0, 0.01)
  start = time.time()
  for epoch in range(1, config.eval_epochs + 1):
    trainer.train_epoch(images, labels, epoch, 0, 0.01)
  return (time.time() - start) / config.eval_epochs


def run(config):
  """Both variants of every measurement, printed as measured; writes config.out; returns the results."""
  results = {"width": config.width, "precision": config.precision, "expert": {}, "evaluation": {}}
  for jit in config.jit_compile:
    if config.expert_epochs:
      with tempfile.TemporaryDirectory() as store_dir:
        seconds = expert_seconds(config, jit, store_dir)
      results["expert"][f"jit_compile={jit}"] = {"first_epoch_s": seconds[0], "epoch_s": seconds[1:]}
      print(f"expert jit_compile={jit}: first epoch {seconds[0]:.1f} s, then "
            + ", ".join(f"{s:.1f}" for s in seconds[1:]) + " s")
    for n in config.eval_sizes:
      seconds = eval_seconds(config, jit, n)
      results["evaluation"][f"n={n} jit_compile={jit}"] = seconds
      print(f"evaluation n={n} jit_compile={jit}: {1000 * seconds:.1f} ms/epoch")
  if config.out:
    files.write_json(config.out, results, indent=1)
  return results

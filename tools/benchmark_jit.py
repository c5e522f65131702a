"""Does XLA (`jit_compile`) speed up expert training or evaluation on this machine? Seconds per epoch, both ways.

  python tools/benchmark_jit.py --width=32 --expert_epochs=3 --eval_sizes=10,100

Expert training: the Keras expert recipe (`experts.build_expert`, DSA input pipeline) on the Fashion-MNIST
train set minus its validation split, compiled with jit_compile False and True; epoch 1 (tracing) is
reported apart from the mean of the others. Evaluation: one `evaluate.Trainer` epoch function on a set
of n images (IPC 1 and 10 sizes), plain and XLA-compiled. The two variants run one after the other in
this process, so the ratios are from one machine at one time; results go to stdout and --out (json).
"""

import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
import keras
import numpy as np
import tensorflow as tf

from tesla_tf import evaluate, experts
from tesla_tf.data import pipeline
# pylint: enable=wrong-import-position

flags.DEFINE_integer("width", 32, "ConvNet width.", lower_bound=1)
flags.DEFINE_integer("expert_epochs", 3, "Expert epochs per variant (0 = skip experts).", lower_bound=0)
flags.DEFINE_integer("max_train_examples", None, "Expert train subset (default: all of the rest).")
flags.DEFINE_list("eval_sizes", ["10", "100"], "Distilled-set sizes n for the evaluation epochs.")
flags.DEFINE_integer("eval_epochs", 50, "Timed evaluation epochs per variant.", lower_bound=1)
flags.DEFINE_string("out", None, "json file for the results.")
FLAGS = flags.FLAGS


def expert_seconds(jit, store_dir):
  """Seconds of every epoch of one expert fit with the recipe, compiled with jit_compile=jit."""
  config = experts.ExpertConfig(dataset="fashion_mnist", store_dir=store_dir, model_kwargs={"width": FLAGS.width},
                                epochs=FLAGS.expert_epochs, max_train_examples=FLAGS.max_train_examples)
  _, data = experts.open_store(config)
  train = pipeline.train_pipeline(data.train, data.preprocessor, config.batch_size, seed=0)
  model = experts.build_expert(config, 0)
  model.compile(optimizer=keras.optimizers.SGD(config.lr_teacher), jit_compile=jit,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  seconds = []
  for _ in range(config.epochs):
    start = time.time()
    model.fit(train, epochs=1, verbose=0)
    seconds.append(time.time() - start)
  return seconds


def eval_seconds(jit, n):
  """Mean seconds of an evaluation epoch on n images after one untimed (tracing) epoch."""
  trainer = evaluate.Trainer("convnet", {"width": FLAGS.width}, 10, (28, 28, 1), n, evaluate.EvalConfig())
  if jit:
    trainer._epoch = tf.function(trainer._epoch_fn, jit_compile=True)  # pylint: disable=protected-access
  images = tf.random.stateless_normal([n, 28, 28, 1], seed=[0, 0])
  labels = tf.one_hot(np.arange(n) % 10, 10)
  trainer.reset(0)
  trainer.train_epoch(images, labels, 0, 0, 0.01)
  start = time.time()
  for epoch in range(1, FLAGS.eval_epochs + 1):
    trainer.train_epoch(images, labels, epoch, 0, 0.01)
  return (time.time() - start) / FLAGS.eval_epochs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  results = {"width": FLAGS.width, "expert": {}, "evaluation": {}}
  for jit in (False, True):
    if FLAGS.expert_epochs:
      with tempfile.TemporaryDirectory() as store_dir:
        seconds = expert_seconds(jit, store_dir)
      results["expert"][f"jit_compile={jit}"] = {"first_epoch_s": seconds[0], "epoch_s": seconds[1:]}
      print(f"expert jit_compile={jit}: first epoch {seconds[0]:.1f} s, then "
            + ", ".join(f"{s:.1f}" for s in seconds[1:]) + " s")
    for n in (int(v) for v in FLAGS.eval_sizes):
      seconds = eval_seconds(jit, n)
      results["evaluation"][f"n={n} jit_compile={jit}"] = seconds
      print(f"evaluation n={n} jit_compile={jit}: {1000 * seconds:.1f} ms/epoch")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)

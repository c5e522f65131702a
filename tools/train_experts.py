"""Trains expert trajectories (REFERENCE §1) into a trajectory store.

  python tools/train_experts.py --flagfile=configs/experts_cifar10.cfg --store_dir=/data/experts/cifar10
Several processes (or GPUs) fill one store with disjoint ranges, e.g. --expert_start=0 --num_experts=50
and --expert_start=50 --num_experts=50. A rerun skips finished experts and redoes an interrupted one.
One large expert trains on several machines with --strategy=multi_worker: every worker runs the same
command with its own TF_CONFIG (docs/experts_benchmark.md, "Multi-worker experts").
"""

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf import errors
from tesla_tf import augment
from tesla_tf import experts
from tesla_tf import models
from tesla_tf import multi_worker
from tesla_tf.data import preprocess
from tesla_tf.data import sources

# data
flags.DEFINE_string("dataset", None, f"Dataset to train the experts on: {sources.NAMES_HELP}.")
flags.DEFINE_string("data_dir", None, "Where the dataset is (default: the loader's standard places).")
flags.DEFINE_integer("image_size", None, "folder / tfds: datasets: resize every image to this side × side "
                     "(needed when their sizes differ or are not square). The ConvNet's depth follows it.",
                     lower_bound=1)
flags.DEFINE_string("image_key", None, "tfds: datasets: the image feature (default 'image').")
flags.DEFINE_string("label_key", None, "tfds: datasets: the ClassLabel feature (default 'label').")
flags.DEFINE_string("train_split", None, "tfds: datasets: the split to train on (default 'train').")
flags.DEFINE_string("test_split", None, "tfds: datasets: the split to test on (default the first of test, "
                    "validation, val, valid it has).")
flags.DEFINE_enum("preprocessing", "normalize", sorted(preprocess.PREPROCESSORS),
                  "Per-channel normalisation, or ZCA whitening fitted once per store on the train set.")
flags.DEFINE_integer("max_train_examples", None, "Train on a seeded random subset of this size "
                     "(demos and tests; default: the whole train set).", lower_bound=1)
flags.DEFINE_integer("max_test_examples", None, "Evaluate on a seeded random subset of the test set of "
                     "this size (demos and tests; default: the whole test set).", lower_bound=1)
flags.DEFINE_integer("validation_size", None, "Train examples held out of the experts for validation "
                     "(class-balanced, seeded by --seed; distillation and evaluation select on them). "
                     "Default: the dataset's (5,000 for Fashion-MNIST/CIFAR); 0 = none.", lower_bound=0)
flags.DEFINE_string("data_service", None, "tf.data service dispatcher grpc://host:port to read the "
                    "input from (start it with tools/data_service.py); default: read data here.")
# model
flags.DEFINE_enum("model", "convnet", sorted(models.ARCHITECTURES), "Expert architecture.")
flags.DEFINE_integer("width", 128, "ConvNet channels per block.", lower_bound=1)
flags.DEFINE_integer("depth", 0, "ConvNet blocks; 0 = from the image size (3 for 32 px, 4 for 64 px).",
                     lower_bound=0)
# training
flags.DEFINE_integer("num_experts", 100, "Experts trained by this process.", lower_bound=1)
flags.DEFINE_integer("expert_start", 0, "Index of this process's first expert.", lower_bound=0)
flags.DEFINE_integer("train_epochs", 50, "Epochs per expert (E); trajectories have E+1 snapshots.",
                     lower_bound=1)
flags.DEFINE_float("lr_teacher", 0.01, "Expert SGD learning rate (momentum 0, no weight decay).",
                   lower_bound=0.0)
flags.DEFINE_integer("batch_train", 256, "Expert batch size.", lower_bound=1)
flags.DEFINE_string("dsa_strategy", augment.STRATEGY, "DSA families joined by '_', or 'none'.")
flags.DEFINE_enum("precision", "float32", list(models.PRECISIONS), "The experts' layers: float32, or "
                  "bfloat16 (mixed precision: variables, gradients, updates and the stored trajectory stay "
                  "float32).")
flags.DEFINE_enum("strategy", "none", sorted(multi_worker.STRATEGIES),
                  "'none': train here. 'multi_worker': MultiWorkerMirroredStrategy over the cluster in the "
                  "TF_CONFIG environment variable; every worker runs the same command (its own TF_CONFIG "
                  "task), --batch_train is the global batch, and only the chief (task 0) writes the store.")
flags.DEFINE_integer("seed", 0, "Base seed; expert i's init and data order derive from (seed, i).")
flags.DEFINE_integer("verbose", 1, "Progress: 0 silent, 1 or 2 one log line per epoch.",
                     lower_bound=0, upper_bound=2)
# io
flags.DEFINE_string("store_dir", None, "Trajectory store directory (created if missing).")
flags.mark_flag_as_required("dataset")
flags.mark_flag_as_required("store_dir")
FLAGS = flags.FLAGS


flags.register_validator("dataset", lambda name: name is None or sources.is_name(name),
                         f"--dataset: one of {sources.NAMES_HELP}.")
flags.register_validator("dsa_strategy", augment.is_strategy,
                         "--dsa_strategy: families from " + ", ".join(augment.FAMILIES) + " joined by '_', or 'none'.")


def _model_kwargs(model, width, depth):
  """width/depth for the ConvNet family; the classic architectures take neither."""
  if not model.startswith("convnet"):
    return {}
  return {"width": width, **({"depth": depth} if depth else {})}


def config_from_flags():
  """The ExpertConfig described by the parsed flags."""
  if not FLAGS.model.startswith("convnet") and (FLAGS["width"].present or FLAGS["depth"].present):
    raise app.UsageError(f"--width/--depth apply to the ConvNet family only, not --model={FLAGS.model}.")
  fixed_depth = FLAGS.model[len("convnet_d"):] if FLAGS.model.startswith("convnet_d") else ""
  if fixed_depth and FLAGS.depth not in (0, int(fixed_depth)):
    raise app.UsageError(f"--model={FLAGS.model} fixes the depth; --depth={FLAGS.depth} contradicts it.")
  return experts.ExpertConfig(
      dataset=FLAGS.dataset, store_dir=FLAGS.store_dir, data_dir=FLAGS.data_dir, model=FLAGS.model,
      model_kwargs=_model_kwargs(FLAGS.model, FLAGS.width, FLAGS.depth),
      preprocessing=FLAGS.preprocessing, num_experts=FLAGS.num_experts, expert_start=FLAGS.expert_start,
      epochs=FLAGS.train_epochs, lr_teacher=FLAGS.lr_teacher, batch_size=FLAGS.batch_train,
      dsa_strategy=FLAGS.dsa_strategy, seed=FLAGS.seed, data_service=FLAGS.data_service,
      max_train_examples=FLAGS.max_train_examples, max_test_examples=FLAGS.max_test_examples,
      validation_size=FLAGS.validation_size, verbose=FLAGS.verbose, strategy=FLAGS.strategy,
      precision=FLAGS.precision,
      **{name: FLAGS[name].value for name in sources.OPTIONS})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    config = config_from_flags()
  except errors.TeslaError:
    raise
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  store = experts.train_experts(config)
  if store is None:
    print(f"Worker done; the chief wrote the experts to {config.store_dir}.")
  else:
    print(f"{store.path}: {len(store)} finished experts {store.finished()}")


def run():
  """Console script tesla-train-experts."""
  cli.run(main)


if __name__ == "__main__":
  run()

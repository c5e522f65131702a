"""Export a distilled set as TFRecord shards + metadata.json (readable by tfds.builder_from_directory).

  python tools/export.py --source=RUN_DIR --out_dir=DIR     # a run's distilled/ export, copied to DIR
  python tools/export.py --source=EXPORT_DIR --shard_size=100  # re-shard an export in place

--source is an export directory (holding metadata.json) or a run directory (holding distilled/, which a
distillation run writes). ZCA matrices are read from the source's export unless --preprocessing_dir
says otherwise.
"""

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf.data import distilled

flags.DEFINE_string("source", None, "The distilled set: an export directory (holding metadata.json) or a "
                    "run directory (holding distilled/).")
flags.DEFINE_string("out_dir", "", "Export directory (default: the source's own export, rewritten in place).")
flags.DEFINE_string("preprocessing_dir", "", "Directory holding the preprocessing files (zca.npz), "
                    "default: the source's export.")
flags.DEFINE_integer("shard_size", distilled.SHARD_SIZE, "Maximum examples per TFRecord shard.",
                     lower_bound=1)
flags.mark_flag_as_required("source")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out_dir, metadata = distilled.export_from(FLAGS.source, FLAGS.out_dir or None,
                                            preprocessing_dir=FLAGS.preprocessing_dir or None,
                                            shard_size=FLAGS.shard_size)
  print(f"Exported {metadata['num_examples']} examples ({metadata['dataset']}, {metadata['ipc']} per class, "
        f"{len(metadata['shards'])} shards, lr {metadata['lr']:.6g}) to {out_dir}")


def run():
  """Console script tesla-export."""
  cli.run(main)


if __name__ == "__main__":
  run()

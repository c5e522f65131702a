"""Prepares ImageNet-1K as 64x64 TFRecord shards (box-resized whole images, sorted-WNID labels).

  python tools/prepare_imagenet.py --source=folder --source_dir=/data/ILSVRC --out_dir=/data/imagenet64
  python tools/prepare_imagenet.py --source=tfds --tfds_data_dir=/data/tfds --out_dir=/data/imagenet64
Many CPUs decode through the tf.data service (workers must see the source files at the same paths):
  python tools/data_service.py --role=dispatcher --port=5050      # then workers, see that tool
  python tools/prepare_imagenet.py ... --data_service=grpc://HOST:5050
A rerun resumes: finished shards (checked by sha256) are kept, the rest redone. Then train on the output
with --dataset=imagenet64 --data_dir=/data/imagenet64. Layout and conventions: tesla_tf/data/imagenet.py.
"""

from absl import app
from absl import flags

from tesla_tf import cli
from tesla_tf.data import imagenet

# data
flags.DEFINE_enum("source", "folder", list(imagenet.SOURCES),
                  "folder: <source_dir>/{train,val}/<wnid>/*.JPEG; tfds: TFDS imagenet2012 (prepared, or "
                  "its manual dir holding the ILSVRC2012 tars; never downloaded).")
flags.DEFINE_string("source_dir", "", "ILSVRC root for --source=folder (val sorted into WNID folders).")
flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir for --source=tfds (default: TFDS's default).")
flags.DEFINE_list("split", list(imagenet.SPLITS),
                  f"Splits to prepare, among {', '.join(imagenet.SPLITS)}.")
# shards
flags.DEFINE_integer("examples_per_shard", 1281, "At most this many examples per shard (1281: ~1000 "
                     "train shards).", lower_bound=1)
flags.DEFINE_integer("image_size", 64, "Output height = width in pixels.", lower_bound=1)
flags.DEFINE_integer("shards_per_job", 16, "Shards decoded by one pipeline (one tf.data service job).",
                     lower_bound=1)
# decoding
flags.DEFINE_string("data_service", "", "tf.data service dispatcher grpc://host:port whose workers "
                    "decode (start it with tools/data_service.py); default: decode here.")
flags.DEFINE_integer("num_parallel_calls", -1, "Parallel decodes per pipeline; -1 = autotune.",
                     lower_bound=-1)
# io
flags.DEFINE_string("out_dir", None, "Output directory (a rerun resumes it).")
flags.mark_flag_as_required("out_dir")
flags.register_validator("split", lambda v: bool(v) and set(v) <= set(imagenet.SPLITS),
                         f"--split must list splits among {', '.join(imagenet.SPLITS)}.")
flags.register_validator("num_parallel_calls", lambda v: v != 0, "--num_parallel_calls must be -1 or >= 1.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = imagenet.PrepareConfig(
      out_dir=FLAGS.out_dir, source=FLAGS.source, source_dir=FLAGS.source_dir,
      tfds_data_dir=FLAGS.tfds_data_dir, splits=tuple(dict.fromkeys(FLAGS.split)),
      examples_per_shard=FLAGS.examples_per_shard, image_size=FLAGS.image_size,
      data_service=FLAGS.data_service, num_parallel_calls=FLAGS.num_parallel_calls,
      shards_per_job=FLAGS.shards_per_job)
  manifest = imagenet.prepare(config)
  counts = ", ".join(f"{s} {e['num_examples']} examples in {e['num_shards']} shards"
                     for s, e in manifest["splits"].items())
  print(f"Prepared {manifest['num_classes']} classes at {manifest['image_size']} px in {FLAGS.out_dir}: "
        f"{counts}")


if __name__ == "__main__":
  cli.run(main)

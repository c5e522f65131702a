"""Your own data: an image folder (`--dataset=folder`) and any TFDS dataset (`--dataset=tfds:<name>`),
from the tools and from the library, with the errors a user meets on a bad folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tesla_tf import errors, experts
from tesla_tf.data import distilled, sources
from tesla_tf.distill import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "emu")


def write_png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_png(image))


def make_folder(root, sizes=((20, 20),), channels=3, per_class=(("train", 6), ("test", 2)), seed=0):
  """root/{split}/{class}/{i}.png; class k's images are around grey level 70·k; image i has size
  sizes[i % len(sizes)]. Returns {path: image}."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, n in per_class:
    for k, name in enumerate(CLASSES):
      for i in range(n):
        shape = sizes[i % len(sizes)] + (channels,)
        image = (70 * k + rng.integers(0, 50, shape)).astype(np.uint8)
        path = os.path.join(root, split, name, f"{i:02d}.png")
        write_png(path, image)
        written[path] = image
  return written


def run_tool(name, *args, cwd=None):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *args],
                        capture_output=True, text=True, timeout=600, cwd=cwd)
  return proc.returncode, proc.stdout, proc.stderr


def test_folder_info_and_statistics(tmp_path):
  written = make_folder(str(tmp_path), channels=1)
  info = sources.get_info("folder", str(tmp_path))
  assert (info.num_classes, info.image_shape, info.class_names) == (3, (20, 20, 1), CLASSES)
  assert not info.resize and info.data_options == {}
  x, y = sources.load_numpy(info, "train", str(tmp_path))
  assert x.shape == (18, 20, 20, 1) and list(y) == [0] * 6 + [1] * 6 + [2] * 6
  train = np.stack([im for p, im in sorted(written.items()) if f"{os.sep}train{os.sep}" in p])
  np.testing.assert_array_equal(x, train)  # sorted class, then file order
  mean, std = sources.statistics(info, str(tmp_path))
  np.testing.assert_allclose(mean, [train.mean() / 255], rtol=1e-9)
  np.testing.assert_allclose(std, [train.std() / 255], rtol=1e-9)
  # A new train file is another copy of the data: the class index cache must not be reused.
  before = sources.fingerprint(info, str(tmp_path))
  assert sources.fingerprint(info, str(tmp_path)) == before
  write_png(str(tmp_path / "train" / "dog" / "99.png"), train[0])
  assert sources.fingerprint(info, str(tmp_path)) != before


def test_folder_resize_averages_blocks(tmp_path):
  """image_size=8 of 16×16 images made of 2×2 blocks gives the block values exactly (area average);
  a val/ folder serves as the test split."""
  rng = np.random.default_rng(1)
  blocks = {}
  for split in ("train", "val"):
    for name in CLASSES:
      small = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
      write_png(str(tmp_path / split / name / "a.png"), np.repeat(np.repeat(small, 2, 0), 2, 1))
      write_png(str(tmp_path / split / name / "b.png"), rng.integers(0, 256, (12, 30, 3)).astype(np.uint8))
      blocks[split, name] = small
  info = sources.get_info("folder", str(tmp_path), image_size=8)
  assert info.image_shape == (8, 8, 3) and info.resize and info.data_options == {"image_size": 8}
  x, y = sources.load_numpy(info, "test", str(tmp_path))
  assert x.shape == (6, 8, 8, 3) and list(y) == [0, 0, 1, 1, 2, 2]
  for k, name in enumerate(CLASSES):
    np.testing.assert_array_equal(x[2 * k], blocks["val", name])


def test_folder_end_to_end_through_the_tools(tmp_path):
  """Mixed-size PNGs with --image_size: experts → distil (2 iterations) → evaluate → export → TFDS
  read-back; only the experts' tool is told how to read the data."""
  data = str(tmp_path / "data")
  make_folder(data, sizes=((20, 20), (24, 18)), per_class=(("train", 10), ("test", 2)))
  store, run, export = (str(tmp_path / d) for d in ("store", "run", "export"))
  code, _, err = run_tool("train_experts", "--dataset=folder", f"--data_dir={data}", "--image_size=16",
                          f"--store_dir={store}", "--num_experts=1", "--train_epochs=2", "--batch_train=8",
                          "--width=8", "--verbose=0")
  assert code == 0, err
  manifest = json.load(open(os.path.join(store, "manifest.json")))
  assert manifest["dataset"] == "folder" and manifest["image_shape"] == [16, 16, 3]
  assert manifest["class_names"] == list(CLASSES) and manifest["data_options"] == {"image_size": 16}
  assert manifest["preprocessing"]["kind"] == "normalize" and len(manifest["preprocessing"]["mean"]) == 3
  code, _, err = run_tool("distill", "--dataset=folder", f"--data_dir={data}", f"--store_dir={store}",
                          f"--run_dir={run}", "--ipc=2", "--syn_steps=2", "--expert_epochs=1",
                          "--max_start_epoch=1", "--iterations=2")
  assert code == 0, err
  code, out, err = run_tool("evaluate", f"--run_dir={run}", f"--data_dir={data}", "--num_eval=1", "--epochs=2")
  assert code == 0, err
  results = json.load(open(os.path.join(run, "eval.json")))  # the real test split, read at 16 px
  assert set(results["distilled"]) == set(results["random_subset"]) == {"convnet"}
  assert results["distilled"]["convnet"]["runs"][0]["test_accuracy"] is not None
  code, out, err = run_tool("export", f"--source={run}", f"--out_dir={export}")
  assert code == 0, err
  builder = tfds.builder_from_directory(export)
  assert builder.info.features["label"].names == list(CLASSES)
  examples = list(builder.as_dataset(split="train").as_numpy_iterator())
  assert len(examples) == 6 and examples[0]["image"].shape == (16, 16, 3)
  assert sorted(int(e["label"]) for e in examples) == [0, 0, 1, 1, 2, 2]
  _, metadata = distilled.load(export)
  assert metadata["class_names"] == list(CLASSES) and metadata["data_options"] == {"image_size": 16}


def _bad_truncated(root):
  path = os.path.join(root, "train", "dog", "01.png")
  with open(path, "r+b") as f:
    f.truncate(70)
  return path, "not a readable image"


def _bad_not_an_image(root):
  path = os.path.join(root, "train", "emu", "00.png")
  with open(path, "w") as f:
    f.write("no pixels here")
  return path, "is not an image file"


def _bad_empty_class(root):
  path = os.path.join(root, "train", "emu")
  for name in os.listdir(path):
    os.remove(os.path.join(path, name))
  return path, "no .png/.jpg/.jpeg images"


def _bad_test_only_class(root):
  path = os.path.join(root, "test", "yak")
  write_png(os.path.join(path, "00.png"), np.zeros((20, 20, 3), np.uint8))
  return path, "is not a class folder of"


def _bad_mixed_sizes(root):
  path = os.path.join(root, "train", "cat", "03.png")
  write_png(path, np.zeros((22, 20, 3), np.uint8))
  return path, "pass --image_size"


def _bad_not_square(root):
  for path in (os.path.join(dirpath, f) for dirpath, _, fs in os.walk(root) for f in fs):
    write_png(path, np.zeros((20, 12, 3), np.uint8))
  return "--dataset=folder", "not one square size; pass --image_size"


def _bad_no_train(root):
  os.rename(os.path.join(root, "train"), os.path.join(root, "training"))
  return os.path.join(root, "train"), "not found"


BREAKAGES = [_bad_truncated, _bad_not_an_image, _bad_empty_class, _bad_test_only_class, _bad_mixed_sizes,
             _bad_not_square, _bad_no_train]


@pytest.mark.parametrize("break_it", BREAKAGES, ids=lambda f: f.__name__[5:])
def test_bad_folder_is_refused_naming_the_path(tmp_path, break_it):
  """What the experts' store creation reads first: the folder's layout, then every image of both splits
  (sources.statistics). A project error (one FATAL line from a tool), never TF's own."""
  data = str(tmp_path / "data")
  make_folder(data, per_class=(("train", 4), ("test", 1)))
  named, expected = break_it(data)
  with pytest.raises(errors.TeslaError) as caught:
    sources.statistics(sources.get_info("folder", data), data)
  message = str(caught.value)
  assert named in message and expected in message and "\n" not in message, message


def test_bad_folder_through_the_tool_is_one_fatal_line(tmp_path):
  data = str(tmp_path / "data")
  make_folder(data, per_class=(("train", 4), ("test", 1)))
  named, expected = _bad_truncated(data)
  code, _, err = run_tool("train_experts", "--dataset=folder", f"--data_dir={data}",
                          f"--store_dir={tmp_path / 'store'}", "--num_experts=1", "--train_epochs=1",
                          "--batch_train=4", "--width=8", "--verbose=0")
  fatal = [line for line in err.splitlines() if line.startswith("FATAL")]
  assert code == 1 and len(fatal) == 1 and "Traceback" not in err, err
  assert named in fatal[0] and expected in fatal[0], fatal[0]
  assert not os.path.exists(tmp_path / "store" / "manifest.json")  # refused before the store is made


def test_folder_needs_data_dir_and_options_belong_to_tfds():
  with pytest.raises(ValueError, match="--dataset=folder needs --data_dir"):
    sources.get_info("folder")
  with pytest.raises(ValueError, match="--image_key is for --dataset=tfds"):
    sources.get_info("folder", "/tmp", image_key="picture")
  with pytest.raises(ValueError, match="native size"):
    sources.get_info("fashion_mnist", image_size=32)
  assert sources.get_info("fashion_mnist", image_size=28) is sources.DATASETS["fashion_mnist"]
  assert sources.is_name("tfds:svhn_cropped:3.0.0") and not sources.is_name("tfds:")


class LeafShapes(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset outside our registry: non-square images under "picture", labels under "kind",
  splits named "fit" and "check"."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "picture": tfds.features.Image(shape=(10, 14, 3)),
        "kind": tfds.features.ClassLabel(names=["oak", "elm", "ash"])}))

  def _split_generators(self, dl_manager):
    raise AssertionError("the test never prepares it")

  def _generate_examples(self):
    raise AssertionError("the test never prepares it")


@pytest.fixture
def leaf_shapes(tmp_path):
  """Metadata of a prepared leaf_shapes in a TFDS data dir; examples come from tfds.testing.mock_data."""
  data_dir = str(tmp_path / "tfds")
  builder = LeafShapes(data_dir=data_dir)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0) for name, n in (("fit", 60), ("check", 12))]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir):
    yield data_dir


def test_tfds_dataset_outside_the_registry(tmp_path, leaf_shapes):
  name = "tfds:leaf_shapes:1.0.0"
  keys = {"image_key": "picture", "label_key": "kind"}
  with pytest.raises(ValueError, match=r"--train_split=train: .* has the splits fit, check"):
    sources.get_info(name, leaf_shapes, image_size=8, **keys)
  with pytest.raises(ValueError, match=r"--image_key=image: .* features are kind, picture"):
    sources.get_info(name, leaf_shapes, train_split="fit", test_split="check")
  with pytest.raises(ValueError, match="10×14, not one square size"):
    sources.get_info(name, leaf_shapes, train_split="fit", test_split="check", **keys)
  with pytest.raises(FileNotFoundError, match="no_such_leaves.*none is prepared there.*tfds build"):
    sources.get_info("tfds:no_such_leaves", leaf_shapes)

  config = experts.ExpertConfig(dataset=name, data_dir=leaf_shapes, store_dir=str(tmp_path / "store"),
                                image_size=8, train_split="fit", test_split="check", validation_size=0,
                                num_experts=1, epochs=2, batch_size=4, model_kwargs={"width": 8}, verbose=0,
                                **keys)
  assert config.info.class_names == ("oak", "elm", "ash") and config.info.image_shape == (8, 8, 3)
  store = experts.train_experts(config)
  assert store.manifest.class_names == ["oak", "elm", "ash"]
  assert store.manifest.data_options == {"image_key": "picture", "image_size": 8, "label_key": "kind",
                                         "test_split": "check", "train_split": "fit"}
  run = str(tmp_path / "run")
  loop.distill(loop.DistillConfig(dataset=name, data_dir=leaf_shapes, store_dir=store.path, run_dir=run,
                                  ipc=1, syn_steps=2, expert_epochs=1, max_start_epoch=1, iterations=2, lr_img=10))
  distilled_set = distilled.load_set(os.path.join(run, "distilled"))
  assert distilled_set.images.shape == (3, 8, 8, 3) and distilled_set.class_names == ["oak", "elm", "ash"]
  assert distilled_set.data_options == store.manifest.data_options

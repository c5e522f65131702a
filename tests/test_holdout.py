"""The validation split: class-balanced, seeded, and never seen by experts, the initialisation or the
random-subset baseline."""

import dataclasses
import numpy as np
import pytest

from tesla_tf import store as store_lib
from tesla_tf import evaluate, experts
from tesla_tf.data import class_index, holdout, sources
from tesla_tf.distill import loop

N, CLASSES = 3000, 10


def _index(labels):
  return class_index.build_class_index(labels, CLASSES)


def test_split_is_class_balanced_seeded_and_partitions_the_train_set():
  labels = np.random.default_rng(0).integers(0, CLASSES, 5000)
  index = _index(labels)
  rest, validation = holdout.Holdout(500, seed=3).split(index)
  assert np.bincount(labels[validation], minlength=CLASSES).tolist() == [50] * CLASSES
  assert len(np.unique(validation)) == 500
  kept = holdout.positions_of(rest)
  assert np.intersect1d(kept, validation).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([kept, validation])), np.arange(5000))
  for c in range(CLASSES):  # the rest is still a class index: class c's positions, ascending
    assert np.all(labels[rest[c]] == c) and np.all(np.diff(rest[c]) > 0)
  again, validation_again = holdout.Holdout(500, seed=3).split(index)
  np.testing.assert_array_equal(validation, validation_again)
  _, other = holdout.Holdout(500, seed=4).split(index)
  assert not np.array_equal(np.sort(validation), np.sort(other))
  same, none = holdout.Holdout(0).split(index)
  assert same is index and none.size == 0


@pytest.mark.parametrize("size, match", [(55, "multiple of the 10 classes"), (5000, "has only")])
def test_bad_sizes_are_refused_naming_the_flag(size, match):
  index = _index(np.arange(200) % CLASSES)
  with pytest.raises(ValueError, match="--validation_size.*" + match):
    holdout.Holdout(size).split(index)


def test_defaults_come_from_the_dataset_and_old_stores_hold_nothing_out():
  assert holdout.for_dataset("fashion_mnist") == holdout.Holdout(5000, 0)
  assert holdout.for_dataset("imagenet64", seed=2) == holdout.Holdout(10000, 2)
  assert holdout.for_dataset("cifar10", size=0).size == 0
  required = ("dataset", "model", "model_kwargs", "num_params", "layout", "preprocessing", "epochs",
              "lr_teacher")
  old = store_lib.Manifest.from_dict({"format": store_lib.FORMAT, **{k: 0 for k in required}}, "m.json")
  assert holdout.Holdout(**old.holdout) == holdout.Holdout(0)


def _position_images():
  """N uint8 28×28 images whose first two pixels spell their own position; label = position mod 10."""
  positions = np.arange(N)
  images = np.zeros((N, 28, 28, 1), np.uint8)
  images[:, 0, 0, 0], images[:, 0, 1, 0] = positions % 256, positions // 256
  images[:, 5:, 5:, 0] = (positions % 7 * 30)[:, None, None]
  return images, (positions % CLASSES).astype(np.int32)


def _positions(images):
  """The positions spelt by images in pixels (uint8) or in [0, 1] floats."""
  pixels = np.asarray(images)
  if pixels.dtype != np.uint8:
    pixels = np.round(pixels * 255)
  pixels = pixels.astype(np.int64)
  return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 1, 0]


@pytest.fixture
def position_data(monkeypatch):
  """Fashion-MNIST replaced by _position_images (train and test): the IDX loader serves them."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  arrays = _position_images()
  monkeypatch.setitem(sources.LOADERS, "idx", sources.Loader(
      lambda info, split, data_dir, download: tf.data.Dataset.from_tensor_slices(arrays),
      load_numpy=lambda info, split, data_dir: arrays))
  return arrays


def test_experts_initialisation_and_baseline_draw_only_from_the_rest(position_data, tmp_path, monkeypatch):
  config = experts.ExpertConfig(dataset="fashion_mnist", store_dir=str(tmp_path / "store"), epochs=2,
                                model_kwargs={"width": 8}, validation_size=500, seed=1)
  split = experts.store_holdout(config)
  _, validation = split.split(_index(position_data[1]))
  store, data = experts.open_store(config)
  assert store.manifest.holdout == {"size": 500, "seed": 1}
  trained_on = _positions(data.train[0].numpy())  # in memory: (images, labels) tensors
  assert data.num_train == N - 500 and len(np.unique(trained_on)) == N - 500
  assert np.intersect1d(trained_on, validation).size == 0
  # A max_train_examples subset is drawn from the rest as well.
  small = dataclasses.replace(config, store_dir=str(tmp_path / "small"), max_train_examples=1000)
  _, subset = experts.open_store(small)
  assert np.intersect1d(_positions(subset.train[0].numpy()), validation).size == 0

  # The distiller's real initialisation (a large IPC makes a chance overlap certain without the split).
  theta = np.zeros((3, store.manifest.num_params), np.float32)
  store.write(0, theta, {"seed": 0})
  distiller = loop.Distiller(loop.DistillConfig(dataset="fashion_mnist", store_dir=store.path,
                                                run_dir=str(tmp_path / "run"), ipc=200, max_start_epoch=1,
                                                expert_epochs=1))
  init = _positions(distiller.preprocessor.invert(distiller.images).numpy())
  assert len(np.unique(init)) == 2000 and np.intersect1d(init, validation).size == 0

  # Evaluation: the baseline draws from the rest; validation accuracy is measured on exactly the split.
  seen = {}

  def fake_fit(trainer, images, labels, lr, seed, test, tag="", validation_batches=None):
    pixels = distiller.preprocessor.invert(images).numpy()
    seen.setdefault("random" if "random" in tag else "distilled", []).append(_positions(pixels))
    seen["validation"] = _positions(distiller.preprocessor.invert(np.concatenate(
        [x for x, _ in validation_batches.as_numpy_iterator()])).numpy())
    return {"test_accuracy": 0.5, "validation_accuracy": 0.4}

  monkeypatch.setattr(evaluate.Trainer, "fit", fake_fit)
  results = evaluate.evaluate_distilled(distiller.distilled_set(), evaluate.EvalConfig(num_eval=2))
  np.testing.assert_array_equal(np.sort(seen["validation"]), np.sort(validation))
  for drawn in seen["random"]:
    assert len(drawn) == 2000 and np.intersect1d(drawn, validation).size == 0
  assert results["distilled"]["convnet"]["validation_mean"] == 0.4
  assert results["settings"]["holdout"] == {"size": 500, "seed": 1}


def test_streamed_sources_keep_exactly_the_rest_in_order():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  ds = tf.data.Dataset.from_tensor_slices((np.arange(50) * 10, np.arange(50) % 5))
  index = class_index.build_class_index(np.arange(50) % 5, 5)
  rest, validation = holdout.Holdout(10, seed=2).split(index)
  kept = holdout.keep_positions(ds, holdout.positions_of(rest), 50)
  values = [int(x) for x, _ in kept.as_numpy_iterator()]
  assert values == [10 * p for p in holdout.positions_of(rest)]
  assert not set(values) & {10 * p for p in validation}

"""Tests for tesla_tf.store: the typed manifest and what a store offers the distiller."""

import json

import numpy as np
import pytest

from tesla_tf import errors, models
from tesla_tf import store as store_lib
from tesla_tf.data import holdout, preprocess, sources
from tesla_tf.models.flat import FlatModel


def _fields(**overrides):
  info = sources.get_info("fashion_mnist")
  fmodel = FlatModel(models.build("convnet", info.num_classes, info.image_shape, width=4))
  return {"dataset": "fashion_mnist", "num_classes": info.num_classes, "image_shape": list(info.image_shape),
          "model": "convnet", "model_kwargs": {"width": 4}, "num_params": fmodel.num_params,
          "layout": fmodel.layout(), "preprocessing": preprocess.build("normalize", info).to_dict(),
          "epochs": 3, "lr_teacher": 0.01, "dsa_strategy": "flip", "holdout": {"size": 50, "seed": 1},
          **overrides}


def test_manifest_round_trips_and_reads_the_stores_written_before_the_rename(tmp_path):
  store = store_lib.TrajectoryStore.create_or_open(tmp_path / "s", _fields())
  on_disk = json.load(open(tmp_path / "s" / store_lib.MANIFEST))
  assert on_disk["dsa_strategy"] == "flip" and on_disk["format"] == store_lib.FORMAT and on_disk["created"]
  assert store_lib.TrajectoryStore(tmp_path / "s").manifest == store.manifest
  old = {**on_disk, "augment_strategy": on_disk.pop("dsa_strategy")}
  assert store_lib.Manifest.from_dict(old, "m.json").dsa_strategy == "flip"
  assert store.manifest.model_spec == {"name": "convnet", "width": 4}
  before = {k: v for k, v in on_disk.items() if k != "precision"}  # stores before --precision: float32
  assert store_lib.Manifest.from_dict(before, "m.json").precision == "float32"


def test_manifest_refuses_other_files_and_missing_fields(tmp_path):
  with pytest.raises(errors.CorruptFileError, match="m.json: not a trajectory store manifest"):
    store_lib.Manifest.from_dict({"format": "other"}, "m.json")
  with pytest.raises(errors.CorruptFileError, match="m.json: not a trajectory store manifest"):
    store_lib.Manifest.from_dict([1, 2], "m.json")
  with pytest.raises(errors.CorruptFileError, match="lacks epochs, layout"):
    store_lib.Manifest.from_dict({"format": store_lib.FORMAT, **{k: v for k, v in _fields().items()
                                                                 if k not in ("epochs", "layout")}}, "m.json")
  with pytest.raises(errors.CorruptFileError, match="lacks"):  # refused before anything is published
    store_lib.TrajectoryStore.create_or_open(tmp_path / "bad", {"epochs": 3})
  assert not (tmp_path / "bad" / store_lib.MANIFEST).exists()


def test_the_store_builds_its_model_preprocessor_and_holdout(tmp_path):
  store = store_lib.TrajectoryStore.create_or_open(tmp_path, _fields())
  fmodel = store.build_model()
  assert fmodel.num_params == store.manifest.num_params
  assert store.holdout() == holdout.Holdout(50, 1)
  x = np.full((1, 28, 28, 1), 0.5, np.float32)
  np.testing.assert_allclose(store.preprocessor().apply(x), (0.5 - 0.2861) / 0.3530, rtol=1e-5)
  wrong = store_lib.TrajectoryStore.create_or_open(tmp_path / "w", _fields(model_kwargs={"width": 5}))
  with pytest.raises(store_lib.StoreMismatchError, match="layout"):
    wrong.build_model()


def test_compatible_with_names_the_problem(tmp_path):
  store = store_lib.TrajectoryStore.create_or_open(tmp_path, _fields())
  with pytest.raises(errors.MissingDataError, match="no finished expert"):
    store.compatible_with("fashion_mnist", 3)
  store.write(0, np.zeros((4, store.manifest.num_params), np.float32), {})
  assert store.compatible_with("fashion_mnist", 3) == [0]
  with pytest.raises(errors.IncompatibleRunError, match="holds experts of 'fashion_mnist', not of --dataset='mnist'"):
    store.compatible_with("mnist", 3)
  with pytest.raises(errors.UsageError, match="= 4 exceeds the experts' 3 epochs"):
    store.compatible_with("fashion_mnist", 4)

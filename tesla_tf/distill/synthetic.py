"""The synthetic set: what is learned (images, α, optionally labels) and what is delivered."""

import dataclasses

import numpy as np


@dataclasses.dataclass
class DistilledSet:
  """A distilled data set as delivered: everything needed to train on it elsewhere.

  Attributes:
    images: float32 [n, h, w, c] in the experts' model space (normalised or ZCA-whitened), class-sorted.
    labels: float32 [n, C] probability rows (one-hot for hard labels).
    lr: the learned step size α (the evaluation learning rate).
    dataset: name in tesla_tf.data.sources.DATASETS.
    ipc: images per class.
    preprocessing: the preprocessor's `to_dict()` (how to map pixels to model space and back).
    model: {"name": ..., plus builder kwargs} of the distillation architecture.
    config: the effective settings of the run that made it (flags), for provenance.
    holdout: the validation split held out of the train set ({"size", "seed"}, data/holdout.py), which
      evaluation measures on and keeps out of the random-subset baseline; {} = none.
  """
  images: np.ndarray
  labels: np.ndarray
  lr: float
  dataset: str
  ipc: int
  preprocessing: dict
  model: dict
  config: dict = dataclasses.field(default_factory=dict)
  holdout: dict = dataclasses.field(default_factory=dict)

  @property
  def hard_labels(self):
    """int32 [n]: the argmax class of every row (the class an image was initialised from)."""
    return np.argmax(self.labels, axis=1).astype(np.int32)

  @property
  def soft(self):
    """True when the labels are not one-hot."""
    return not np.array_equal(self.labels, np.eye(self.labels.shape[1], dtype=self.labels.dtype)[
        self.hard_labels])

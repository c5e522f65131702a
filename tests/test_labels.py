"""Synthetic-set labels: hard rows and TESLA's teacher soft labels."""

import numpy as np
import tensorflow as tf

from tesla_tf.distill import labels, matching
from tesla_tf.models.convnet import convnet
from tesla_tf.models.flat import FlatModel


def test_hard_labels_are_class_sorted_one_hot():
  np.testing.assert_array_equal(labels.hard_labels(3, 2), np.eye(3)[[0, 0, 1, 1, 2, 2]])


def test_teacher_labels_are_the_experts_softmax():
  fmodel = FlatModel(convnet(4, (8, 8, 1), depth=2, width=8))
  theta = fmodel.initial_flat(3)
  x = tf.random.stateless_normal([5, 8, 8, 1], seed=[0, 0])
  logits = fmodel.apply(theta, x).numpy()
  expected = np.exp(logits - logits.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)
  np.testing.assert_allclose(labels.teacher_labels(fmodel, theta, x), expected, rtol=1e-5)


def test_labels_for_scheduled_rows_equal_relabelling_every_row():
  """Only the rows a schedule touches are labelled; the matching gradients are those of full relabelling."""
  fmodel = FlatModel(convnet(4, (8, 8, 1), depth=2, width=8))
  start = fmodel.initial_flat(0)
  target = start + 0.01 * tf.random.stateless_normal(start.shape, seed=[1, 1])
  teacher = fmodel.initial_flat(5)
  images = tf.random.stateless_normal([12, 8, 8, 1], seed=[2, 2])
  schedule = matching.make_schedule(12, 2, 3, seed=[3, 3])  # 6 of the 12 rows take part
  partial = labels.teacher_labels_for_schedule(fmodel, teacher, images, schedule, 4)
  full = labels.teacher_labels(fmodel, teacher, images)
  used = np.unique(schedule.numpy())
  assert len(used) == 6
  np.testing.assert_allclose(tf.gather(partial, used), tf.gather(full, used), rtol=1e-6)
  unused = np.setdiff1d(np.arange(12), used)
  np.testing.assert_array_equal(tf.gather(partial, unused), 0.0)
  for mode in ("tesla", "exact"):
    a = matching.matching_gradients(fmodel, start, target, images, partial, 0.01, schedule, mode=mode)
    b = matching.matching_gradients(fmodel, start, target, images, full, 0.01, schedule, mode=mode)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
    np.testing.assert_allclose(a.images_grad, b.images_grad, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a.lr_grad, b.lr_grad, rtol=1e-5)

"""Synthetic-set labels: hard rows and TESLA's teacher soft labels."""

import numpy as np
import pytest
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
  partial = labels.teacher_labels_for_schedule(fmodel, teacher, images, schedule,
                                               tf.one_hot(tf.range(12) % 4, 4))
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


def test_temperature_and_mix_are_the_hand_formula():
  logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
  hard = tf.constant([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  z = logits.numpy() / 2.0
  soft = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  np.testing.assert_allclose(labels.TeacherLabels(temperature=2.0).rows(logits, hard), soft, rtol=1e-6)
  mixed = labels.TeacherLabels(temperature=2.0, mix=0.25).rows(logits, hard)
  np.testing.assert_allclose(mixed, 0.75 * soft + 0.25 * hard.numpy(), rtol=1e-6)
  np.testing.assert_allclose(np.sum(mixed, 1), 1.0, rtol=1e-6)
  # β = 1 is hard labels; β ≥ 0.5 keeps every row's argmax on its class even against a confident teacher.
  np.testing.assert_array_equal(labels.TeacherLabels(mix=1.0).rows(logits * 50, hard), hard)
  half = labels.TeacherLabels(mix=0.5).rows(logits * 50, hard).numpy()
  assert list(np.argmax(half + 1e-6 * hard.numpy(), 1)) == [2, 0]


def test_default_teacher_labels_are_teslas_and_bad_options_are_refused():
  logits = tf.constant([[1.0, 2.0]])
  np.testing.assert_allclose(labels.TeacherLabels().rows(logits, tf.zeros_like(logits)), tf.nn.softmax(logits))
  for kwargs, flag in (({"temperature": 0.0}, "label_temperature"), ({"mix": 1.5}, "label_mix")):
    with pytest.raises(ValueError, match=flag):
      labels.TeacherLabels(**kwargs)


def test_label_statistics_are_entropy_and_argmax_share_of_the_measured_rows():
  rows = tf.constant([[0.5, 0.5, 0.0], [0.1, 0.8, 0.1], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  hard = tf.constant([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
  stats = labels.statistics(rows, hard, tf.constant([0, 1, 2]))
  entropy = [np.log(2), -(2 * 0.1 * np.log(0.1) + 0.8 * np.log(0.8)), 0.0]
  np.testing.assert_allclose(stats["labels/entropy"], np.mean(entropy), rtol=1e-6)
  # argmax: row 0 ties (first index, class 0), row 1 → class 1 ≠ 0, row 2 → class 0.
  np.testing.assert_allclose(stats["labels/argmax_is_class"], 2 / 3, rtol=1e-6)

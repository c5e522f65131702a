"""Labels of the synthetic set: hard one-hot rows, TESLA's teacher soft labels (REFERENCE §6)."""

import tensorflow as tf


def hard_labels(num_classes, ipc, dtype=tf.float32):
  """One-hot rows [C·ipc, C] of a class-sorted synthetic set."""
  return tf.one_hot(tf.repeat(tf.range(num_classes), ipc), num_classes, dtype=dtype)


def teacher_labels(fmodel, theta, images):
  """softmax(f(X̃; θ)) at temperature 1, no augmentation, no gradient: TESLA's label assignment.

  Args:
    fmodel: FlatModel.  theta: the teacher's flat parameters [P] (θ*_{t+M}).
    images: [k, h, w, c].
  Returns:
    [k, C] probability rows (constants: gradients are stopped).
  """
  return tf.stop_gradient(tf.nn.softmax(fmodel.apply(theta, images, training=False)))


def teacher_labels_for_schedule(fmodel, theta, images, schedule, num_classes):
  """Teacher labels for just the rows a step schedule uses, scattered into an [n, C] matrix.

  Rows the schedule never touches are left zero: they take no part in this iteration, so the matching
  gradients equal those with every row relabelled, for less work when batch_syn·N < n (ImageNet).
  """
  rows, _ = tf.unique(tf.reshape(schedule, [-1]))
  probs = teacher_labels(fmodel, theta, tf.gather(images, rows))
  return tf.scatter_nd(rows[:, None], probs, [tf.shape(images)[0], num_classes])

"""Labels of the synthetic set (REFERENCE §6): SOURCES maps --labels to a label source —
  hard      one-hot rows of the class an image was initialised from;
  teacher   TESLA's soft labels: the target expert relabels the images every iteration, the label
            teacher (the first expert at the latest target epoch) labels the delivered set;
  learned   label logits learned with the images, initialised from the label teacher.

Teacher labels follow the images: every iteration the target expert relabels them. Two options keep
them from drifting away from the class an image stands for (measured in docs/quality.md):
  temperature T   softmax(z / T): T < 1 sharpens the teacher's rows, T > 1 flattens them;
  mix β           (1 − β)·teacher + β·one-hot(class): for β ≥ 0.5 a row's argmax is always its class,
                  β = 1 gives hard labels.
TESLA's labels are T = 1, β = 0. VARIANTS names the combinations the benchmark and the demo compare.
"""

import dataclasses

import tensorflow as tf

from tesla_tf import errors
from tesla_tf.distill import synthetic


BATCH = 1024  # rows per teacher forward pass over the whole set

# name → the DistillConfig label fields
VARIANTS = {
    "hard": {"labels": "hard"},
    "teacher": {"labels": "teacher"},
    "teacher_mix0.5": {"labels": "teacher", "label_mix": 0.5},
    "teacher_T0.5": {"labels": "teacher", "label_temperature": 0.5},
}


@dataclasses.dataclass(frozen=True)
class TeacherLabels:
  """How teacher logits become label rows: softmax(z / temperature), mixed with the one-hot class."""
  temperature: float = 1.0
  mix: float = 0.0

  def __post_init__(self):
    if not self.temperature > 0:
      raise errors.UsageError(f"--label_temperature must be > 0, got {self.temperature}.")
    if not 0.0 <= self.mix <= 1.0:
      raise errors.UsageError(f"--label_mix must lie in [0, 1], got {self.mix}.")

  def rows(self, logits, hard):
    """[k, C] probability rows from teacher logits [k, C] and the rows' one-hot classes [k, C]."""
    probs = tf.nn.softmax(logits / tf.cast(self.temperature, logits.dtype))
    if self.mix:
      probs = (1.0 - self.mix) * probs + self.mix * tf.cast(hard, probs.dtype)
    return tf.stop_gradient(probs)


def hard_labels(num_classes, ipc, dtype=tf.float32):
  """One-hot rows [C·ipc, C] of a class-sorted synthetic set."""
  return tf.one_hot(tf.repeat(tf.range(num_classes), ipc), num_classes, dtype=dtype)


def teacher_logits(fmodel, theta, images, batch_size=BATCH):
  """f(X̃; θ) without augmentation, in batches of at most `batch_size` rows (memory bounded in n)."""
  if images.shape[0] is None or images.shape[0] <= batch_size:  # inside a step: its rows only
    return fmodel.apply(theta, images, training=False)
  return tf.concat([fmodel.apply(theta, images[i:i + batch_size], training=False)
                    for i in range(0, images.shape[0], batch_size)], axis=0)


def teacher_labels(fmodel, theta, images, hard=None, how=TeacherLabels()):
  """The teacher's label rows: softmax(f(X̃; θ)) (TESLA's label assignment at the default `how`), no
  augmentation, no gradient, in bounded batches.

  Args:
    fmodel: FlatModel.  theta: the teacher's flat parameters [P] (θ*_{t+M}).
    images: [k, h, w, c].
    hard: [k, C] one-hot classes of the rows (needed when how.mix > 0).
    how: TeacherLabels (temperature, mix).
  Returns:
    [k, C] probability rows (constants: gradients are stopped).
  """
  logits = teacher_logits(fmodel, theta, images)
  return how.rows(logits, tf.zeros_like(logits) if hard is None else hard)


def teacher_labels_for_schedule(fmodel, theta, images, schedule, hard, how=TeacherLabels()):
  """Teacher labels for just the rows a step schedule uses, scattered into an [n, C] matrix.

  Rows the schedule never touches are left zero: they take no part in this iteration, so the matching
  gradients equal those with every row relabelled, for less work when batch_syn·N < n (ImageNet).

  Args:
    hard: [n, C] one-hot classes of all n rows.
  """
  rows, _ = tf.unique(tf.reshape(schedule, [-1]))
  probs = teacher_labels(fmodel, theta, tf.gather(images, rows), tf.gather(hard, rows), how)
  # A segment sum of unique rows, not tf.scatter_nd: the same values, and deterministic on a GPU without
  # the host round trip ScatterNd takes under op determinism (docs/scaling.md §5).
  return tf.math.unsorted_segment_sum(probs, rows, tf.shape(hard)[0])


def statistics(labels, hard, rows):
  """What to watch of soft labels: mean entropy (nats) and the share of rows whose argmax is their class.

  Args:
    labels: [n, C] probability rows.  hard: [n, C] one-hot classes.  rows: int [k] rows to measure.
  Returns:
    {"labels/entropy": [], "labels/argmax_is_class": []} float32 scalars.
  """
  probs, classes = tf.gather(labels, rows), tf.gather(hard, rows)
  entropy = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(probs), probs), axis=1)
  agree = tf.equal(tf.argmax(probs, axis=1), tf.argmax(classes, axis=1))
  return {"labels/entropy": tf.reduce_mean(entropy),
          "labels/argmax_is_class": tf.reduce_mean(tf.cast(agree, tf.float32))}


# -- label sources: what a step trains on, what is delivered, what is learned ---------------------------

class Hard:
  """One-hot rows; nothing learned."""

  def __init__(self, hard, fmodel=None, teacher=None, images=None, how=None):
    del fmodel, teacher, images, how
    self.hard = hard

  def for_step(self, images, target, schedule):
    """Ỹ [n, C] of one iteration (rows the schedule does not use may be zero)."""
    del images, target, schedule
    return self.hard

  def delivered(self, images):
    """Ỹ [n, C] of the delivered set."""
    del images
    return self.hard

  def step(self, labels_grad, lr):
    """The optimiser step of learned labels (nothing to learn here)."""

  def checkpoint_dict(self):
    return {}


class Teacher(Hard):
  """TESLA's: the target expert θ*_{t+M} labels the rows of every step; the label teacher the set."""

  def __init__(self, hard, fmodel, teacher, images=None, how=TeacherLabels()):
    super().__init__(hard)
    self.fmodel, self.teacher, self.how = fmodel, teacher, how

  def for_step(self, images, target, schedule):
    return teacher_labels_for_schedule(self.fmodel, target, images, schedule, self.hard, self.how)

  def delivered(self, images):
    return teacher_labels(self.fmodel, self.teacher, images, self.hard, self.how)


class Learned(Hard):
  """softmax of label logits learned beside the images (SGD momentum 0.5), initialised to the label
  teacher's logits of the initial images."""

  def __init__(self, hard, fmodel, teacher, images, how=None):
    super().__init__(hard)
    self.logits = synthetic.Learnable(teacher_logits(fmodel, teacher, images), "label_logits")

  def for_step(self, images, target, schedule):
    return tf.nn.softmax(self.logits.var)

  def delivered(self, images):
    return tf.nn.softmax(self.logits.var)

  def step(self, labels_grad, lr):
    """∂L/∂logits from ∂L/∂Ỹ through the softmax, then the momentum step; returns its norm."""
    with tf.GradientTape() as tape:
      labels = tf.nn.softmax(self.logits.var)
    logits_grad = tape.gradient(labels, self.logits.var, output_gradients=labels_grad)
    self.logits.step(logits_grad, lr)
    return tf.norm(logits_grad)

  def checkpoint_dict(self):
    return dict(label_logits=self.logits.var, label_buf=self.logits.momentum)


# --labels → the label source
SOURCES = {"hard": Hard, "teacher": Teacher, "learned": Learned}

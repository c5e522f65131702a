"""The learnable synthetic set: images X̃, the step size α (and, with learned labels, the label logits),
each with its SGD momentum buffer, updated as PyTorch SGD updates them (the published lr_img and lr_lr
assume it)."""

import tensorflow as tf

from tesla_tf.data import class_index, holdout as holdout_lib, sources

PIX_INITS = ("real", "noise")
ROWS = 1024  # rows per chunk of a pass over the whole set (its temporaries stay this size, whatever n)


def sgd_momentum(variable, buffer, grad, lr, momentum=0.5):
  """PyTorch SGD: buf = m·buf + g; p −= lr·buf.

  One in-place kernel: written as `buffer.assign(m * buffer + g)` and `variable.assign_sub(lr * buffer)`
  it made full-size temporaries, one more copy of the synthetic set at the peak (−1.0 GB at 20,000
  images of 64×64, docs/scaling.md).
  """
  def as_dtype(value):  # Python numbers straight to the variable's dtype (not through float32)
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=variable.dtype), variable.dtype)
  tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=buffer.handle, lr=as_dtype(lr),
                                   grad=as_dtype(grad), momentum=as_dtype(momentum))


def sum_of_squares(x, rows=ROWS):
  """Σ x² of a [n, ...] tensor, `rows` rows at a time, one chunk after another.

  `tf.reduce_sum(tf.square(x))` materialises x² at full size: one more copy of the synthetic set
  whenever it runs beside the others (the images' RMS, the gradient norm while the gradient is alive;
  docs/scaling.md §1). Equal to it within float32 round-off.
  """
  x = tf.convert_to_tensor(x)  # a variable is read once, not once per chunk
  n = x.shape[0]
  if n is None or n <= rows:
    return tf.reduce_sum(tf.square(x))

  def add_chunk(i, total):
    return i + rows, total + tf.reduce_sum(tf.square(x[i:i + rows]))
  _, total = tf.while_loop(lambda i, _: i < n, add_chunk, (tf.constant(0), tf.zeros([], x.dtype)),
                           parallel_iterations=1)
  return total


def initial_images(pix_init, dataset, data_dir, ipc, seed, holdout, preprocessor, index_dir):
  """X̃ at iteration 0, class-sorted: IPC real training images per class in model space, never from the
  validation split `holdout` (the class index cached in `index_dir`), or N(0, 1) noise; dataset is a
  name or sources.DatasetInfo."""
  info = sources.get_info(dataset)
  if pix_init == "noise":
    return tf.random.stateless_normal((info.num_classes * ipc,) + tuple(info.image_shape), seed=[seed, 7])
  rest, _ = holdout.split(holdout_lib.train_index(dataset, data_dir, index_dir))
  positions = class_index.sample_per_class(rest, ipc, seed)
  images, _ = class_index.take_positions(sources.load(dataset, "train", data_dir), positions)
  return tf.cast(preprocessor.apply(images), tf.float32)


class Learnable:
  """A variable and its momentum buffer."""

  def __init__(self, initial, name, dtype=None):
    self.var = tf.Variable(initial, dtype=dtype, name=name)
    self.momentum = tf.Variable(tf.zeros_like(self.var), name=f"{name}_momentum")

  def step(self, grad, lr):
    sgd_momentum(self.var, self.momentum, grad, lr)


class SyntheticSet:
  """X̃ and α of a run (label state lives with the label source, distill/labels.py).

  Attributes:
    images: Learnable [n, h, w, c] in the experts' model space, class-sorted.
    syn_lr: Learnable scalar α, the student's step size.
  """

  def __init__(self, images, syn_lr):
    self.images = Learnable(images, "images")
    self.syn_lr = Learnable(float(syn_lr), "syn_lr", dtype=tf.float32)

  def step(self, images_grad, lr_img, syn_lr_grad, lr_lr):
    self.images.step(images_grad, lr_img)
    self.syn_lr.step(syn_lr_grad, lr_lr)

  def rms(self):
    """The images' root mean square (model space), in bounded chunks of rows."""
    images = self.images.var
    return tf.sqrt(sum_of_squares(images) / tf.cast(tf.size(images), images.dtype))

  def checkpoint_dict(self):
    """The variables under the checkpoint keys every run since the first release has used."""
    return dict(images=self.images.var, images_buf=self.images.momentum, syn_lr=self.syn_lr.var,
                syn_lr_buf=self.syn_lr.momentum)

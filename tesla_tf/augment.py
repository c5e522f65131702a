"""DSA: differentiable Siamese augmentation (REFERENCE §4), sampling kept apart from applying.

`sample(kind_or_strategy, batch_shape, seed)` draws the random values of one augmentation call from a
stateless seed; `apply(images, params)` applies them, differentiably in the images. Re-applying the same
params gives the same output, which is what the Siamese part needs (pass 2 repeats pass 1 exactly).

Single mode: one family per call, chosen uniformly from the strategy with the seed; each sample of the
batch gets its own values. `params` has one fixed structure whatever family was drawn, so params of N
steps can be stacked with `tf.nest` and indexed inside a `tf.while_loop`. For that, `apply` has no
branches: every call applies colour, then an affine bilinear resampling, then a cutout mask, and the
families not drawn carry identity values, which reproduce the input exactly.

params (b = batch size, float tensors are float32 and cast to the images' dtype in `apply`):
  family      int32 []         index into FAMILIES of the drawn family; -1 for "none".
  brightness  float32 [b]      shift added to every pixel (identity 0).
  saturation  float32 [b]      factor s: x*s + m_c*(1-s), m_c the per-pixel channel mean (identity 1).
  contrast    float32 [b]      factor c: x*c + m*(1-c), m the per-image mean over h, w, c (identity 1).
  affine      float32 [b,2,3]  pixel-space map [A | t]: output pixel p = (x, y) (x along width) samples
                               the input at A @ (p - ctr) + ctr + t, ctr = ((w-1)/2, (h-1)/2); row 0 gives
                               the source x, row 1 the source y. Bilinear, zeros outside the image. For
                               square images this is PyTorch affine_grid/grid_sample with
                               align_corners=True and theta = [A | 2t/(w-1)]. Identity [[1,0,0],[0,1,0]].
  cutout      int32 [b,4]      (y_start, y_end, x_start, x_end), half-open, already clipped to the image;
                               that rectangle is set to zero in every channel (identity: empty, zeros).

Family values (u ~ U(0,1), fresh per sample and per quantity):
  color   brightness u-0.5, saturation 2u, contrast u+0.5 (applied in that order).
  crop    t = (tx, ty), integers ~ U{-s..s} per axis, s = int(0.125*size + 0.5); output(x, y) =
          input(x+tx, y+ty), zero outside (exact: integer coordinates, bilinear weights 0/1).
  cutout  side = int(0.5*size + 0.5); offset o ~ U{0 .. size - 1 + (1 - side % 2)} per axis; zeroed
          rows/columns [o - side//2, o - side//2 + side) clipped to [0, size) (as the MTT/DSA code).
  flip    with probability 0.5, A = diag(-1, 1): output(x, y) = input(w-1-x, y), exact.
  scale   A = diag(sx, sy), sx, sy ~ U(1/1.2, 1.2) independently.
  rotate  A = [[cos a, -sin a], [sin a, cos a]], a ~ U(-15, 15) degrees; with rows pointing down, a
          positive angle turns the picture anticlockwise as displayed (a = 90 degrees is np.rot90).
"""

import math

import tensorflow as tf

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
STRATEGY = "color_crop_cutout_flip_scale_rotate"

_CROP_RATIO = 0.125
_CUTOUT_RATIO = 0.5
_SCALE_RATIO = 1.2
_ROTATE_DEGREES = 15.0
# Sub-seed slots: 0 chooses the family, 1 + FAMILIES.index(f) feeds family f, so a family's values
# for a given seed do not depend on which strategy string drew it.
_NUM_STREAMS = 1 + len(FAMILIES)


def parse_strategy(kind_or_strategy):
  """Splits a strategy string into its families.

  Args:
    kind_or_strategy: "none", one family name, or family names joined by "_".

  Returns:
    A tuple of family names (empty for "none").

  Raises:
    ValueError: on an unknown, empty or repeated family name.
  """
  if kind_or_strategy == "none":
    return ()
  families = tuple(str(kind_or_strategy).split("_"))
  for name in families:
    if name not in FAMILIES:
      raise ValueError(f"Unknown augmentation family {name!r} in {kind_or_strategy!r}; valid families "
                       f"are {', '.join(FAMILIES)} (joined by '_'), or 'none'.")
  if len(set(families)) != len(families):
    raise ValueError(f"Repeated augmentation family in {kind_or_strategy!r}.")
  return families


def is_strategy(kind_or_strategy):
  """True when `parse_strategy` accepts the string (for flag validators)."""
  try:
    parse_strategy(kind_or_strategy)
  except ValueError:
    return False
  return True


def _static_dims(batch_shape):
  """Returns (b, h, w) as Python ints from a list, TensorShape or constant 1-D tensor [b, h, w, c]."""
  dims = tf.get_static_value(batch_shape) if tf.is_tensor(batch_shape) else batch_shape
  dims = None if dims is None else list(dims)
  if dims is None or len(dims) != 4 or any(d is None for d in dims[:3]):
    raise ValueError(f"batch_shape must be a static [b, h, w, c], got {batch_shape!r}.")
  return int(dims[0]), int(dims[1]), int(dims[2])


def _identity(b):
  """Returns identity params for a batch of b images (family -1)."""
  return {
      "family": tf.constant(-1, tf.int32),
      "brightness": tf.zeros([b], tf.float32),
      "saturation": tf.ones([b], tf.float32),
      "contrast": tf.ones([b], tf.float32),
      "affine": tf.tile(tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), [b, 1, 1]),
      "cutout": tf.zeros([b, 4], tf.int32),
  }


def _split(seed, num):
  """Derives num sub-seeds [num, 2] (int64 in [0, 2**32)) from a seed [2].

  XLA and the TF kernels scramble seed bits above 32 differently, so seeds are folded to 32 bits
  (high word xor low word) before and after the split; jit_compile then reproduces eager draws.
  """
  def fold(s):
    s = tf.cast(s, tf.int64)
    return tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(s, tf.bitwise.right_shift(s, 32)), 0xFFFFFFFF)
  return fold(tf.random.experimental.stateless_split(fold(seed), num=num))


def _uniform(seed, shape, minval=0.0, maxval=1.0, dtype=tf.float32):
  """Stateless uniform draw in [minval, maxval); integers when dtype is int32."""
  if dtype == tf.int32:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.int32)
  # Floats are built from integer draws: XLA converts random bits to floats differently from the
  # TF kernels, while integer draws agree, so this keeps jit_compile and eager results identical.
  bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=1 << 24, dtype=tf.int32)
  return minval + (maxval - minval) * (tf.cast(bits, tf.float32) * (1.0 / (1 << 24)))


def _family_values(name, seed, b, h, w):
  """Draws the non-identity params entries of one family; returns a dict of the keys it changes."""
  seeds = _split(seed, 3)
  if name == "color":
    return {"brightness": _uniform(seeds[0], [b]) - 0.5,
            "saturation": _uniform(seeds[1], [b]) * 2.0,
            "contrast": _uniform(seeds[2], [b]) + 0.5}
  eye = _identity(b)["affine"]
  if name == "crop":
    sx, sy = int(_CROP_RATIO * w + 0.5), int(_CROP_RATIO * h + 0.5)
    tx = _uniform(seeds[0], [b], -sx, sx + 1, tf.int32)
    ty = _uniform(seeds[1], [b], -sy, sy + 1, tf.int32)
    t = tf.cast(tf.stack([tx, ty], axis=1), tf.float32)
    return {"affine": tf.concat([eye[:, :, :2], t[:, :, None]], axis=2)}
  if name == "cutout":
    side_y, side_x = int(_CUTOUT_RATIO * h + 0.5), int(_CUTOUT_RATIO * w + 0.5)
    oy = _uniform(seeds[0], [b], 0, h + 1 - side_y % 2, tf.int32)
    ox = _uniform(seeds[1], [b], 0, w + 1 - side_x % 2, tf.int32)
    y0, x0 = oy - side_y // 2, ox - side_x // 2
    box = [tf.clip_by_value(y0, 0, h), tf.clip_by_value(y0 + side_y, 0, h),
           tf.clip_by_value(x0, 0, w), tf.clip_by_value(x0 + side_x, 0, w)]
    return {"cutout": tf.stack(box, axis=1)}
  if name == "flip":
    sign = tf.where(_uniform(seeds[0], [b]) < 0.5, -1.0, 1.0)
    scale = tf.stack([sign, tf.ones([b])], axis=1)
    return {"affine": tf.linalg.set_diag(eye, scale)}
  if name == "scale":
    lo, hi = 1.0 / _SCALE_RATIO, _SCALE_RATIO
    scale = tf.stack([_uniform(seeds[0], [b], lo, hi), _uniform(seeds[1], [b], lo, hi)], axis=1)
    return {"affine": tf.linalg.set_diag(eye, scale)}
  # rotate
  limit = _ROTATE_DEGREES / 180.0 * math.pi
  angle = _uniform(seeds[0], [b], -limit, limit)
  cos, sin, zero = tf.cos(angle), tf.sin(angle), tf.zeros([b])
  return {"affine": tf.reshape(tf.stack([cos, -sin, zero, sin, cos, zero], axis=1), [b, 2, 3])}


@tf.autograph.experimental.do_not_convert  # traced as written, in tf.data maps too (no AutoGraph pass)
def sample(kind_or_strategy, batch_shape, seed):
  """Draws the parameters of one augmentation call (single mode: one family for the whole batch).

  Args:
    kind_or_strategy: "none", a family name, or families joined by "_" (e.g. STRATEGY).
    batch_shape: [b, h, w, c] of the images to augment (list or constant 1-D tensor; b, h, w static).
    seed: stateless seed, int32/int64 tensor [2].

  Returns:
    The params dict described in the module docstring (fixed structure for every strategy).
  """
  families = parse_strategy(kind_or_strategy)
  b, h, w = _static_dims(batch_shape)
  params = _identity(b)
  if not families:
    return params
  streams = _split(tf.convert_to_tensor(seed), _NUM_STREAMS)
  choice = _uniform(streams[0], [], 0, len(families), tf.int32)
  family = tf.gather(tf.constant([FAMILIES.index(f) for f in families], tf.int32), choice)
  params["family"] = family
  for name in families:
    index = FAMILIES.index(name)
    drawn = tf.equal(family, index)
    for key, value in _family_values(name, streams[1 + index], b, h, w).items():
      params[key] = tf.where(drawn, value, params[key])
  return params


def _colour(images, params):
  """Brightness, saturation, contrast, written as x*f + m*(1-f) so identity values are exact."""
  dtype = images.dtype
  brightness, saturation, contrast = (
      tf.cast(params[k], dtype)[:, None, None, None] for k in ("brightness", "saturation", "contrast"))
  x = images + brightness
  x = x * saturation + tf.reduce_mean(x, axis=3, keepdims=True) * (1.0 - saturation)
  return x * contrast + tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True) * (1.0 - contrast)


def _resample(images, affine):
  """Bilinear sampling of images [b, h, w, c] at the pixel-space affine map [b, 2, 3]; zeros outside."""
  dtype = images.dtype
  h, w, c = images.shape[1], images.shape[2], images.shape[3]
  b = tf.shape(images)[0]
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  gy, gx = tf.meshgrid(tf.range(h, dtype=dtype) - cy, tf.range(w, dtype=dtype) - cx, indexing="ij")
  a = tf.cast(affine, dtype)[:, :, :, None, None]
  # Products with exact 0/±1 entries and half-integer centres keep identity, flip and crop exact.
  src_x = (a[:, 0, 0] * gx + a[:, 0, 1] * gy) + cx + a[:, 0, 2]
  src_y = (a[:, 1, 0] * gx + a[:, 1, 1] * gy) + cy + a[:, 1, 2]
  x0, y0 = tf.floor(src_x), tf.floor(src_y)
  fx, fy = src_x - x0, src_y - y0
  x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  flat = tf.reshape(images, [-1, c])
  base = tf.range(b)[:, None, None] * (h * w)
  out = tf.zeros_like(images)
  for dy, wy in ((0, 1.0 - fy), (1, fy)):
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      index = base + tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
      weight = tf.where(inside, wx * wy, tf.zeros_like(wx))
      out += tf.gather(flat, index) * weight[..., None]
  return out


def _cutout_mask(box, h, w, dtype):
  """Returns a [b, h, w, 1] mask, zero inside each half-open box (y0, y1, x0, x1), one elsewhere."""
  rows, cols = tf.range(h)[None, :, None], tf.range(w)[None, None, :]
  y0, y1, x0, x1 = (box[:, k, None, None] for k in range(4))
  hole = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  return tf.cast(~hole, dtype)[..., None]


@tf.autograph.experimental.do_not_convert
def apply(images, params):
  """Applies sampled augmentation params: colour, then affine resampling, then cutout.

  Args:
    images: [b, h, w, c] float images (h, w, c static), the b that params were sampled for.
    params: dict from `sample` (or one step of a stacked dict).

  Returns:
    [b, h, w, c] augmented images, same dtype; differentiable in `images`.
  """
  images = tf.convert_to_tensor(images)
  x = _colour(images, params)
  x = _resample(x, params["affine"])
  return x * _cutout_mask(params["cutout"], images.shape[1], images.shape[2], images.dtype)


@tf.autograph.experimental.do_not_convert
def sample_steps(strategy, num_steps, batch_shape, seed):
  """DSA parameters of `num_steps` student steps, stacked on a leading [N] axis (one fresh draw per step)."""
  seeds = tf.random.experimental.stateless_split(seed, num_steps)
  # One traced draw mapped over the N seeds, not N traced draws: a Python loop put N copies of the
  # sampling ops in the graph, ~6.6 MB of RSS per step (0.53 GB at N = 80, docs/benchmarks.md).
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                               sample(strategy, batch_shape, seeds[0]))
  return tf.map_fn(lambda s: sample(strategy, batch_shape, s), seeds, fn_output_signature=spec)

"""Tests for tesla_tf.augment: sampling, exact hand-made cases, gradients, stacking, XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tesla_tf import augment

SHAPE = [4, 8, 8, 3]


def _seed(i):
  return tf.constant([i, 1234], tf.int64)


def _images(shape=SHAPE, dtype=tf.float32, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape), dtype)


def _params(b, **changes):
  """Identity params for b images with some entries replaced by hand."""
  params = augment.sample("none", [b, 1, 1, 1], _seed(0))
  params.update({k: tf.constant(v, params[k].dtype) for k, v in changes.items()})
  return params


def test_parse_strategy_and_errors():
  assert augment.parse_strategy(augment.STRATEGY) == augment.FAMILIES
  assert augment.parse_strategy("none") == ()
  assert augment.parse_strategy("crop_flip") == ("crop", "flip")
  with pytest.raises(ValueError, match="'colour'.*color, crop, cutout, flip, scale, rotate"):
    augment.sample("colour_crop", SHAPE, _seed(0))
  with pytest.raises(ValueError, match="Repeated"):
    augment.parse_strategy("flip_flip")
  assert augment.is_strategy("crop_flip") and augment.is_strategy("none")
  assert not augment.is_strategy("flip_flip") and not augment.is_strategy("colour")
  with pytest.raises(ValueError, match="static"):
    augment.sample("flip", [None, 8, 8, 3], _seed(0))


def test_params_structure_is_fixed():
  structures = [augment.sample(k, SHAPE, _seed(1)) for k in ("none", *augment.FAMILIES, augment.STRATEGY)]
  specs = [{k: (v.shape, v.dtype) for k, v in p.items()} for p in structures]
  assert all(s == specs[0] for s in specs)
  assert specs[0] == {
      "family": ([], tf.int32), "brightness": ([4], tf.float32), "saturation": ([4], tf.float32),
      "contrast": ([4], tf.float32), "affine": ([4, 2, 3], tf.float32), "cutout": ([4, 4], tf.int32)}
  assert augment.sample("scale", tf.constant(SHAPE), _seed(1))["affine"].shape == [4, 2, 3]


@pytest.mark.parametrize("family", augment.FAMILIES)
def test_each_family_shape_dtype_and_ranges(family):
  params = augment.sample(family, SHAPE, _seed(3))
  assert int(params["family"]) == augment.FAMILIES.index(family)
  for dtype in (tf.float32, tf.float64):
    out = augment.apply(_images(dtype=dtype), params)
    assert out.shape == SHAPE and out.dtype == dtype
  ones = augment.apply(tf.ones(SHAPE), params).numpy()
  if family == "color":
    # On a constant image saturation and contrast do nothing: only the brightness shift remains.
    shift = np.broadcast_to(params["brightness"].numpy()[:, None, None, None], ones.shape)
    np.testing.assert_allclose(ones, 1.0 + shift, atol=1e-6)
    assert np.all(np.abs(ones - 1.0) <= 0.5)
    assert np.all((params["saturation"] >= 0) & (params["saturation"] <= 2))
    assert np.all((params["contrast"] >= 0.5) & (params["contrast"] <= 1.5))
  elif family in ("crop", "cutout", "flip"):
    assert set(np.unique(ones)) <= {0.0, 1.0}
    x = _images()
    out = augment.apply(x, params).numpy()
    assert np.all(np.isin(out, np.append(x.numpy().ravel(), 0.0)))
  else:
    assert ones.min() >= 0.0 and ones.max() <= 1.0 + 1e-6
  if family == "scale":
    a = params["affine"].numpy()
    assert np.all((a[:, [0, 1], [0, 1]] >= 1 / 1.2) & (a[:, [0, 1], [0, 1]] <= 1.2))
  if family == "rotate":
    angle = np.degrees(np.arctan2(params["affine"][:, 1, 0], params["affine"][:, 0, 0]))
    assert np.all(np.abs(angle) <= 15.0 + 1e-4)


def _reference_apply(images, params):
  """apply() from the module docstring, pixel by pixel in float64 numpy: colour (brightness, saturation
  about the channel mean, contrast about the image mean), then out(x, y) = bilinear sample of the input
  at A @ (p - ctr) + ctr + t with zeros outside, then the cutout box set to zero."""
  images = np.asarray(images, np.float64)
  p = {k: np.asarray(v) for k, v in params.items()}
  b, h, w, _ = images.shape
  cx, cy = (w - 1) / 2, (h - 1) / 2
  out = np.zeros_like(images)
  for i in range(b):
    img = images[i] + float(p["brightness"][i])
    s, c = float(p["saturation"][i]), float(p["contrast"][i])
    img = img * s + img.mean(axis=-1, keepdims=True) * (1 - s)
    img = img * c + img.mean() * (1 - c)
    a = p["affine"][i].astype(np.float64)
    for row in range(h):
      for col in range(w):
        src_x = a[0, 0] * (col - cx) + a[0, 1] * (row - cy) + cx + a[0, 2]
        src_y = a[1, 0] * (col - cx) + a[1, 1] * (row - cy) + cy + a[1, 2]
        x0, y0 = math.floor(src_x), math.floor(src_y)
        for yy in (y0, y0 + 1):
          for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
              out[i, row, col] += (1 - abs(src_x - xx)) * (1 - abs(src_y - yy)) * img[yy, xx]
    y_start, y_end, x_start, x_end = p["cutout"][i]
    out[i, y_start:y_end, x_start:x_end] = 0.0
  return out


# The params entries each family changes; every other entry keeps its identity value.
_FAMILY_KEYS = {"color": ("brightness", "saturation", "contrast"), "crop": ("affine",),
                "cutout": ("cutout",), "flip": ("affine",), "scale": ("affine",), "rotate": ("affine",)}


def test_full_strategy_applies_the_drawn_family_by_the_documented_formulas():
  x = _images([3, 6, 7, 2], tf.float64)
  identity = {"brightness": np.zeros(3), "saturation": np.ones(3), "contrast": np.ones(3),
              "affine": np.tile([[1.0, 0, 0], [0, 1.0, 0]], [3, 1, 1]), "cutout": np.zeros([3, 4])}
  drawn = set()
  for i in range(60):
    params = augment.sample(augment.STRATEGY, [3, 6, 7, 2], _seed(i))
    family = augment.FAMILIES[int(params["family"])]
    for key, value in identity.items():
      if key not in _FAMILY_KEYS[family]:
        np.testing.assert_array_equal(params[key], value, err_msg=f"{family}: {key}")
      elif family != "flip":  # (a flip draw may leave all three images unflipped)
        assert not np.array_equal(params[key], value), (family, key)
    np.testing.assert_allclose(augment.apply(x, params), _reference_apply(x, params), atol=1e-12,
                               err_msg=family)
    drawn.add(family)
    if len(drawn) == len(augment.FAMILIES):
      break
  assert drawn == set(augment.FAMILIES)


def test_deterministic_different_seeds_and_identity():
  x = _images()
  p1 = augment.sample(augment.STRATEGY, SHAPE, _seed(5))
  again = augment.sample(augment.STRATEGY, SHAPE, _seed(5))
  for key in p1:  # the same seed draws the same values (the output is their function, test above)
    np.testing.assert_array_equal(again[key], p1[key], err_msg=key)
  for family in augment.FAMILIES:
    a = augment.apply(x, augment.sample(family, SHAPE, _seed(5)))
    b = augment.apply(x, augment.sample(family, SHAPE, _seed(6)))
    assert not np.array_equal(a, b), family
  for dtype in (tf.float32, tf.float64):
    xd = _images(dtype=dtype)
    np.testing.assert_array_equal(augment.apply(xd, augment.sample("none", SHAPE, _seed(5))), xd)
    # A family's identity values are exact too (scale 1, angle 0, no shift, empty cutout).
    np.testing.assert_array_equal(augment.apply(xd, _params(4, saturation=[1.0] * 4)), xd)


def test_per_sample_values_differ_within_batch():
  for family, key in (("color", "brightness"), ("crop", "affine"), ("cutout", "cutout"),
                      ("scale", "affine"), ("rotate", "affine")):
    values = augment.sample(family, [8, 16, 16, 3], _seed(7))[key].numpy().reshape(8, -1)
    assert len({v.tobytes() for v in values}) > 1, family
  flips = augment.sample("flip", [32, 8, 8, 3], _seed(7))["affine"].numpy()[:, 0, 0]
  assert set(flips) == {-1.0, 1.0}


@pytest.mark.parametrize("family", augment.FAMILIES)
def test_image_gradient_matches_finite_differences(family):
  shape = [2, 6, 6, 2]
  rng = np.random.default_rng(11)
  x = tf.constant(rng.normal(size=shape))
  weights = tf.constant(rng.normal(size=shape))
  direction = tf.constant(rng.normal(size=shape))
  params = augment.sample(family, shape, _seed(13))

  def f(images):
    return tf.reduce_sum(weights * augment.apply(images, params))

  with tf.GradientTape() as tape:
    tape.watch(x)
    y = f(x)
  grad = tf.convert_to_tensor(tape.gradient(y, x))
  analytic = float(tf.reduce_sum(grad * direction))
  eps = 1e-3
  numeric = float((f(x + eps * direction) - f(x - eps * direction)) / (2 * eps))
  assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def test_second_order_through_apply_under_xla():
  """Nested tapes: the Hessian-vector product of a quadratic of apply matches finite differences."""
  shape = [2, 6, 6, 2]
  rng = np.random.default_rng(12)
  x, weights, v = (tf.constant(rng.normal(size=shape)) for _ in range(3))
  params = augment.sample("rotate", shape, _seed(2))

  def grad(images):
    with tf.GradientTape() as tape:
      tape.watch(images)
      loss = tf.reduce_sum(weights * augment.apply(images, params) ** 2)
    return tf.convert_to_tensor(tape.gradient(loss, images))

  @tf.function(jit_compile=True)
  def hvp(images):
    with tf.GradientTape() as outer:
      outer.watch(images)
      g = tf.reduce_sum(grad(images) * v)
    return tf.convert_to_tensor(outer.gradient(g, images))

  eps = 1e-3
  numeric = (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(hvp(x), numeric, atol=1e-9)


def test_flip_reverses_width_exactly():
  x = _images([2, 5, 6, 3])
  params = _params(2, affine=[[[-1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 0]]])
  out = augment.apply(x, params).numpy()
  np.testing.assert_array_equal(out[0], x.numpy()[0, :, ::-1])
  np.testing.assert_array_equal(out[1], x.numpy()[1])
  # Sampled flips are exact too.
  sampled = augment.sample("flip", [16, 5, 6, 3], _seed(2))
  x = _images([16, 5, 6, 3])
  out = augment.apply(x, sampled).numpy()
  for i, sign in enumerate(sampled["affine"].numpy()[:, 0, 0]):
    np.testing.assert_array_equal(out[i], x.numpy()[i, :, ::-1] if sign < 0 else x.numpy()[i])


def _shifted(image, tx, ty):
  """Reference crop: out[y, x] = image[y + ty, x + tx], zero outside."""
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  for y in range(h):
    for x in range(w):
      if 0 <= y + ty < h and 0 <= x + tx < w:
        out[y, x] = image[y + ty, x + tx]
  return out


def test_crop_shifts_exactly_with_zero_fill():
  x = _images([3, 7, 8, 2])
  shifts = [(2, -1), (-3, 0), (0, 1)]
  params = _params(3, affine=[[[1, 0, tx], [0, 1, ty]] for tx, ty in shifts])
  out = augment.apply(x, params).numpy()
  for i, (tx, ty) in enumerate(shifts):
    np.testing.assert_array_equal(out[i], _shifted(x.numpy()[i], tx, ty))
  # Sampled crops: integer shifts within ±int(0.125*16 + 0.5) = ±2, applied exactly.
  shape = [32, 16, 16, 2]
  sampled = augment.sample("crop", shape, _seed(4))
  a = sampled["affine"].numpy()
  np.testing.assert_array_equal(a[:, :, :2], np.tile(np.eye(2), [32, 1, 1]))
  t = a[:, :, 2]
  assert np.all(t == np.round(t)) and np.abs(t).max() == 2 and len(np.unique(t)) == 5
  x = _images(shape)
  out = augment.apply(x, sampled).numpy()
  for i in range(shape[0]):
    np.testing.assert_array_equal(out[i], _shifted(x.numpy()[i], int(t[i, 0]), int(t[i, 1])))


def test_cutout_zeroes_documented_square():
  x = tf.ones([2, 8, 8, 2], tf.float64)
  params = _params(2, cutout=[[2, 6, 1, 5], [0, 3, 6, 8]])
  out = augment.apply(x, params).numpy()
  expected = np.ones([2, 8, 8, 2])
  expected[0, 2:6, 1:5] = 0
  expected[1, 0:3, 6:8] = 0
  np.testing.assert_array_equal(out, expected)
  # Sampled: side int(0.5*8 + 0.5) = 4, rows [o - 2, o + 2) clipped, o in 0..8.
  sampled = augment.sample("cutout", [256, 8, 8, 1], _seed(9))
  box = sampled["cutout"].numpy()
  assert np.all((box[:, 0] >= 0) & (box[:, 1] <= 8) & (box[:, 2] >= 0) & (box[:, 3] <= 8))
  sizes = box[:, [1, 3]] - box[:, [0, 2]]
  assert sizes.max() == 4 and sizes.min() == 2  # clipped at both borders for offsets 0 and 8
  starts = box[:, [0, 2]]
  # Unclipped offsets o = start + 2 cover 0..8 (inclusive) per axis.
  offsets = np.where(box[:, [0, 2]] == 0, box[:, [1, 3]] - 2, starts + 2)
  assert set(offsets.ravel()) == set(range(9))
  out = augment.apply(tf.ones([256, 8, 8, 1]), sampled).numpy()
  np.testing.assert_array_equal(out.sum(axis=(1, 2, 3)), 64 - sizes.prod(axis=1))


def test_scale_one_and_rotate_zero_are_identity_and_rotate_90_is_rot90():
  x = _images([2, 7, 7, 3], tf.float64)
  for affine in ([[1.0, 0, 0], [0, 1.0, 0]],
                 [[math.cos(0.0), -math.sin(0.0), 0], [math.sin(0.0), math.cos(0.0), 0]]):
    np.testing.assert_array_equal(augment.apply(x, _params(2, affine=[affine] * 2)), x)
  rot90 = _params(2, affine=[[[0, -1, 0], [1, 0, 0]]] * 2)
  np.testing.assert_array_equal(augment.apply(x, rot90), np.rot90(x.numpy(), axes=(1, 2)))


def test_scale_matches_reference_bilinear():
  """Scale by 0.5 about the centre of a 5x5 image samples half-way points exactly."""
  x = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
  params = _params(1, affine=[[[0.5, 0, 0], [0, 0.5, 0]]])
  out = augment.apply(tf.constant(x), params).numpy()[0, :, :, 0]
  coords = 0.5 * (np.arange(5) - 2) + 2  # 1, 1.5, 2, 2.5, 3
  expected = coords[:, None] * 5 + coords[None, :]  # bilinear of a linear image is exact
  np.testing.assert_allclose(out, expected, atol=1e-12)
  # Enlarging (factor 2) reads outside: zero beyond the border, partial weight at 4.5 -> 0.
  params = _params(1, affine=[[[2.0, 0, 0], [0, 1.0, 0]]])
  out = augment.apply(tf.constant(x), params).numpy()[0, :, :, 0]
  np.testing.assert_array_equal(out[:, [0, 4]], np.zeros([5, 2]))
  np.testing.assert_array_equal(out[:, 1:4], x[0, :, 0:5:2, 0])


def test_color_formulas():
  x = _images([2, 4, 4, 3], tf.float64).numpy()
  params = _params(2, brightness=[0.25, -0.5], saturation=[0.5, 2.0], contrast=[1.5, 0.5])
  out = augment.apply(tf.constant(x), params).numpy()
  for i, (b, s, c) in enumerate([(0.25, 0.5, 1.5), (-0.5, 2.0, 0.5)]):
    y = x[i] + b
    m = y.mean(axis=-1, keepdims=True)
    y = (y - m) * s + m
    m = y.mean()
    y = (y - m) * c + m
    np.testing.assert_allclose(out[i], y, atol=1e-12)


def test_single_family_choice_is_uniform():
  n = 3000
  seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(77, tf.int64))], axis=1)

  @tf.function
  def families(seeds):
    return tf.map_fn(lambda s: augment.sample(augment.STRATEGY, [1, 8, 8, 1], s)["family"], seeds,
                     fn_output_signature=tf.int32)

  counts = np.bincount(families(seeds).numpy(), minlength=6)
  assert counts.sum() == n and len(counts) == 6
  # Expected 500 each, std ~20: a 4-sigma bound of ±0.03 on the frequency.
  np.testing.assert_allclose(counts / n, 1 / 6, atol=0.03)
  chi2 = ((counts - n / 6) ** 2 / (n / 6)).sum()
  assert chi2 < 20.5  # p = 0.001 for 5 degrees of freedom
  sub = augment.sample("crop_flip", SHAPE, _seed(1))["family"]
  assert int(sub) in (augment.FAMILIES.index("crop"), augment.FAMILIES.index("flip"))


def test_stacked_params_indexed_in_while_loop():
  x = _images([3] + SHAPE)
  steps = [augment.sample(augment.STRATEGY, SHAPE, _seed(i)) for i in (20, 21, 22)]
  assert len({int(p["family"]) for p in steps}) > 1
  stacked = tf.nest.map_structure(lambda *p: tf.stack(p), *steps)

  @tf.function
  def run(x, stacked):
    out = tf.TensorArray(tf.float32, size=3)
    for i in tf.range(3):
      out = out.write(i, augment.apply(x[i], tf.nest.map_structure(lambda p: p[i], stacked)))
    return out.stack()

  got = run(x, stacked).numpy()
  for i, params in enumerate(steps):
    np.testing.assert_array_equal(got[i], augment.apply(x[i], params))


def test_xla_matches_eager():
  x = _images([4, 16, 16, 3])

  generator = tf.random.Generator.from_seed(3)

  @tf.function(jit_compile=True)
  def augmented(x, seed):
    params = augment.sample(augment.STRATEGY, [4, 16, 16, 3], seed)
    return augment.apply(x, params), params

  seen = set()
  # Small seeds and full-range int64 seeds as a tf.random.Generator makes them.
  for seed in [_seed(i) for i in range(6)] + [generator.make_seeds(1)[:, 0] for _ in range(6)]:
    got, got_params = augmented(x, seed)
    params = augment.sample(augment.STRATEGY, [4, 16, 16, 3], seed)
    for key in ("family", "cutout"):
      np.testing.assert_array_equal(got_params[key], params[key])
    for key in ("brightness", "saturation", "contrast", "affine"):
      np.testing.assert_allclose(got_params[key], params[key], atol=1e-6)  # sin/cos may differ by 1 ulp
    np.testing.assert_allclose(got, augment.apply(x, params), atol=1e-5)
    np.testing.assert_allclose(augment.apply(x, got_params), augment.apply(x, params), atol=1e-5)
    seen.add(int(params["family"]))
  assert len(seen) >= 4

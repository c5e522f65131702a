"""Small shared pieces for tests: float64 Keras set-up and finite differences."""

import contextlib

import keras
import numpy as np


@contextlib.contextmanager
def float64():
  """Builds Keras layers in float64 inside the block (both floatx and the dtype policy must change)."""
  old_floatx, old_policy = keras.backend.floatx(), keras.config.dtype_policy()
  keras.backend.set_floatx("float64")
  keras.config.set_dtype_policy("float64")
  try:
    yield
  finally:
    keras.backend.set_floatx(old_floatx)
    keras.config.set_dtype_policy(old_policy)


def central_difference(fn, x, index, eps=1e-5):
  """(fn(x + eps·e_index) − fn(x − eps·e_index)) / 2eps for a numpy array x and a flat index."""
  plus, minus = x.copy(), x.copy()
  plus.flat[index] += eps
  minus.flat[index] -= eps
  return (float(fn(plus)) - float(fn(minus))) / (2 * eps)


def rel_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

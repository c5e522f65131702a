"""TensorBoard output of a run: scalars, synthetic-image grids in pixel space, the flags as text."""

import numpy as np
import tensorflow as tf


def class_grid(pixels, ipc, max_classes=100, columns=10):
  """One tile per class (its first synthetic image) laid out in a grid, for a fixed sample of classes.

  Args:
    pixels: [n, h, w, c] images in [0, 1] pixel space, class-sorted with `ipc` rows per class.
    ipc: images per class.
    max_classes: at most this many classes are shown (evenly spaced, so ImageNet shows the same 100).
    columns: tiles per grid row.
  Returns:
    float32 [1, H, W, c] for tf.summary.image.
  """
  pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
  num_classes = pixels.shape[0] // ipc
  classes = np.linspace(0, num_classes - 1, min(num_classes, max_classes)).round().astype(int)
  tiles = pixels[classes * ipc]
  columns = min(columns, len(tiles))
  rows = -(-len(tiles) // columns)
  pad = rows * columns - len(tiles)
  tiles = np.concatenate([tiles, np.zeros((pad,) + tiles.shape[1:], np.float32)])
  h, w, c = tiles.shape[1:]
  grid = tiles.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
  return grid[None]


def scalars(metrics, step):
  """Writes every entry of a {name: number} dict as a scalar at `step` (to the default writer)."""
  for name, value in metrics.items():
    tf.summary.scalar(name, value, step=step)


def flags_text(text, step=0):
  """The effective flags, shown in TensorBoard's text tab (markdown code block)."""
  tf.summary.text("flags", "```\n" + text + "\n```", step=step)

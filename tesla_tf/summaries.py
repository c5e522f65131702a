"""TensorBoard output of a run: scalars, synthetic-image grids in pixel space, the flags as text."""

import numpy as np
import tensorflow as tf


def tile_rows(num_rows, ipc, max_classes=100):
  """The rows an image grid shows: the first synthetic image of each of at most `max_classes` classes,
  evenly spaced (so ImageNet shows the same 100), of a class-sorted set of `num_rows` rows.

  Only these rows are read and converted to pixels, never the whole set (bounded memory at any n).
  Returns:
    int64 numpy [k], k = min(num_rows // ipc, max_classes).
  """
  num_classes = num_rows // ipc
  classes = np.linspace(0, num_classes - 1, min(num_classes, max_classes)).round().astype(np.int64)
  return classes * ipc


def class_grid(tiles, columns=10):
  """Tiles laid out in a grid, row-major, the last grid row padded with black.

  Args:
    tiles: [k, h, w, c] images in [0, 1] pixel space (`tile_rows` of the set); clipped to [0, 1].
    columns: tiles per grid row.
  Returns:
    float32 [1, H, W, c] for tf.summary.image.
  """
  tiles = np.clip(np.asarray(tiles, np.float32), 0.0, 1.0)
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

"""Real data: dataset registry and loaders, preprocessing, tf.data pipelines, tf.data service helpers."""

"""tesla_tf: TESLA trajectory-matching dataset distillation in TensorFlow/Keras."""

__version__ = "0.1.0"

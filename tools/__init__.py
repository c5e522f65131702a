"""Command-line tools (tools/*.py), installed as the subpackage tesla_tf.tools."""

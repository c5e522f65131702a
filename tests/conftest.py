"""Shared test set-up: quiet TF. Tools run as subprocesses find tesla_tf through the editable install."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

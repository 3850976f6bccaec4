"""The shipped models: ONNX files and their model cards (a checkout also keeps the ``.pt``
checkpoints they were exported from).

A data package with no code and no dependencies, so the torch-free runtime finds the models
by importing it, and every package above it may too.
"""

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent

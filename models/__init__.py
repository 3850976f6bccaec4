"""LGLD-Net in PyTorch: the model, checkpoint I/O and the MAC counter.

Importing ``lgld.models`` itself needs no torch; its submodules do. Shipped, trained models
live in ``zoo/`` beside this file.
"""

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent / "zoo"

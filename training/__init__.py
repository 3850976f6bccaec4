"""Training and evaluation of LGLD-Net: data layouts and splits, recipes, loop, metrics."""

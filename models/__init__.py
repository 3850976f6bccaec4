"""LGLD-Net in PyTorch: the model, checkpoint I/O and the MAC counter.

Importing ``lgld.models`` itself needs no torch; its submodules do. Shipped, trained models
live in the ``lgld.zoo`` data package.
"""

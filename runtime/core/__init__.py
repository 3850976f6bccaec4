"""What every lgld package shares, torch-free: preprocessing, model metadata, the ONNX session,
the model zoo, image folders, file hashing and command-line error plumbing.

``lgld.training``, ``lgld.export`` and the runtime application import these modules, never the
runtime's internals, so the chain stays one-way (docs/architecture.md).
"""

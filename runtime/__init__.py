"""The torch-free runtime: preprocessing, the ONNX session, sources, pipeline, overlay, server.

Nothing here imports ``lgld.models``, ``lgld.training`` or ``lgld.export`` (or torch).
"""

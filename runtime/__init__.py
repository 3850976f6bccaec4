"""The torch-free runtime (``lgld-run``): sources, pipeline, trust, results, stats, web, overlay.

Nothing here imports ``lgld.models``, ``lgld.training`` or ``lgld.export`` (or torch); see
docs/architecture.md for the module map and the import rules ``lint-imports`` enforces.
"""

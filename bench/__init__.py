"""``lgld-bench``: how fast is lgld, measured against the paper's implementation in one run.

For every thread count asked for, one table, all rows measured in the same process on the same
machine, batch 1, with the same thread count for every row:

1. the reference: the paper-style eager PyTorch LGLD-Net (:mod:`.reference`), same weights as 2;
2. lgld's PyTorch model, eager;
3. lgld's ONNX model through the runtime's own ``OnnxClassifier`` (and its INT8 version, if
   one is given or lies next to the model);
4. the end-to-end live pipeline: the runtime's demo source at 640x480 driven through the
   runtime's own ``Pipeline`` and one MJPEG viewer served by the runtime's own streaming code
   (:mod:`.pipeline_row`), in results per second; plus the time per stage;
5. the machine's fp32 multiply-add peak (SGEMM, :mod:`.peak`) and each row's achieved GMAC/s as
   a fraction of it.

Model rows 1-3 are timed interleaved (:mod:`.timing`) so a change in background load hits every
row alike. torch is optional: without it (e.g. on a Raspberry Pi) rows 1-2 are skipped with a
note. Modules, one job each: ``machine`` (what was measured on), ``models`` (the timed model and
the matching checkpoint), ``timing``, ``inputs``, ``parity``, ``pipeline_row``, ``table`` (one
table), ``report`` (targets and text), ``ort_profile`` (--profile), ``study`` (--study),
``menu`` (--menu), ``rss`` (--rss-frames), ``peak``, ``reference``, ``cli``.
"""

from __future__ import annotations


class BenchError(RuntimeError):
    """A benchmark input is unusable (one-line reason)."""


__all__ = ["BenchError"]

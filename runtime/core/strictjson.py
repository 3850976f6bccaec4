"""Strict JSON out: every document lgld writes (log lines, API answers, snapshot files) parses
in any JSON parser. Python's ``json`` writes ``NaN``/``Infinity`` by default, which is not JSON;
here non-finite numbers become ``null`` and numpy scalars become plain numbers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """A copy of value with every non-finite float replaced by None (dicts, lists, tuples)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps of :func:`finite` (value), refusing anything still not strict JSON."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)

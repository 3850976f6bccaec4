"""lgld.runtime (every module, the CLI included) imports and classifies with torch and onnx
unavailable, as on a Raspberry Pi."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ASSETS

BLOCKER = r'''
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    """Make torch and onnx (and their submodules) unimportable."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "onnx", "onnxsim"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
for blocked in ("torch", "onnx"):
    try:
        __import__(blocked)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker failed: {blocked} imported")
'''

SCRIPT = BLOCKER + r'''
import importlib, pkgutil
import lgld.runtime

names = sorted(
    m.name.removeprefix("lgld.runtime.")
    for m in pkgutil.walk_packages(lgld.runtime.__path__, "lgld.runtime.")
)
for name in names:
    importlib.import_module(f"lgld.runtime.{name}")
print("modules", " ".join(names))

from lgld.runtime.core.preprocess import read_image
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.zoo import zoo_dir

classifier = OnnxClassifier(sys.argv[1], threads=1)
probs = classifier.probabilities([read_image(sys.argv[2])])
assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 1e-4, probs
assert zoo_dir() is not None

from lgld.runtime import cli

rc = cli.main(["--model", sys.argv[1], "--source", "demo", "--frames", "3", "--preview", "off",
               "--threads", "1"])
assert rc == 0, rc
loaded = [m for m in sys.modules if m.partition(".")[0] in ("torch", "onnx")
          or m.startswith(("lgld.models", "lgld.training", "lgld.export"))]
assert not loaded, f"imported: {loaded}"
print("classified", classifier.classes[int(probs.argmax())])
'''


def test_runtime_works_without_torch(tiny_model):  # noqa: F811
    image = next(ASSETS.glob("all-pre*.jpg"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model), str(image)],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = proc.stdout.split("modules ", 1)[1].splitlines()[0].split()
    for expected in ("cli", "config", "pipeline", "core.preprocess", "core.classifier", "core.zoo"):
        assert expected in modules, modules
    assert "classified " in proc.stdout

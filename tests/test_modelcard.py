"""Model cards ship in the wheel: their reproduce lines name no machine's paths."""

from __future__ import annotations

from pathlib import Path

from lgld.training import modelcard
from lgld.training.modelcard import _shown_path

REPO = Path(__file__).resolve().parents[1]
INSTALLED = Path(modelcard.__file__).resolve().parents[1]  # the checkout, or site-packages/lgld


def test_recorded_paths_are_repo_relative_or_a_placeholder(tmp_path: Path) -> None:
    assert _shown_path(str(tmp_path / "data" / "WBC5"), "DATA") == "DATA/WBC5"
    assert _shown_path(str(INSTALLED / "zoo" / "lgld-wbc5-128.pt"), "PATH") == \
        "zoo/lgld-wbc5-128.pt"
    assert _shown_path("runs/wbc128/best.pt", "PATH") == "runs/wbc128/best.pt"
    assert _shown_path(None, "DATA") == "None"


def test_shipped_cards_name_no_machine_path() -> None:
    for card in sorted((REPO / "zoo").glob("*.md")):
        text = card.read_text()
        assert "/work/" not in text and "/home/" not in text, card.name

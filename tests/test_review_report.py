"""``lgld-report``: the HTML report, CSV and JSON of a count session, and its error lines."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from review_logs import LogBuilder, expected_reviewed, session_cells

from lgld.runtime.core.files import file_sha256
from lgld.runtime.review import report as report_mod
from lgld.runtime.review.cli import main

ZOO = Path(__file__).resolve().parents[1] / "zoo"


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, plus every <img> src and <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self.scripts = 0
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append((attrs.get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag in ("link", "a") and (attrs.get("href")):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _counts_table(page: _Tables) -> dict[str, list[str]]:
    """class -> [model, model %, reviewed, reviewed %, change] from the first counts table."""
    rows = next(rows for cls, rows in page.tables if cls == "counts")
    return {row[0]: row[1:] for row in rows[1:]}


def _reviewed_session(tmp_path: Path, n: int = 100, crops: str | None = "copy"):
    b = LogBuilder(tmp_path / "pi", seed=11, crops=crops)
    sid = b.start(sample="slide 7 <donor A>")
    first = [b.cell(name, confidence=0.9)["track"] for name in
             ("Neutrophil", "Neutrophil", "Lymphocyte", "Lymphocyte")]
    b.cells(n - 4)
    b.review(first[0], "reclassify", "Monocyte")
    b.review(first[1], "reject")
    b.review(first[2], "reclassify", "Eosinophil")
    b.review(first[3], "confirm")
    b.end()
    return b, sid, b.write()


def test_the_html_report_counts_match_the_log_and_the_page_is_self_contained(tmp_path, capsys):
    b, sid, log = _reviewed_session(tmp_path)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    assert main([str(log), "-o", str(out)]) == 0
    assert sid in capsys.readouterr().out
    page = _parse(out)
    table = _counts_table(page)
    model: dict[str, int] = {}
    for e in session_cells(b.events, sid):
        model[e["class"]] = model.get(e["class"], 0) + 1
    reviewed = expected_reviewed(b.events, sid)
    for name in set(model) | set(reviewed):
        assert int(table[name][0]) == model.get(name, 0), name
        assert table[name][1] == f"{100 * model.get(name, 0) / 100:.1f}%"
        assert int(table[name][2]) == reviewed.get(name, 0), name
        assert table[name][3] == f"{100 * reviewed.get(name, 0) / 99:.1f}%"
    assert table["total"][:3] == ["100", "100%", "99"]
    assert table["rejected (artefacts)"][2] == "1"
    # one self-contained file: every image inlined, no scripts, nothing fetched
    assert len(page.images) == 100
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    assert page.scripts == 0 and not page.links
    text = out.read_text()
    assert "http://" not in text and "https://" not in text
    assert "slide 7 &lt;donor A&gt;" in text  # the label is escaped
    assert out.stat().st_size < 5_000_000
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left


def test_missing_crop_files_are_shown_as_missing_and_counted(tmp_path):
    b, sid, log = _reviewed_session(tmp_path, n=12)
    gone = [c for c in session_cells(b.events, sid)][:3]
    for cell in gone:
        (log.parent / cell["crop"]).unlink()
    out, summary = tmp_path / "r.html", tmp_path / "s.json"
    assert main([str(log), "-o", str(out), "--json", str(summary)]) == 0
    page = _parse(out)
    assert len(page.images) == 9
    assert out.read_text().count(">crop missing<") == 3
    assert json.loads(summary.read_text())["crops"] == {"found": 9, "missing": 3, "none": 0}


def test_csv_has_one_row_per_counted_cell_with_its_reviewed_class(tmp_path):
    b, sid, log = _reviewed_session(tmp_path, n=40, crops=None)
    out = tmp_path / "cells.csv"
    assert main([str(log), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    events = session_cells(b.events, sid)
    assert [int(r["track"]) for r in rows] == [e["track"] for e in events]
    assert [r["model_class"] for r in rows] == [e["class"] for e in events]
    reviewed: dict[str, int] = {}
    for r in rows:
        if r["reviewed_class"] != "rejected":
            reviewed[r["reviewed_class"]] = reviewed.get(r["reviewed_class"], 0) + 1
    assert reviewed == expected_reviewed(b.events, sid)
    assert sum(r["review"] != "" for r in rows) == 4


def test_json_summary_has_model_and_reviewed_counts_timing_and_confidence(tmp_path):
    b, sid, log = _reviewed_session(tmp_path, n=50, crops=None)
    out = tmp_path / "s.json"
    assert main([str(log), "--session", sid, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["session"] == sid and data["cells"] == 50 and data["reviewed_total"] == 49
    assert {k: v for k, v in data["reviewed_counts"].items() if v} == expected_reviewed(
        b.events, sid)
    assert sum(data["model_percent"].values()) == pytest.approx(100, abs=0.05)
    assert sum(data["confidence"]["histogram"]) == 50
    assert data["review"] == {"events": 4, "cells_reviewed": 4, "corrections": 3,
                              "rejected": 1, "orphan_events": 0}
    assert data["cells_per_min"] == pytest.approx(50 * 60 / data["duration_s"], rel=0.01)
    assert data["log"]["skipped_lines"] == 0


def test_an_unknown_session_is_one_line_listing_the_sessions_and_nothing_is_written(
        tmp_path, capsys):
    b = LogBuilder(tmp_path, seed=3, crops=None)
    ids = [b.start(), b.start()]
    log = b.write()
    out = tmp_path / "r.html"
    assert main([str(log), "--session", "nope", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lgld-report: error: session 'nope'")
    assert all(sid in err for sid in ids)
    assert not out.exists()


def test_a_missing_or_unreadable_log_is_one_line_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main([str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "log not found" in err
    assert main([str(tmp_path), "-o", str(out)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_does_not_exist_is_one_line(tmp_path, capsys):
    b = LogBuilder(tmp_path, seed=3, crops=None)
    b.start()
    b.cells(2)
    assert main([str(b.write()), "-o", str(tmp_path / "no" / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err


def test_nothing_to_write_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "x.jsonl")])
    assert exit_.value.code == 2
    assert "nothing to write" in capsys.readouterr().err


def test_list_prints_every_session(tmp_path, capsys):
    b = LogBuilder(tmp_path, seed=3, crops=None)
    ids = [b.start(sample="a"), b.start(sample="b")]
    b.cells(3)
    assert main([str(b.write()), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert "3 cells" in lines[1]


def test_the_model_card_beside_the_model_file_is_included(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(ZOO / "lgld-wbc5.md", models / "lgld-wbc5.md")
    shutil.copyfile(ZOO / "lgld-wbc5.onnx", models / "lgld-wbc5.onnx")
    b = LogBuilder(tmp_path / "pi", seed=3, crops=None)
    b.start(model_path=str(models / "lgld-wbc5.onnx"), sha256=file_sha256(ZOO / "lgld-wbc5.onnx"))
    b.cells(3)
    out = tmp_path / "r.html"
    assert main([str(b.write()), "-o", str(out)]) == 0
    text = out.read_text()
    assert "LGLD-Net WBC5: five white-blood-cell types" in text
    assert "Model card not found" not in text


def test_a_10000_cell_log_gives_a_report_whose_counts_match(tmp_path):
    b = LogBuilder(tmp_path, seed=5, crops=None)
    sid = b.start(target=10_000)
    b.cells(10_000, frames=1)
    b.review(17, "reject")
    b.end()
    out, summary = tmp_path / "r.html", tmp_path / "s.json"
    assert main([str(b.write()), "-o", str(out), "--json", str(summary)]) == 0
    data = json.loads(summary.read_text())
    assert data["cells"] == 10_000 and data["reviewed_total"] == 9_999
    assert {k: v for k, v in data["reviewed_counts"].items() if v} == expected_reviewed(
        b.events, sid)
    assert data["time_to_target_s"] is not None
    table = _counts_table(_parse(out))
    assert table["total"][:3] == ["10000", "100%", "9999"]
    assert out.stat().st_size < 5_000_000


def test_galleries_are_capped_per_class_and_the_report_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "GALLERY_CAP", 4)
    b = LogBuilder(tmp_path, seed=5, crops="shared")
    b.start()
    for name in ["Neutrophil"] * 6 + ["Lymphocyte"] * 3:
        b.cell(name, confidence=0.9)
    b.review(1, "reject")
    out = tmp_path / "r.html"
    assert main([str(b.write()), "-o", str(out)]) == 0
    page = _parse(out)
    assert len(page.images) == 4 + 3 + 1  # Neutrophil capped, Lymphocyte, rejected
    assert "showing the 4 least confident of 5" in out.read_text()

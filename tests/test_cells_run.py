"""lgld-run --mode cells end to end: the images contract, the live demo with its API, the log
events and resuming the count, and refusing models that are not white-cell models."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from conftest import free_port, get_json, post_json, read_jsonl, run_lgld_with_client, wait_for_json

from lgld.bench.cellmode import iou, voc_boxes
from lgld.runtime import cli
from lgld.runtime.core.jsonlog import read_records

BCCD = Path(__file__).resolve().parent / "data" / "bccd"
COMMON = ["--model", "wbc5-128", "--mode", "cells", "--preview", "off", "--threads", "1"]


def test_images_contract_one_line_per_image_with_cells_in_source_pixels(tmp_path, capsys):
    folder = tmp_path / "fields"
    folder.mkdir()
    for path in (BCCD / "images").glob("*.jpg"):
        shutil.copy(path, folder / path.name)
    blank = np.full((480, 640, 3), (205, 225, 235), np.uint8)
    cv2.imwrite(str(folder / "empty.png"), blank)
    small = cv2.imread(str(BCCD / "images" / "BloodImage_00000.jpg"))
    cv2.imwrite(str(folder / "half.jpg"), cv2.resize(small, (960, 720)))  # another size
    log = tmp_path / "out.jsonl"
    rc = cli.main([*COMMON, "--source", f"images:{folder}", "--log", str(log)])
    assert rc == 0
    frames = [r for r in read_jsonl(log) if r.get("event") == "frame"]
    assert sorted(Path(r["file"]).name for r in frames) == sorted(p.name for p in folder.iterdir())
    by_name = {Path(r["file"]).name: r for r in frames}
    assert by_name["empty.png"]["cells"] == []
    for name, record in by_name.items():
        for cell in record["cells"]:
            assert set(cell) >= {"box", "class", "confidence", "state"}
            assert cell["state"] in ("ok", "uncertain", "partial")
            assert all(isinstance(v, int) for v in cell["box"])
        truth_file = BCCD / "annotations" / (Path(name).stem + ".xml")
        if truth_file.exists():
            for box in voc_boxes(truth_file):
                assert max(iou(c["box"], box) for c in record["cells"]) >= 0.3
    (big,) = by_name["half.jpg"]["cells"]  # boxes are in the image's own pixels (1.5x)
    (ref,) = by_name["BloodImage_00000.jpg"]["cells"]
    for axis in (0, 1):
        centre, big_centre = (ref["box"][axis] + ref["box"][axis + 2]) / 2, (
            big["box"][axis] + big["box"][axis + 2]) / 2
        assert abs(1.5 * centre - big_centre) < 10
    assert "cells" in capsys.readouterr().out


def test_a_model_without_white_cell_classes_refuses_cell_mode(tmp_path, capsys, tiny_model):
    rc = cli.main(["--model", str(tiny_model), "--mode", "cells", "--source",
                   f"images:{BCCD / 'images'}", "--preview", "off"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "white-cell model" in err[0]


def test_live_demo_counts_serves_the_count_resets_and_resumes_from_the_log(tmp_path):
    log, crops = tmp_path / "log" / "results.jsonl", tmp_path / "crops"
    config = tmp_path / "c.toml"
    config.write_text(f'[source]\nwidth = 640\nheight = 480\nfps = 30.0\n'
                      f'[cells]\nmin_frames = 3\n[http]\nsnapshot_dir = "{crops}"\n')
    port = free_port()
    args = [*COMMON, "--config", str(config), "--source", "demo:cells", "--log", str(log),
            "--http", str(port)]
    base = f"http://127.0.0.1:{port}"
    seen: dict = {}

    def first_run() -> None:
        count = wait_for_json(f"{base}/api/count", lambda c: c["total"] >= 2)
        assert set(count["counts"]) == {"Basophil", "Eosinophil", "Lymphocyte", "Monocyte",
                                        "Neutrophil", "unclassified"}
        seen["first"] = count["session"]
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        assert 'lgld_cells_counted_total{class="Neutrophil"}' in metrics
        latest = get_json(f"{base}/api/latest")
        assert latest["mode"] == "cells" and latest["count"]["session"] == seen["first"]
        page = urllib.request.urlopen(f"{base}/", timeout=10).read().decode()
        assert "/api/count/reset" in page
        reset = post_json(f"{base}/api/count/reset")
        assert reset["total"] == 0 and reset["session"] != seen["first"]
        seen["labelled"] = post_json(f"{base}/api/session", {"sample": "slide 7"})
        assert seen["labelled"]["sample"] == "slide 7"
        seen["counted"] = wait_for_json(f"{base}/api/count", lambda c: c["total"] >= 1)

    assert run_lgld_with_client(args, first_run) == 0
    records = list(read_records(log))
    events = [r.get("event") for r in records]
    # the reset and "new count" ended two sessions; the stop (SIGTERM) leaves the third open
    assert events.count("session_start") == 3 and events.count("session_end") == 2
    cells = [r for r in records if r.get("event") == "cell"]
    assert len({(r["session"], r["track"]) for r in cells}) == len(cells)  # counted once
    assert all((log.parent / r["crop"]).is_file() for r in cells)
    frames = [r for r in records if r.get("event") == "frame"]
    assert frames and all("cells" in r and r["mode"] == "cells" for r in frames)

    # a restart continues the open session, sample label and all
    port = free_port()

    def second_run() -> None:
        resumed = wait_for_json(f"http://127.0.0.1:{port}/api/count",
                        lambda c: c["session"] == seen["labelled"]["session"])
        assert resumed["total"] >= seen["counted"]["total"] and resumed["sample"] == "slide 7"

    assert run_lgld_with_client([*args[:-1], str(port)], second_run) == 0

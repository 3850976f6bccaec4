"""lgld-eval --compare: two models on the same held-out images, side by side, with a paired
test and a one-line recommendation (models whose answers are known exactly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.train
pytest.importorskip("onnx")

from colour_models import RGB, colour_folder, colour_model  # noqa: E402

from lgld.training.compare import MIN_CELLS, main, mcnemar_p  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("colour")
    right = colour_model(d / "right.onnx", ["red", "green", "blue"])
    swapped = colour_model(d / "swapped.onnx", ["green", "red", "blue"])  # only blue right
    return right, swapped


def compare(tmp_path: Path, new: Path, current: Path, n: int, capsys) -> tuple[str, dict]:
    data = tmp_path / f"data{n}"
    if not data.exists():
        colour_folder(data, RGB, n)
    js = tmp_path / f"cmp{n}-{new.stem}.json"
    assert main(["--model", str(new), "--compare", str(current), "--data", str(data),
                 "--json", str(js), "--threads", "1"]) == 0
    return capsys.readouterr().out, json.loads(js.read_text())


def test_the_better_model_is_recommended_with_both_tables_side_by_side(models, tmp_path,
                                                                       capsys):
    right, swapped = models
    out, result = compare(tmp_path, right, swapped, 12, capsys)  # 36 cells >= MIN_CELLS
    assert result["num_images"] == 36 >= MIN_CELLS
    assert result["new"]["accuracy"] == 1.0
    assert result["current"]["accuracy"] == pytest.approx(12 / 36)
    assert result["paired"] == {"both_right": 12, "both_wrong": 0, "fixed": 24, "broken": 0,
                                "mcnemar_p": pytest.approx(2 / 2**24)}
    # rows are true classes in the current model's order, columns predicted
    assert result["current"]["classes"] == ["green", "red", "blue"]
    assert result["current"]["confusion_matrix"] == [[0, 12, 0], [12, 0, 0], [0, 0, 12]]
    assert result["new"]["confusion_matrix"] == [[12, 0, 0], [0, 12, 0], [0, 0, 12]]
    assert "100.00% (36/36)" in out and "33.33% (12/36)" in out
    # 12 of each class: no class is "the most frequent one"
    assert result["majority"] == {"class": "blue", "accuracy": pytest.approx(1 / 3), "tied": 3}
    assert "(always answering any one of the 3 equally frequent held-out classes scores " \
           "33.33%" in out and "the most frequent" not in out
    assert "current: swapped.onnx" in out and "new: right.onnx" in out
    assert out.strip().splitlines()[-1].startswith("recommendation: switch to right.onnx")

    out, result = compare(tmp_path, swapped, right, 12, capsys)  # the other way round
    assert result["paired"]["fixed"] == 0 and result["paired"]["broken"] == 24
    assert "recommendation: keep right.onnx" in out


def test_a_small_held_out_set_is_said_to_be_too_small(models, tmp_path, capsys):
    right, swapped = models
    out, result = compare(tmp_path, right, swapped, 2, capsys)  # 4 fixed of 6: p = 0.125
    assert result["num_images"] == 6
    assert ("recommendation: too few held-out cells to decide (6 < 30): the comparison leans "
            "to the new model") in out
    out, result = compare(tmp_path, right, swapped, 3, capsys)  # 6 fixed of 9: p = 0.031
    assert "recommendation: switch to right.onnx" in out
    assert "; but only 9 held-out cells: check before relying on it" in out


def test_classes_without_held_out_cells_are_named_in_the_recommendation(models, tmp_path,
                                                                        capsys):
    right, swapped = models
    data = colour_folder(tmp_path / "rg", RGB, 12)
    for f in (data / "blue").iterdir():
        f.unlink()
    (data / "blue").rmdir()
    assert main(["--model", str(right), "--compare", str(swapped), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "  blue (0)" in out
    assert "switch to right.onnx" in out and "not tested on blue (no held-out cells)" in out


def test_equal_models_are_no_reason_to_switch(models, tmp_path, capsys):
    right, _ = models
    out, result = compare(tmp_path, right, right, 12, capsys)
    assert result["paired"]["fixed"] == result["paired"]["broken"] == 0
    assert "recommendation: no significant difference: keep right.onnx" in out


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_p(1, 6) == pytest.approx(2 * (1 + 7) / 128)
    assert mcnemar_p(3, 3) == 1.0


def test_models_of_different_tasks_are_refused_in_one_line(models, tmp_path, capsys):
    right, _ = models
    other = colour_model(tmp_path / "other.onnx", ["cyan", "magenta", "yellow"])
    data = colour_folder(tmp_path / "d", RGB, 2)
    assert main(["--model", str(right), "--compare", str(other), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different classes" in err
    assert main(["--model", str(right), "--compare", str(right), "--data", str(data),
                 "--perturb"]) == 1
    assert "--perturb and --compare" in capsys.readouterr().err


def test_compare_checks_the_options_lgld_eval_checks(models, tmp_path, capsys):
    right, _ = models
    data = colour_folder(tmp_path / "d", RGB, 2)
    for flag, value in (("--threads", "0"), ("--limit-per-class", "0"), ("--batch-size", "0")):
        assert main(["--model", str(right), "--compare", str(right), "--data", str(data),
                     flag, value]) == 1  # a bad value: 1 (2 is a bad command line)
        err = capsys.readouterr().err
        assert err == f"lgld-eval: error: {flag} must be >= 1\n"

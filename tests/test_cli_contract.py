"""One contract for the seven commands (README, Exit codes): the exit status and a single
``PROG: error: ...`` line on stderr for a bad flag, a missing input, an unreadable file, a
missing extra and an interrupted run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lgld.bench import cli as bench_cli
from lgld.export import cli as export_cli
from lgld.lab import cli as dataset_cli
from lgld.runtime import cli as run_cli
from lgld.runtime.review import cli as report_cli
from lgld.training import cli as train_cli
from lgld.training import evaluate

# command -> (module and entry point, where a Ctrl-C lands in it, arguments per case);
# {missing} is a path that does not exist, {junk} a file of junk bytes, {out} a new output.
COMMANDS: dict[str, tuple[str, Callable, tuple[object, str], dict[str, list[str]]]] = {
    "lgld-train": ("lgld.training.cli:train_main", train_cli.train_main,
                   (train_cli, "run_training"), {
                       "missing": ["--data", "{missing}", "-o", "{out}"],
                       "unreadable": ["--data", "{junk}", "-o", "{out}"],
                       "extra": ["--data", "{tmp}", "-o", "{out}"]}),
    "lgld-eval": ("lgld.training.cli:eval_main", train_cli.eval_main, (evaluate, "run"), {
        "missing": ["--model", "{missing}.onnx", "--data", "{tmp}"],
        "unreadable": ["--model", "{junk}.onnx", "--data", "{tmp}"],
        "extra": ["--model", "{junk}.pt", "--data", "{tmp}"]}),
    "lgld-export": ("lgld.export.cli:main", export_cli.main, (export_cli, "run"), {
        "missing": ["{missing}.pt", "-o", "{out}"],
        "unreadable": ["{junk}.pt", "-o", "{out}"],
        "extra": ["{junk}.pt", "-o", "{out}"]}),
    "lgld-bench": ("lgld.bench.cli:main", bench_cli.main, (bench_cli, "run"), {
        "missing": ["--model", "{missing}.onnx"],
        "unreadable": ["--model", "{junk}.onnx"]}),
    "lgld-run": ("lgld.runtime.cli:main", run_cli.main, (run_cli, "run"), {
        "missing": ["--model", "{missing}.onnx", "--source", "images:{tmp}"],
        "unreadable": ["--model", "{junk}.onnx", "--source", "images:{tmp}"]}),
    "lgld-report": ("lgld.runtime.review.cli:main", report_cli.main, (report_cli, "run"), {
        "missing": ["{missing}.jsonl", "-o", "{out}"],
        "unreadable": ["{junk}.jsonl", "-o", "{out}"]}),
    "lgld-dataset": ("lgld.lab.cli:main", dataset_cli.main, (dataset_cli, "run"), {
        "missing": ["{missing}.jsonl", "-o", "{out}"],
        "unreadable": ["{junk}.jsonl", "-o", "{out}"]}),
}

# case -> exit status (lgld-run tells a model it cannot use apart: 3, README)
EXPECTED = {"bad flag": 2, "missing": 1, "unreadable": 1, "extra": 6, "interrupted": 130}
LGLD_RUN = {"missing": 3, "unreadable": 3}
EXTRA_LINE = "needs the train extra ({module} is not installed): pip install -e '.[train]'"
# the module the command finds missing first (lgld-bench, lgld-run, lgld-report and
# lgld-dataset need no extra: the runtime is torch-free, lgld-bench skips its torch rows)
FIRST_MISSING = {"lgld-train": "torch", "lgld-eval": "torch", "lgld-export": "onnx"}


def _args(template: list[str], tmp: Path) -> list[str]:
    junk = tmp / "junk"
    for suffix in ("", ".onnx", ".pt", ".jsonl"):
        (tmp / f"junk{suffix}").write_bytes(b"\x00\xffnot what it claims to be\n")
    return [a.format(missing=tmp / "missing", junk=junk, out=tmp / "out", tmp=tmp)
            for a in template]


def _one_error_line(err: str, prog: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


CASES = [(name, case) for name, (*_, cases) in COMMANDS.items()
         for case in ("bad flag", "missing", "unreadable", "interrupted") if case in cases
         or case in ("bad flag", "interrupted")]


@pytest.mark.parametrize("name,case", CASES)
def test_every_command_exits_with_its_code_and_one_error_line(name, case, tmp_path, capsys,
                                                            monkeypatch):
    _, main, (module, body), cases = COMMANDS[name]
    monkeypatch.chdir(tmp_path)
    if case == "bad flag":
        argv = [*_args(cases["missing"], tmp_path), "--no-such-flag"]
    elif case == "interrupted":  # Ctrl-C while the command works

        def interrupted(*_args, **_kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(module, body, interrupted)
        argv = _args(cases["missing"], tmp_path)
    else:
        argv = _args(cases[case], tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # an argparse exit not turned into a return value
        code = exc.code
    expected = LGLD_RUN.get(case, EXPECTED[case]) if name == "lgld-run" else EXPECTED[case]
    err = capsys.readouterr().err
    extra = FIRST_MISSING.get(name)
    if extra and EXTRA_LINE.format(module=extra) in err:  # a runtime-only install
        pytest.skip(f"without the train extra, {name} stops at it first (tested below)")
    assert code == expected, (name, case, err)
    if case == "interrupted":
        assert err.strip().splitlines()[-1] == f"{name}: interrupted", err
        return
    line = _one_error_line(err, name)
    if case == "bad flag":
        assert "--no-such-flag" in line and f"(see {name} --help)" in line


@pytest.mark.parametrize("name", [n for n, (*_, c) in COMMANDS.items() if "extra" in c])
def test_a_missing_extra_is_the_same_one_line_for_every_command(name, tmp_path):
    entry, _, _, cases = COMMANDS[name]
    module, function = entry.split(":")
    code = (f"import sys; sys.modules.update(torch=None, onnx=None, onnxsim=None)\n"
            f"from {module} import {function}\nsys.exit({function}(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, *_args(cases["extra"], tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == EXPECTED["extra"], done.stderr
    line = _one_error_line(done.stderr, name)
    assert EXTRA_LINE.format(module=FIRST_MISSING[name]) in line, line



def test_o_and_output_name_what_each_command_writes_and_the_old_spellings_still_work():
    parsed = [
        (train_cli._parser(), ["--data", "d"], "out"),
        (evaluate.build_parser(), ["--model", "m.onnx", "--data", "d"], "json_out"),
        (export_cli.build_parser(), ["m.pt"], "output"),
        (bench_cli.build_parser(), [], "json"),
        (report_cli.build_parser(), ["log.jsonl"], "output"),
        (dataset_cli._parser(), ["log.jsonl"], "out"),
    ]
    for parser, required, dest in parsed:
        for flag in ("-o", "--output"):
            assert str(getattr(parser.parse_args([*required, flag, "x"]), dest)) == "x", parser.prog
    assert train_cli._parser().parse_args(["--data", "d", "--out", "r"]).out == "r"
    assert str(dataset_cli._parser().parse_args(["l", "--out", "d"]).out) == "d"
    assert evaluate.build_parser().parse_args(["--model", "m", "--data", "d", "--json", "j"]
                                         ).json_out == "j"
    assert bench_cli.build_parser().parse_args(["--json", "j"]).json == "j"

"""Render a model card (Markdown) for a shipped model from its run folder and evaluations.

    python -m lgld.training.modelcard RUN_DIR --eval-json VAL.json [--test-json TEST.json]
        [--shifts-json SHIFTS.jsonl] [--note "..."] --title "..." --data-citation "..."
        --onnx zoo/x.onnx -o zoo/x.md

``--shifts-json``: one JSON object per line, ``{"label": ..., "clean": {"accuracy": ..,
"macro_f1": ..}, "-1 EV": {..}, ...}`` (accuracy and F1 in percent): the acquisition-shift
table (clean and each shift, old and new models side by side).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from pathlib import Path

from lgld.runtime.core.files import write_atomic
from lgld.training.metrics import format_report


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _metrics_row(name: str, m: dict) -> str:
    return (f"| {name} | {m['num_images']} | {_pct(m['accuracy'])} | {_pct(m['macro_precision'])} "
            f"| {_pct(m['macro_recall'])} | {_pct(m['macro_f1'])} |")


def _preprocess_line(run_dir: Path) -> str:
    from lgld.models.checkpoint import load_checkpoint

    spec = load_checkpoint(run_dir / "best.pt").preprocess
    if spec.illumination == "none":
        return "- Preprocessing: no illumination correction (older lgld preprocessing)."
    ref = ", ".join(f"{v:.0f}" for v in spec.background)
    return (f"- Preprocessing: illumination correction `{spec.illumination}`: the slide "
            f"background of every image is mapped to RGB ({ref}) (the training images' median "
            "background) by one gain per channel in linear light; recorded in the checkpoint "
            "and the ONNX metadata.")


def shift_table(rows: list[dict]) -> list[str]:
    """Markdown rows: one per model, accuracy / macro F1 per acquisition shift."""
    conditions = [k for k in rows[0] if k not in ("label", "model", "part")]
    lines = ["| model | " + " | ".join(conditions) + " |",
             "| --- | " + " | ".join("---" for _ in conditions) + " |"]
    for row in rows:
        cells = [f"{row[c]['accuracy']:.2f}% / {row[c]['macro_f1']:.2f}%" for c in conditions]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def render(
    run_dir: Path, val: dict, test: dict | None, title: str, citation: str, onnx: str,
    hardware: str, intended: str, limits: list[str], prior: Path | None = None,
    shifts: list[dict] | None = None, notes: list[str] | None = None,
) -> str:
    """The model card (Markdown) of a run and its evaluation."""
    split = json.loads((run_dir / "split.json").read_text())
    stages = run_stages(run_dir, prior)
    history = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    earlier = [h for st in stages[:-1] for h in st["history"]]
    best_epoch = max((h for h in history if h["input_size"] == history[-1]["input_size"]),
                     key=lambda h: h["val_macro_f1"])
    seconds = sum(h["seconds"] for h in earlier + history)
    counts = ", ".join(f"{k} {v}" for k, v in split["counts"].items())
    lines = [
        f"# {title}",
        "",
        f"ONNX model: `{onnx}` (checkpoint beside it, same name, `.pt`). "
        "Research and education only: **not a diagnostic device**.",
        "",
        "## Data",
        "",
        citation,
        "",
        f"Classes: {', '.join(split['classes'])}. Split by `lgld-train` (stratified, seed "
        f"{split['seed']}, byte-identical duplicates kept in one split: "
        f"{split['duplicates_found']} found): {counts}. The model was selected on **val** only; "
        "the test part was evaluated once, after selection. The maintainers' held-out images "
        "were never seen.",
        "",
        *_lab_section(run_dir),
        "## Training",
        "",
        *[
            f"- Stage {i + 1}: recipe `{st['recipe']}`, {len(st['history'])} epochs at input "
            f"sizes {sorted({h['input_size'] for h in st['history']})}"
            + (f", initialised from stage {i}'s best checkpoint" if i else "")
            + f"; {sum(h['seconds'] for h in st['history']) / 60:.0f} min."
            for i, st in enumerate(stages)
        ],
        f"- Shipped: the last stage's best epoch ({best_epoch['epoch']}) by validation macro F1.",
        f"- Wall time {seconds / 60:.1f} min in all on {hardware} (shared with other work).",
        "- Reproduce (`DATA`: the folder holding the data set): "
        + " then ".join(f"`{st['command']}`" for st in stages),
        _preprocess_line(run_dir),
        *[f"- {n}" for n in notes or []],
        "",
        "## Validation metrics (exported ONNX model through the runtime's code, `lgld-eval`)",
        "",
        "| split | images | accuracy | macro precision | macro recall | macro F1 |",
        "| --- | --- | --- | --- | --- | --- |",
        _metrics_row("val", val),
    ]
    if test:
        lines.append(_metrics_row("test (own split, after selection)", test))
    lines += ["", "```", format_report(val), "```", ""]
    lines += _shift_sections(val, shifts)
    lines += ["## Intended use", "", intended, "", "## Known limits", ""]
    lines += [f"- {x}" for x in limits]
    lines.append("")
    return "\n".join(lines)


def _shift_sections(val: dict, shifts: list[dict] | None) -> list[str]:
    """The acquisition-shift and ``--perturb`` robustness sections (empty without them)."""
    lines: list[str] = []
    if shifts:
        lines += [
            "## Acquisition shifts (val split; accuracy / macro F1)",
            "",
            "Exposure and white balance changed in linear light (sRGB decoded, multiplied, "
            "clipped to 8 bits, encoded), as a different lamp, exposure time or camera white "
            "balance would; `-1 EV` halves the light, `+0.6 EV` multiplies it by 1.52, the cast "
            "is R x1.2, B x0.8.",
            "",
            *shift_table(shifts),
            "",
        ]
    pert = val.get("perturbations")
    if pert:
        lines += [
            "## Robustness (`lgld-eval --perturb`, val split)",
            "",
            f"Clean accuracy {_pct(val['accuracy'])}.",
            "",
            "| perturbation | severity | accuracy | macro F1 |",
            "| --- | --- | --- | --- |",
        ]
        for row in _perturb_rows(pert):
            lines.append(f"| {row[0]} | {row[1]} | {_pct(row[2])} | {_pct(row[3])} |")
        lines.append("")
    return lines


def _lab_section(run_dir: Path) -> list[str]:
    """The lab data set behind a fine-tune (lgld-dataset manifest, copied by lgld-train)."""
    record_path, manifest_path = run_dir / "lab.json", run_dir / "lab-manifest.json"
    if not record_path.is_file():
        return []
    record = json.loads(record_path.read_text())
    lines = ["## Lab data set", ""]
    if manifest_path.is_file():
        m = json.loads(manifest_path.read_text())
        sessions = [s for src in m["sources"] for s in src["sessions"]]
        sources = Counter(im["label_source"] for im in m["images"])
        lines += [
            f"`lgld-dataset` manifest sha256 `{record.get('manifest_sha256', '?')}` (copy: "
            f"`{manifest_path.name}` in the run folder): {m['images_total']} images of "
            f"{m['groups_total']} counted cells, "
            + ", ".join(f"{c} {n}" for c, n in m["classes"].items())
            + "; labels from " + ", ".join(f"{k} {n}" for k, n in sorted(sources.items())) + ".",
            f"- Counted with {m['model'].get('name') or '?'} (sha256 "
            f"`{(m['model'].get('sha256') or '?')[:16]}`) in {len(sessions)} session(s): "
            + "; ".join(f"{s['id']} \"{s['sample']}\" ({s['reviewed']} reviewed, "
                        f"{s['rejected']} rejected, calibration "
                        f"{'yes' if s['calibration'] else 'none'})" for s in sessions) + ".",
        ]
        if m.get("omitted_classes"):
            lines.append("- Left out (below --min-per-class): " + ", ".join(
                f"{c} {n}" for c, n in m["omitted_classes"].items()) + ".")
    mix = record.get("mix")
    if mix:
        lines.append(f"- Mixed into train: {mix['images']} images of `{mix['data']}` ("
                     + ", ".join(f"{c} {n}" for c, n in mix["per_class"].items())
                     + f"; `--mix-data {mix['data']} --mix-ratio {mix['ratio']}`).")
    if record.get("groups"):
        fractions = json.loads((run_dir / "split.json").read_text()).get("fractions", {})
        lines.append(f"- Split: {record['groups']} counted cells, every crop of one cell in one "
                     "part; val and test hold the lab's cells only (`--val-fraction "
                     f"{fractions.get('val')} --test-fraction {fractions.get('test')}`).")
    return [*lines, ""]


def _perturb_rows(pert: dict) -> list[tuple[str, str, float, float]]:
    """lgld-eval's ``perturbations``: {name: {severity: {accuracy, macro_f1}}} -> table rows."""
    return [
        (name, level, m["accuracy"], m["macro_f1"])
        for name, levels in pert.items()
        for level, m in levels.items()
    ]


def run_stages(run_dir: Path, prior: Path | None = None) -> list[dict]:
    """The chain of runs behind run_dir (following --init), oldest first.

    ``prior`` is the run that produced an --init checkpoint which is not a run's own
    ``best.pt`` (e.g. a shipped release copy in zoo/): its history joins the chain.
    """
    from lgld.models.checkpoint import load_checkpoint

    stages: list[dict] = []
    current: Path | None = run_dir
    while current is not None:
        ckpt = load_checkpoint(current / "best.pt")
        run = ckpt.extra.get("run", {})
        recipe = run.get("recipe", {})
        history = [json.loads(x) for x in (current / "log.jsonl").read_text().splitlines()]
        command = (
            f"lgld-train --data {_shown_path(run.get('data'), 'DATA')} --out {current.name} "
            f"--input-size {run.get('input_size')} --epochs {recipe.get('epochs')} "
            f"--recipe {recipe.get('name')} --seed {run.get('seed')} --workers 0"
        )
        if recipe.get("color_jitter", 1.0) != 1.0:
            command += f" --color-jitter {recipe.get('color_jitter')}"
        if recipe.get("white_balance", 0.2) != 0.2:
            command += f" --white-balance {recipe.get('white_balance')}"
        if recipe.get("augmentation", "lamp") != "lamp":
            command += f" --augment {recipe.get('augmentation')}"
        if run.get("illumination", "none") != "none":
            command += f" --illumination {run['illumination']}"
        init = run.get("init") or ""
        current = None
        if init:
            parent = Path(init).parent
            if (parent / "log.jsonl").is_file():
                command += f" --init {parent.name}/best.pt --split-file {parent.name}/split.json"
                current = parent
            else:
                shown = _shown_path(init, "PATH")
                command += f" --init {shown}"
                if prior is not None:
                    command += f" --split-file {prior.name}/split.json"
                    current, prior = prior, None
        stages.insert(0, {"recipe": recipe.get("name", "?"), "history": history,
                          "command": command})
    return stages


def _shown_path(recorded: str | None, placeholder: str) -> str:
    """A recorded path as a card shows it: ``zoo/x.pt`` inside this checkout, a relative path
    as recorded, an absolute one elsewhere as ``PLACEHOLDER/<name>`` (no machine's paths)."""
    if not recorded:
        return str(recorded)
    path = Path(recorded)
    root = Path(__file__).resolve().parents[1]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return f"{placeholder}/{path.name}" if path.is_absolute() else recorded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lgld-modelcard", description="render a model card")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--eval-json", type=Path, required=True, help="lgld-eval --json on val")
    p.add_argument("--test-json", type=Path)
    p.add_argument("--title", required=True)
    p.add_argument("--data-citation", required=True)
    p.add_argument("--onnx", required=True)
    p.add_argument("--hardware", default=f"{platform.machine()} CPU, 2 cores, no GPU")
    p.add_argument("--intended", default=(
        "Research and education: demonstrating live blood-cell image classification on a "
        "Raspberry Pi 5. Not a diagnostic device; never use it for clinical decisions."))
    p.add_argument("--limit", action="append", default=[], help="a known limit (repeatable)")
    p.add_argument("--prior-run", type=Path, help="the run behind an --init checkpoint that is "
                   "not a run's best.pt (e.g. a shipped model): adds its stages to the card")
    p.add_argument("--shifts-json", type=Path, help="acquisition-shift rows, one JSON per line")
    p.add_argument("--note", action="append", default=[], help="a training note (repeatable)")
    p.add_argument("-o", "--out", type=Path, required=True)
    a = p.parse_args(argv)
    val = json.loads(a.eval_json.read_text())
    test = json.loads(a.test_json.read_text()) if a.test_json else None
    shifts = ([json.loads(x) for x in a.shifts_json.read_text().splitlines() if x.strip()]
              if a.shifts_json else None)
    write_atomic(a.out, render(a.run_dir, val, test, a.title, a.data_citation, a.onnx,
                               a.hardware, a.intended, a.limit, a.prior_run, shifts, a.note))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

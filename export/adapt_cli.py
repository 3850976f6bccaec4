"""``lgld-adapt``: a count session on a new microscope -> a model adapted to it (workstation).

Unsupervised first (the session's cells, no labels): AdaBN statistics blended with the
model's own, optionally TENT on the BatchNorm scales and shifts. With ``--reviewed``, then a
short fine-tune of the classifier layer on the session's reviewed cells, mixed with the
model's training data; there the blend defaults to 0 (no AdaBN), the best start measured. The
result is exported like any model (verified ONNX, dynamic batch; ``--int8`` adds the INT8
sibling through its accuracy gate), carries a domain reference fitted on the session's cells
(so the microscope it was adapted to is ``familiar``) and a card (OUT.md) recording what it
adapted on. Judge it with ``lgld-eval --compare`` before switching (docs/lab-loop.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lgld.export import ExportError
from lgld.export.domainstats import stamp
from lgld.export.onnx_export import check_writable, export_checkpoint
from lgld.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.files import file_sha256, list_images
from lgld.runtime.core.zoo import ZOO, zoo_dir
from lgld.training.adapt import AdaptError, adabn, entropy, load_inputs, session_cells, tent
from lgld.training.finetune import finetune

PROG = "lgld-adapt"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("log", metavar="LOG.jsonl", help="cell-mode log whose session saved crops")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--model", default="wbc5",
                   help="checkpoint (.pt) to adapt, or a zoo name (default wbc5)")
    p.add_argument("--session", metavar="ID", help="session id (default: the log's last)")
    p.add_argument("--crops", metavar="DIR",
                   help="folder the crops were copied to (default: the log's folder)")
    p.add_argument("--blend", type=float, default=None,
                   help="AdaBN: weight of the session's BatchNorm statistics (0 keeps the "
                   "model's, 1 = plain AdaBN; default 0 with --reviewed, the best start "
                   "for a fine-tune measured in docs/lab-loop.md, else 0.5)")
    p.add_argument("--tent-steps", type=int, default=0,
                   help="TENT entropy-minimisation steps on the norm parameters (default 0)")
    p.add_argument("--tent-lr", type=float, default=1e-3)
    p.add_argument("--reviewed", action="store_true",
                   help="then fine-tune on the session's reviewed cells (confirmed or "
                   "reclassified on the page)")
    p.add_argument("--mix-data", metavar="DIR",
                   help="with --reviewed: the model's training data (one folder per class)")
    p.add_argument("--mix-ratio", type=float, default=0.5,
                   help="share of mixed-in training images in the fine-tune (default 0.5)")
    p.add_argument("--int8", action="store_true",
                   help="also write OUT.int8.onnx (needs --calib-data)")
    p.add_argument("--calib-data", metavar="DIR",
                   help="INT8 calibration and gate images, one folder per class")
    p.add_argument("--calib-limit", type=int, default=300, metavar="N",
                   help="at most N calibration (and gate) images, evenly spread (default 300)")
    p.add_argument("--threads", type=int, default=None)
    return p


def _checkpoint_path(spec: str) -> Path:
    if spec.lower() in ZOO:
        path = (zoo_dir() / ZOO[spec.lower()]).with_suffix(".pt")
        if not path.is_file():
            raise AdaptError(f"model {spec!r}: its checkpoint is not here (a dev checkout's "
                             "zoo/ has it); pass --model PATH.pt")
        return path
    return Path(spec)


def _mix(folder: str, classes: list[str], n: int) -> tuple[list[Path], list[int]]:
    """n images of the training data, classes in turn, each class's files from the front."""
    per = {k: list_images(Path(folder) / k) for k in classes}
    if not all(per.values()):
        raise AdaptError(f"--mix-data {folder} needs one non-empty folder per class "
                         f"{classes}")
    paths, labels = [], []
    for i in range(n):
        k = i % len(classes)
        files = per[classes[k]]
        paths.append(files[(i // len(classes)) % len(files)])
        labels.append(k)
    return paths, labels


def _check(args: argparse.Namespace) -> None:
    if args.blend is None:
        args.blend = 0.0 if args.reviewed else 0.5
    if not 0.0 <= args.blend <= 1.0:
        raise AdaptError(f"--blend must be in [0, 1], got {args.blend}")
    if not 0.0 <= args.mix_ratio < 1.0:
        raise AdaptError(f"--mix-ratio must be in [0, 1), got {args.mix_ratio}")
    if args.tent_steps < 0:
        raise AdaptError("--tent-steps must be >= 0")
    if args.int8 and not args.calib_data:
        raise AdaptError("--int8 needs --calib-data DIR")
    if args.mix_data and not args.reviewed:
        raise AdaptError("--mix-data is used with --reviewed only")


def run(args: argparse.Namespace) -> int:
    _check(args)
    out = Path(args.output)
    check_writable(out)
    t0 = time.time()
    ckpt_path = _checkpoint_path(args.model)
    ckpt = load_checkpoint(ckpt_path)
    cells = session_cells(args.log, args.session, args.crops)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(0)
    model = ckpt.build_model()
    x = load_inputs(cells.crops, ckpt.preprocess)
    with torch.no_grad():
        before = float(entropy(model(x)))
    adabn(model, x, args.blend)
    history = tent(model, x, args.tent_steps, args.tent_lr) if args.tent_steps else []
    with torch.no_grad():  # unchanged statistics and no TENT: no second pass
        after = float(entropy(model(x))) if args.blend or args.tent_steps else before
    record = {"log": Path(args.log).name, "session": cells.session, "cells": len(cells.crops),
              "source_model": {"path": ckpt_path.name, "sha256": file_sha256(ckpt_path)},
              "adabn_blend": args.blend, "tent_steps": args.tent_steps,
              "tent_lr": args.tent_lr if args.tent_steps else None,
              "entropy_before": round(before, 4), "entropy_after": round(after, 4),
              "tent_entropy": [round(v, 4) for v in history[:: max(1, len(history) // 5)]]}
    if args.reviewed:
        record["fine_tune"] = _fine_tune(model, cells, ckpt.classes, ckpt.preprocess, args)
    training = {**ckpt.training, "adaptation": record}
    with tempfile.TemporaryDirectory(prefix="lgld-adapt-") as tmp:
        pt = save_checkpoint(Path(tmp) / "adapted.pt", model, ckpt.classes, ckpt.preprocess,
                             training)
        report = export_checkpoint(pt, out, dynamic_batch=True, threads=args.threads,
                                   name=f"{ckpt.training.get('dataset') or 'lgld'}-adapted")
        if len(cells.crops) >= 10 * len(ckpt.classes):
            record["domain_reference"] = stamp(out, cells.crops, f"session {cells.session}, "
                                               f"{len(cells.crops)} cells")["source"]
        else:
            record["domain_reference"] = None
        if args.int8:
            from lgld.export.quantize import quantize_int8

            try:
                int8 = quantize_int8(out, out.with_suffix(".int8.onnx"), args.calib_data,
                                     threads=args.threads, calib_limit=args.calib_limit)
                record["int8"] = int8.summary().splitlines()[0]
            except ExportError as exc:  # the fp32 model stands; the card says why
                record["int8"] = f"refused: {exc}"
                print(f"{PROG}: warning: no INT8 model: {exc}", file=sys.stderr)
    _write_card(out, record, report.verification.summary(), time.time() - t0)
    print(f"{PROG}: wrote {out} (+ {out.with_suffix('.md').name}): AdaBN blend {args.blend} "
          f"on {len(cells.crops)} cells of session {cells.session}"
          + (f", TENT {args.tent_steps} steps" if args.tent_steps else "")
          + (f", fine-tuned on {record['fine_tune']['reviewed']} reviewed cells"
             if args.reviewed else "")
          + f"; mean entropy {before:.3f} -> {after:.3f}")
    return 0


def _fine_tune(model, cells, classes: list[str], spec, args: argparse.Namespace) -> dict:
    reviewed = [(p, k) for p, k in cells.reviewed() if k in classes]
    if not reviewed:
        raise AdaptError(f"session {cells.session} has no reviewed cells of the model's "
                         "classes (confirm or reclassify cells on the page first)")
    x = load_inputs([p for p, _ in reviewed], spec)
    y = torch.tensor([classes.index(k) for _, k in reviewed])
    n_mix = int(round(len(reviewed) * args.mix_ratio / (1 - args.mix_ratio)))
    mix_x = mix_y = None
    if args.mix_data and n_mix:
        paths, labels = _mix(args.mix_data, classes, n_mix)
        mix_x, mix_y = load_inputs(paths, spec), torch.tensor(labels)
    losses = finetune(model, x, y, mix_x, mix_y)
    counts = {k: int(np.sum([c == k for _, c in reviewed])) for k in classes}
    return {"reviewed": len(reviewed), "per_class": counts, "mixed": n_mix if mix_x is not None
            else 0, "mix_data": Path(args.mix_data).name if args.mix_data else None,
            "method": "classifier layer on 4 quarter turns of each cell",
            "loss": [round(v, 4) for v in losses]}


def _write_card(out: Path, record: dict, verification: str, seconds: float) -> None:
    lines = [f"# {out.name}: adapted to a new microscope", "",
             f"Made by `lgld-adapt` in {seconds:.0f} s from `{record['source_model']['path']}` "
             f"(sha256 `{record['source_model']['sha256'][:16]}`).", "",
             f"- Adapted on: log `{record['log']}`, session `{record['session']}`, "
             f"{record['cells']} counted cells (no labels).",
             f"- AdaBN: BatchNorm statistics blended {record['adabn_blend']} towards the "
             "session's cells.",
             f"- TENT: {record['tent_steps']} steps on the normalisation scales and shifts.",
             f"- Mean prediction entropy on those cells: {record['entropy_before']} -> "
             f"{record['entropy_after']}."]
    ft = record.get("fine_tune")
    if ft:
        lines.append(f"- Fine-tuned (the classifier layer) on {ft['reviewed']} reviewed cells "
                     f"({', '.join(f'{k} {v}' for k, v in ft['per_class'].items() if v)}) plus "
                     f"{ft['mixed']} images of `{ft['mix_data']}`.")
    lines += [f"- Domain reference: {record['domain_reference'] or 'none (too few cells)'}: "
              "sessions on this microscope count as familiar, not new.",
              f"- ONNX verified: {verification}."]
    if record.get("int8"):
        lines.append(f"- INT8: {record['int8']}")
    lines += ["", "Not validated: compare it with the model it came from on held-out reviewed "
              "cells and on the original data (`lgld-eval --compare`) before switching.", "",
              "```json", json.dumps(record, indent=1), "```", ""]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, run, args, (AdaptError, ExportError, CheckpointError, ValueError,
                                     OSError))


if __name__ == "__main__":
    sys.exit(main())

"""``lgld-train``: train LGLD-Net on a folder of labelled images (and ``lgld-eval``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path

from lgld.runtime.core.cliutil import EXIT_FAILURE, OneLineParser, require_extra, run_cli
from lgld.training.allocator import OPT_OUT_FLAG, current_allocator, reexec_with_allocator
from lgld.training.data import (
    LAYOUTS,
    DataError,
    Split,
    discover,
    limit_per_class,
    load_split,
    make_split,
    verify_items,
)
from lgld.training.labrun import LAB_FILES, prepare_lab_split
from lgld.training.recipes import AUGMENTATIONS, get_recipe

PROG = "lgld-train"


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--data", required=True, help="data folder (ALL, Raabin-WBC or ImageFolder)")
    p.add_argument("-o", "--output", "--out", dest="out", required=True,
                   help="run folder (created)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size (32)")
    p.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    p.add_argument("--recipe", choices=("default", "finetune", "paper"), default="default")
    p.add_argument("--variant", choices=("full", "lfa_gce", "lfa", "gce"), default="full")
    p.add_argument("--norm", choices=("batch", "group"), default="batch",
                   help="normalisation layers: batch (the paper's BatchNorm) or group "
                        "(GroupNorm: per-image statistics; see docs/performance.md)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="0.1 from one folder (80:10:10); 0.2 with a separate test folder")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader worker processes (default: 0 on CPU, where the decoded "
                   "images are in memory and the cores belong to the model; 4 on CUDA)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    p.add_argument("--color-jitter", type=float,
                   help="scale of colour/stain augmentation (default 1; 0 = geometric only)")
    p.add_argument("--white-balance", type=float,
                   help="range of the white-balance augmentation: red and blue gains within "
                        "+-this in linear light (default 0.2)")
    p.add_argument("--augment", choices=AUGMENTATIONS, dest="augmentation",
                   help="augmentation profile: lamp (exposure, white balance and a mild stain "
                        "change: one microscope; default) or microscope (strong stain, rotation, "
                        "scale, blur, JPEG: spans microscopes)")
    p.add_argument("--illumination", choices=("none", "background"), default="none",
                   help="illumination correction in the preprocessing (background: map the "
                        "slide background to the training set's median, in linear light)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init", default="", help="start from this checkpoint's weights (fine-tune)")
    p.add_argument("--split-file", help="reuse another run's split.json (e.g. when fine-tuning)")
    p.add_argument("--name", default="", help="data-set name for the model card/metadata")
    p.add_argument("--mix-data", help="also train on this data folder or split.json (its train "
                   "part), e.g. the --init model's training data; val/test stay --data's")
    p.add_argument("--mix-ratio", type=float, default=0.5,
                   help="share of --mix-data images in the train part (default 0.5)")
    p.add_argument(OPT_OUT_FLAG, action="store_true",
                   help="keep the default memory allocator (no restart)")
    p.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    return p


class OtherRankFailed(Exception):
    """Rank 0 reported the error already; this rank only exits."""


def prepare_run(args: argparse.Namespace, out: Path) -> Split:
    """Check the run folder and make (or reuse) its split; rank 0 only, it writes split.json."""
    split_path = out / "split.json"
    lab = None
    if args.mix_data and (args.resume or args.split_file):
        raise DataError("--mix-data makes a new split: not with --resume or --split-file")
    if args.resume:
        if not (out / "last.pt").is_file():
            raise DataError(f"nothing to resume: {out / 'last.pt'} does not exist")
        return load_split(split_path)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already holds a run; use --resume or another --out")
    if args.split_file:
        split = load_split(args.split_file, root=args.data)
        for items in split.parts.values():
            verify_items(split.root, items)
    else:
        found = discover(args.data, args.layout)
        found.pool = limit_per_class(found.pool, args.limit_per_class)
        val = args.val_fraction if args.val_fraction is not None else (
            0.2 if found.test else 0.1)
        lab = prepare_lab_split(found, val, args.test_fraction, args.seed, args.init,
                                args.mix_data, args.mix_ratio)
        split = lab.split if lab else make_split(found, val, args.test_fraction, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    split.save(split_path)
    if lab:
        lab.save(out)
        print(f"{PROG}: lab data: {lab.describe()}", file=sys.stderr)
    counts = ", ".join(f"{k} {len(v)}" for k, v in split.parts.items())
    print(f"{PROG}: {split.layout} layout, classes {split.classes}; split {counts}; "
          f"{split.duplicates} byte-identical duplicate(s) kept within one split",
          file=sys.stderr)
    return split


def run_training(args: argparse.Namespace) -> int:
    from lgld.models.checkpoint import CheckpointError
    from lgld.training.distributed import broadcast_object, init_world
    from lgld.training.loop import TrainConfig, Trainer, default_workers
    from lgld.training.runreport import final_report

    out = Path(args.out)
    world = init_world(args.device)
    split, error = None, None
    if world.main:  # only rank 0 touches the run folder; the others receive its split
        try:
            recipe = get_recipe(args.recipe, args.epochs, args.batch_size, args.color_jitter,
                        args.white_balance, args.augmentation, args.lr)
            if recipe.epochs < 1 or recipe.batch_size < 1:
                raise DataError("--epochs and --batch-size must be >= 1")
            if not 0.0 < recipe.lr < 1.0:
                raise DataError("--lr must be in (0, 1)")
            if not 0.0 <= recipe.white_balance < 1.0:
                raise DataError("--white-balance must be in [0, 1): the +- range of the gains")
            if recipe.batch_size % world.size:
                raise DataError(f"--batch-size {recipe.batch_size} (the global batch) must be "
                                f"a multiple of the {world.size} processes")
            if args.input_size < 32 or args.input_size % 16:
                raise DataError("--input-size must be a multiple of 16, >= 32")
            split = prepare_run(args, out)
        except (DataError, ValueError, OSError) as exc:
            error = str(exc)
    split, error = broadcast_object(world, (split, error))
    if error is not None:
        if world.main:
            raise DataError(error)
        raise OtherRankFailed
    recipe = get_recipe(args.recipe, args.epochs, args.batch_size, args.color_jitter,
                        args.white_balance, args.augmentation, args.lr)
    cfg = TrainConfig(
        data=args.data, out=str(out), recipe=recipe, input_size=args.input_size,
        variant=args.variant, seed=args.seed, device=args.device,
        workers=args.workers if args.workers is not None else default_workers(args.device),
        deterministic=args.deterministic, dataset_name=args.name, init=args.init,
        illumination=args.illumination, norm=args.norm,
    )
    try:
        trainer = Trainer(cfg, split, resume=args.resume)
    except (CheckpointError, DataError) as exc:
        if not args.resume and world.main:  # e.g. a corrupt image: leave --out reusable
            for name in ("split.json", *LAB_FILES):
                (out / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise DataError(str(exc)) from None
    if world.main:
        print(f"{PROG}: {trainer.model_summary()} on {trainer.device}"
              + (f" x {world.size} processes" if world.distributed else "")
              + f", recipe {recipe.name} ({recipe.epochs} epochs), allocator "
              + current_allocator(), file=sys.stderr)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        if world.main:
            print(f"\n{PROG}: interrupted; {out / 'last.pt'} holds the last completed epoch "
                  f"(continue with --resume)", file=sys.stderr)
        return 130
    if trainer.main:
        metrics = final_report(trainer)
        print(json.dumps({k: {m: round(v[m], 4) for m in ("accuracy", "macro_f1")}
                          for k, v in metrics.items()}))
    return 0


def _train(args: argparse.Namespace) -> int:
    """The command's body: torch is there, then (the real command) restart once with a faster
    allocator (see allocator), then train."""
    require_extra("torch")
    if args.argv is not None:
        reexec_with_allocator(PROG, args.argv)
    try:
        return run_training(args)
    except OtherRankFailed:
        return EXIT_FAILURE


def train_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # usage errors (exit 2) before any restart
    args.argv = sys.argv[1:] if argv is None else None
    return run_cli(PROG, _train, args, (DataError, ValueError, OSError))


def eval_main(argv: list[str] | None = None) -> int:
    from lgld.training.compare import main  # plain lgld-eval unless --compare is given

    pt = argv is None and any(a.endswith(".pt") for a in sys.argv[1:])  # torch's batched path
    if pt and importlib.util.find_spec("torch") is not None:  # else: one line from lgld-eval
        reexec_with_allocator("lgld-eval", sys.argv[1:])
    return main(argv)


if __name__ == "__main__":
    sys.exit(train_main())

"""The training loop: seeded, resumable, CPU or CUDA (mixed precision), DDP under torchrun."""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from lgld.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    weights_across_norms,
)
from lgld.models.lgld_net import LGLDNet, ModelConfig, count_parameters
from lgld.runtime.core.preprocess import PreprocessSpec
from lgld.training.data import DataError, Split
from lgld.training.distributed import (
    all_reduce_sum,
    broadcast_buffers,
    broadcast_object,
    close_world,
    init_world,
)
from lgld.training.imagecache import CachedDataset, ImageCache, SeededSampler, log
from lgld.training.metrics import compute_metrics
from lgld.training.recipes import Recipe

BN_BATCHES = 24  # clean training batches used to re-estimate BatchNorm statistics per epoch


@dataclass
class TrainConfig:
    """Everything a run depends on (saved with it; --resume must match)."""

    data: str
    out: str
    recipe: Recipe
    input_size: int = 224
    variant: str = "full"
    seed: int = 42
    device: str = "auto"
    workers: int = 1
    deterministic: bool = False
    dataset_name: str = ""
    init: str = ""  # start from these weights (fine-tuning), with a fresh schedule
    illumination: str = "none"  # preprocessing's illumination correction (none | background)
    norm: str = "batch"  # the model's normalisation layers (batch | group)

    def identity(self) -> dict:
        """The fields that define a run (a resumed run must match them)."""
        return {
            "data": str(Path(self.data).resolve()),
            "recipe": self.recipe.to_dict(),
            "input_size": self.input_size,
            "variant": self.variant,
            "seed": self.seed,
            "init": str(Path(self.init).resolve()) if self.init else "",
            "illumination": self.illumination,
            "norm": self.norm,
        }


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda requested but no CUDA device is available")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def default_workers(device: str) -> int:
    """Loader processes when --workers is not given: none on CPU (a worker would take a core
    from the model for work that is a small fraction of a step), 4 (at most the cores) on CUDA."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return min(4, os.cpu_count() or 1) if cuda else 0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and the 1-D FFM scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at an optimiser step (0-based)."""
    if recipe.schedule == "step":
        return recipe.gamma ** ((step // steps_per_epoch) // recipe.step_size)
    total = recipe.epochs * steps_per_epoch
    warm = int(recipe.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple:
    """Labels, predictions and mean loss over a loader."""
    model.eval()
    ys, ps, loss_sum = [], [], 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        ys.append(y.cpu())
        ps.append(logits.argmax(1).cpu())
    y_all, p_all = torch.cat(ys).numpy(), torch.cat(ps).numpy()
    return y_all, p_all, loss_sum / max(1, len(y_all))


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   max_batches: int) -> None:
    """Recompute BatchNorm running statistics as exact averages over clean training batches.

    The exponential running averages lag behind fast-moving weights (e.g. the FFM's
    scale-invariant real/imag scales under Adam), which makes eval-mode accuracy far worse
    than the weights deserve; an exact re-estimate with the final weights fixes that.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
        m.train()
    for i, (x, _y) in enumerate(loader):
        if i >= max_batches:
            break
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            model(x.to(device, non_blocking=True))
    for m, (momentum, training) in zip(bns, saved, strict=True):
        m.momentum = momentum
        m.train(training)


# Identity fields added after the first release, with the value older runs implicitly had.
_LATER_DEFAULTS = {"init": "", "color_jitter": 1.0, "illumination": "none", "white_balance": 0.2,
                   "augmentation": "lamp", "norm": "batch"}


def same_run(saved: dict, current: dict) -> bool:
    """Whether a saved run identity matches the current one (fields added later may be absent
    from the saved one, if the current run uses their old implicit value)."""
    for key, value in current.items():
        if key not in saved:
            if _LATER_DEFAULTS.get(key, object()) != value:
                return False
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            if not same_run(saved[key], value):
                return False
        elif saved[key] != value:
            return False
    return not (set(saved) - set(current))


class Trainer:
    """One run in RUN_DIR: split.json, log.jsonl, last.pt, best.pt, metrics and plots."""

    def __init__(self, cfg: TrainConfig, split: Split, resume: bool) -> None:
        self.cfg, self.split = cfg, split
        self.out = Path(cfg.out)
        self.world = init_world(cfg.device)
        self.distributed, self.main = self.world.distributed, self.world.main
        if cfg.recipe.batch_size % self.world.size:
            raise DataError(f"--batch-size {cfg.recipe.batch_size} (the global batch) must be a "
                            f"multiple of the {self.world.size} processes")
        self.batch_size = cfg.recipe.batch_size // self.world.size  # per process
        self.device = pick_device(cfg.device)
        seed_everything(cfg.seed, cfg.deterministic)
        self.classes = split.classes
        model_cfg = ModelConfig(
            num_classes=len(self.classes), input_size=cfg.input_size, variant=cfg.variant,
            norm=cfg.norm,
        )
        self.model = LGLDNet(model_cfg).to(self.device)
        if self.distributed:  # same initial weights everywhere, but each rank its own dropout
            torch.manual_seed(cfg.seed + self.world.rank)
        self.spec = PreprocessSpec(input_size=cfg.input_size)
        r = cfg.recipe
        groups = param_groups(self.model, r.weight_decay)
        if r.optimizer == "adam":
            self.opt = torch.optim.Adam(groups, lr=r.lr)
        else:
            self.opt = torch.optim.AdamW(groups, lr=r.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        self.start_epoch, self.best_f1, self.history = 0, -1.0, []
        if cfg.init and not resume:
            init = load_checkpoint(cfg.init, expect_classes=self.classes)
            if init.config.variant != cfg.variant:
                raise DataError(f"--init {cfg.init} is variant {init.config.variant!r}, "
                                f"this run trains {cfg.variant!r}")
            weights = init.state_dict
            if init.config.norm != cfg.norm:  # e.g. a GroupNorm model from BatchNorm weights
                weights = weights_across_norms(self.model, weights)
            load_weights(self.model, weights)
            if self.main:
                log(f"initialised from {cfg.init}"
                    + (f" ({init.config.norm} -> {cfg.norm} norm)"
                       if init.config.norm != cfg.norm else ""))
        if resume:
            self._resume()
        self.ddp_model = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.main:
            log(f"loading {sum(len(v) for v in split.parts.values())} images into memory ...")
        self.caches = {k: ImageCache(split.root, v, self.classes) for k, v in split.parts.items()}
        if cfg.illumination != "none":
            reference = self.caches["train"].median_background(cfg.input_size)
            self.spec = replace(self.spec, illumination=cfg.illumination, background=reference)
            log(f"illumination {cfg.illumination}: reference background RGB {reference}")

    def _resume(self) -> None:
        ckpt, error = None, None
        if self.main:  # rank 0 reads last.pt; the other ranks get it from rank 0
            try:
                ckpt = load_checkpoint(self.out / "last.pt", expect_classes=self.classes)
            except CheckpointError as exc:
                error = str(exc)
        ckpt, error = broadcast_object(self.world, (ckpt, error))
        if error is not None:
            raise CheckpointError(error)
        state = ckpt.extra
        if not same_run(state.get("run") or {}, self.cfg.identity()):
            raise DataError(f"{self.out} holds a run with different settings; use another --out")
        self.model.set_input_size(ckpt.config.input_size)
        load_weights(self.model, ckpt.state_dict)
        self.model.set_input_size(self.cfg.input_size)
        self.opt.load_state_dict(state["optimizer"])
        if "scaler" in state and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.best_f1 = float(state["best_f1"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if self.main:
            log(f"resuming {self.out} after epoch {self.start_epoch}")

    def _loader(
        self, part: str, size: int, train: bool, epoch: int = 0, augment: bool = True
    ) -> DataLoader:
        """Shuffled and sharded when ``train``; augmented when ``train and augment``."""
        spec = replace(self.spec, input_size=size)
        ds = CachedDataset(self.caches[part], spec,
                           train=train and augment and self.cfg.recipe.augment,
                           color=self.cfg.recipe.color_jitter,
                           white_balance=self.cfg.recipe.white_balance,
                           augmentation=self.cfg.recipe.augmentation)
        sampler = SeededSampler(  # DistributedSampler's sharding, plus augmentation seeds
            len(ds), self.cfg.seed, shuffle=train, rank=self.world.rank if train else 0,
            world=self.world.size if train else 1, pad=train,
        )
        sampler.set_epoch(epoch)
        batch = self.batch_size if train else self.cfg.recipe.batch_size
        return DataLoader(
            ds,
            batch_size=batch,
            sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=train and len(sampler) > batch,
            persistent_workers=False,
        )

    def summary(self, val_metrics: dict | None) -> dict:
        """Training summary stored in checkpoints and ONNX metadata."""
        r = self.cfg.recipe
        out = {
            "dataset": self.cfg.dataset_name or Path(self.cfg.data).name,
            "layout": self.split.layout,
            "split_counts": {k: len(v) for k, v in self.split.parts.items()},
            "seed": self.cfg.seed,
            "recipe": r.name,
            "epochs": r.epochs,
            "epochs_done": len(self.history),
            "train_seconds": round(sum(h["seconds"] for h in self.history), 1),
            "device": str(self.device),
        }
        if val_metrics:
            out["val"] = {k: round(val_metrics[k], 6) for k in
                          ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
        return out

    def _save(self, name: str, epoch: int, val_metrics: dict | None) -> None:
        extra = {
            "run": self.cfg.identity(),
            "epoch": epoch,
            "best_f1": self.best_f1,
            "history": json.dumps(self.history),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint(
            self.out / name, self.model, self.classes,
            replace(self.spec, input_size=self.model.config.input_size),
            self.summary(val_metrics), extra
        )

    def fit(self) -> None:
        r = self.cfg.recipe
        for epoch in range(self.start_epoch, r.epochs):
            size = r.size_at(epoch, self.cfg.input_size)
            self.model.set_input_size(size)
            loader = self._loader("train", size, train=True, epoch=epoch)
            steps = len(loader)
            t0 = time.time()
            self.ddp_model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{r.epochs} @{size}px",
                       disable=not self.main, leave=False, dynamic_ncols=True)
            for i, (x, y) in enumerate(bar):
                for g in self.opt.param_groups:
                    g["lr"] = r.lr * lr_factor(r, epoch * steps + i, steps)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    logits = self.ddp_model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            bar.close()
            train_seconds = time.time() - t0  # the steps alone, without re-estimation, validation
            loss_sum, correct, seen = all_reduce_sum(
                self.world, [loss_sum, correct, seen], self.device)
            if not self.main:
                broadcast_buffers(self.world, self.model)  # waits for rank 0's validation
                continue
            self.model.eval()
            clean = self._loader("train", size, train=True, epoch=epoch, augment=False)
            recalibrate_bn(self.model, clean,
                           self.device, max_batches=BN_BATCHES)
            broadcast_buffers(self.world, self.model)  # one set of BN statistics on every rank
            y_val, p_val, val_loss = predict(self.model, self._loader("val", size, False),
                                             self.device)
            m = compute_metrics(y_val, p_val, self.classes)
            entry = {
                "epoch": epoch + 1, "input_size": size,
                "train_loss": round(loss_sum / max(1, seen), 5),
                "train_accuracy": round(correct / max(1, seen), 5), "train_images": int(seen),
                "val_loss": round(val_loss, 5), "val_accuracy": round(m["accuracy"], 5),
                "val_macro_f1": round(m["macro_f1"], 5),
                "lr": self.opt.param_groups[0]["lr"],
                "seconds": round(time.time() - t0, 1),
                "train_seconds": round(train_seconds, 1),
                "images_per_second": round(seen / max(1e-9, time.time() - t0), 2),
            }
            self.history.append(entry)
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            improved = size == self.cfg.input_size and m["macro_f1"] > self.best_f1
            if improved:
                self.best_f1 = m["macro_f1"]
            self._save("last.pt", epoch + 1, m)
            if improved:
                self._save("best.pt", epoch + 1, m)
            log(
                f"epoch {epoch + 1}/{r.epochs} @{size}px  loss {entry['train_loss']:.4f}  "
                f"val acc {100 * m['accuracy']:.2f}%  val macro F1 {100 * m['macro_f1']:.2f}%"
                f"  {entry['seconds']:.0f}s ({entry['images_per_second']:.1f} img/s)"
                + ("  * best" if improved else "")
            )
        close_world(self.world)

    def model_summary(self) -> str:
        return f"LGLD-Net {self.cfg.variant}, {count_parameters(self.model):,} parameters"

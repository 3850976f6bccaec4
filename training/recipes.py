"""Training recipes: the paper's schedule and lgld's CPU-friendly default."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Augmentation profiles (lgld.training.augment): one microscope's lamp, or across microscopes.
AUGMENTATIONS = ("lamp", "microscope")


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule, regularisation and input-size schedule of a training run."""

    name: str
    epochs: int
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 8e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine (with linear warm-up) | step
    warmup_epochs: float = 0.5
    step_size: int = 5
    gamma: float = 0.5
    label_smoothing: float = 0.1
    augment: bool = True
    color_jitter: float = 1.0  # scale of the stain/brightness/contrast jitter (0: none)
    white_balance: float = 0.2  # red and blue gains within +-this in linear light
    augmentation: str = "lamp"  # lamp (one microscope's lamp) | microscope (spans microscopes)
    # Progressive resizing: train the first `small_fraction` of epochs at
    # `small_factor` x the final input size (rounded to a multiple of 16), then at full size.
    small_fraction: float = 0.4
    small_factor: float = 0.75

    def size_at(self, epoch: int, final_size: int) -> int:
        """Input size for a 0-based epoch."""
        if self.small_fraction <= 0 or epoch >= round(self.epochs * self.small_fraction):
            return final_size
        return max(32, int(round(final_size * self.small_factor / 16)) * 16)

    def to_dict(self) -> dict:
        return asdict(self)


def get_recipe(
    name: str,
    epochs: int | None = None,
    batch_size: int | None = None,
    color_jitter: float | None = None,
    white_balance: float | None = None,
    augmentation: str | None = None,
    lr: float | None = None,
) -> Recipe:
    """``paper``: Adam lr 1e-2, StepLR(5, 0.5), 50 epochs, batch 32, no augmentation.
    ``default``: AdamW + warm-up/cosine, label smoothing, smear-aware augmentation and
    progressive resizing, 14 epochs (lr 8e-3).
    ``finetune``: continue from ``--init`` weights: AdamW lr 3e-3, short warm-up, cosine,
    label smoothing 0.05, one input size, 8 epochs."""
    if name == "paper":
        r = Recipe(
            name="paper", epochs=50, optimizer="adam", lr=1e-2, weight_decay=0.0,
            schedule="step", warmup_epochs=0.0, label_smoothing=0.0, augment=False,
            small_fraction=0.0,
        )
    elif name == "default":
        r = Recipe(name="default", epochs=14)
    elif name == "finetune":
        r = Recipe(name="finetune", epochs=8, lr=3e-3, warmup_epochs=0.3, label_smoothing=0.05,
                   small_fraction=0.0)
    else:
        raise ValueError(f"unknown recipe {name!r}; choose 'default', 'finetune' or 'paper'")
    changes = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if color_jitter is not None:
        changes["color_jitter"] = color_jitter
    if white_balance is not None:
        changes["white_balance"] = white_balance
    if augmentation is not None:
        changes["augmentation"] = augmentation
    if lr is not None:
        changes["lr"] = lr
    return Recipe(**{**asdict(r), **changes}) if changes else r

"""How ``lgld-train`` splits a lab data set: whole cells per part, the --init model's classes,
optional mixing of other data into the train part; and the record of it kept in the run folder
(``lab.json`` plus a copy of the data set's manifest) for the model card."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from lgld.lab.manifest import MANIFEST_NAME
from lgld.runtime.core.files import write_atomic
from lgld.training.data import DataError, Discovered, Split
from lgld.training.groups import group_split, manifest_groups
from lgld.training.mix import mix_into, mix_pool

RECORD_NAME = "lab.json"
MANIFEST_COPY = "lab-manifest.json"
LAB_FILES = (RECORD_NAME, MANIFEST_COPY)


@dataclass
class LabSplit:
    split: Split
    record: dict
    manifest: Path | None  # the data set's manifest.json, copied into the run folder

    def save(self, run_dir: Path) -> None:
        if self.manifest is not None:
            shutil.copyfile(self.manifest, run_dir / MANIFEST_COPY)
        write_atomic(run_dir / RECORD_NAME, json.dumps(self.record, indent=1) + "\n")

    def describe(self) -> str:
        parts = []
        if self.record.get("groups"):
            parts.append(f"{self.record['groups']} cells, each kept in one part")
        mix = self.record.get("mix")
        if mix:
            parts.append(f"mixed {mix['images']} images of {mix['data']} into train "
                         f"(ratio {mix['ratio']})")
        return "; ".join(parts)


def init_classes(init: str) -> list[str] | None:
    """The classes of the --init checkpoint (None without --init)."""
    if not init:
        return None
    from lgld.models.checkpoint import load_checkpoint

    return load_checkpoint(init).classes


def prepare_lab_split(
    found: Discovered, val_fraction: float, test_fraction: float, seed: int, init: str = "",
    mix_data: str | None = None, mix_ratio: float = 0.5,
) -> LabSplit | None:
    """The split of a lab data set (a folder with an lgld-dataset manifest) and/or one with
    mixed-in data; None for a plain folder without --mix-data (the usual split applies)."""
    from_manifest = manifest_groups(found)
    if from_manifest is None and not mix_data:
        return None
    classes = init_classes(init)
    record: dict = {"data": str(found.root.resolve()), "init": init}
    manifest = None
    if from_manifest is not None:
        groups, model_labelled = from_manifest
        manifest = found.root / MANIFEST_NAME
        split = group_split(found, groups, val_fraction, test_fraction, seed, classes,
                            train_only=model_labelled)
        record["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
        record["groups"] = len({groups.get(it.path, it.path)
                                for items in split.parts.values() for it in items})
        record["model_labelled_in_train"] = len(model_labelled)
    else:
        from lgld.training.data import make_split

        split = make_split(found, val_fraction, test_fraction, seed)
        if classes is not None:
            extra = sorted(set(split.classes) - set(classes))
            if extra:
                raise DataError(f"data classes {extra} are not among the --init model's "
                                f"classes {classes}")
            split.classes = classes
    if mix_data:
        split, mix = mix_into(split, mix_pool(mix_data), mix_ratio, seed)
        record["mix"] = {"data": str(Path(mix_data).resolve()), **mix}
    record["counts"] = {k: len(v) for k, v in split.parts.items()}
    return LabSplit(split, record, manifest)

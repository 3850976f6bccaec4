"""Crops around detected cells, framed like the training data, classified in one batched call.

PBC (the WBC5 data) crops are taken at one fixed magnification: the white cell sits in the
centre and is on average :data:`CELL_FRACTION` of the crop wide (measured on the WBC5 training
images, docs/cells.md; lymphocytes less, monocytes more). So a frame's crops all have one size,
set by the frame's typical white-cell diameter, and a small cell stays small in its crop, as
the model learnt it. Parts of a crop outside the frame are filled with the frame's background
colour (what surrounds a cell on a slide), not with mirrored or black pixels.

Crops are white-balanced to the PBC lamp (each channel scaled so that the frame's background
becomes :data:`PBC_BACKGROUND`, von Kries): another camera, lamp or exposure then reaches the
model in the colours it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lgld.runtime.cells.detect import Detection, background_reference

#: Median white-cell width / crop width on WBC5 (PBC) training images.
CELL_FRACTION = 0.362
#: The PBC crops' background (lamp) colour, B, G, R (detect.background_reference, mean of the
#: bundled crops): crops are white-balanced to it, as the model only ever saw this lamp.
PBC_BACKGROUND = (204.0, 230.0, 255.0)

#: Class names a white-cell (WBC5-style) model must have to run in cell mode (case-insensitive).
WHITE_CELL_TYPES = {
    "basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil", "band", "segmented",
    "band neutrophil", "segmented neutrophil", "ig", "immature granulocyte", "blast",
    "lymphoblast", "myeloblast", "promyelocyte", "myelocyte", "metamyelocyte",
}


def check_white_cell_model(classes: Sequence[str]) -> None:
    """Raise ValueError (one line) unless every class is a white-cell type."""
    foreign = [c for c in classes if c.strip().lower().replace("_", " ") not in WHITE_CELL_TYPES]
    if foreign:
        raise ValueError(
            "cell mode needs a white-cell model (classes like Neutrophil, Lymphocyte; e.g. "
            f"--model wbc5); this model's classes are {', '.join(classes)}")


def crop_side(typical_diameter: float) -> int:
    """Crop width (frame pixels) for a frame whose white cells are typical_diameter wide."""
    return max(8, int(round(typical_diameter / CELL_FRACTION)))


def cell_crop(image: np.ndarray, centre: tuple[float, float], side: int,
              fill: Sequence[float] | None = None) -> np.ndarray:
    """A side x side crop of image centred on centre; outside the frame = the background colour."""
    h, w = image.shape[:2]
    x0 = int(round(centre[0] - side / 2))
    y0 = int(round(centre[1] - side / 2))
    x1, y1 = x0 + side, y0 + side
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return image[y0:y1, x0:x1]
    if fill is None:
        fill = background_reference(image)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = np.asarray(fill, np.float32).round().astype(np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def cell_crops(image: np.ndarray, cells: Sequence[Detection], typical_diameter: float,
               input_size: int | None = None) -> list[np.ndarray]:
    """One crop per cell (resized to input_size when given, area interpolation)."""
    if not cells:
        return []
    side = crop_side(typical_diameter)
    fill = background_reference(image)
    crops = [cell_crop(image, c.centre, side, fill) for c in cells]
    if input_size and side != input_size:
        interp = cv2.INTER_AREA if side > input_size else cv2.INTER_LINEAR
        crops = [cv2.resize(c, (input_size, input_size), interpolation=interp) for c in crops]
    return [white_balanced(c, fill) for c in crops]


def white_balanced(crop: np.ndarray, fill: Sequence[float]) -> np.ndarray:
    """The crop with the frame's background colour ``fill`` brought to PBC_BACKGROUND: what the
    model sees (and what a saved crop must show, so a data set built from it matches)."""
    gain = (np.float32(PBC_BACKGROUND) / np.asarray(fill, np.float32)).reshape(1, 1, 3)
    return cv2.convertScaleAbs(crop.astype(np.float32) * gain)


def classify_cells(classifier, image: np.ndarray, cells: Sequence[Detection],
                   typical_diameter: float) -> np.ndarray:
    """Class probabilities (N, classes) of all cells of a frame in one batched model call."""
    if not cells:
        return np.zeros((0, len(classifier.classes)), np.float32)
    crops = cell_crops(image, cells, typical_diameter, classifier.info.input_size)
    return classifier.probabilities(crops)

"""The optional local preview window (OpenCV highgui).

Shown only where it can work and is wanted: a display ($DISPLAY or $WAYLAND_DISPLAY), not
under systemd, and an OpenCV built with a GUI backend (the opencv-python-headless wheel has
none). ``display.preview = "auto"`` decides by those rules; "on" asks for it (with a warning
when it is impossible); "off" never opens one.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from lgld.runtime.systemd import under_systemd

WINDOW = "lgld-run (q or Esc to quit)"


def opencv_has_gui() -> bool:
    """True when this OpenCV was built with a GUI backend (GTK, Qt, Cocoa, Win32...)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("", "NONE", "NO")
    return False


def preview_possible(setting: str) -> tuple[bool, str]:
    """(open a window?, why or why not)."""
    if setting == "off":
        return False, "preview off"
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if setting == "auto" and under_systemd():
        return False, "running under systemd (headless)"
    if not has_display:
        return False, "no display ($DISPLAY / $WAYLAND_DISPLAY unset)"
    if not opencv_has_gui():
        return False, "OpenCV has no GUI support (opencv-python-headless); use --http instead"
    return True, "preview window available"


class PreviewWindow:
    """A resizable window; show() returns False when the user asks to quit."""

    def __init__(self) -> None:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)

    def show(self, image: np.ndarray) -> bool:
        cv2.imshow(WINDOW, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(WINDOW)
            cv2.waitKey(1)
        except cv2.error:
            pass

"""Cell mode: find white cells in a frame, classify each, track them, keep a differential count."""

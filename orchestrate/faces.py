"""Face detection and cropping: which part of each frame the video extractors see.

``FaceDetector`` is the interface (a DNN detector can be added beside the Haar one);
``HaarFaceDetector`` is OpenCV's frontal-face cascade run on a downscaled grayscale copy of
the frame, the detector Mitseas used and the cheapest one that finds the frontal faces of
RAVDESS and CREMA-D. Boxes come back in full-resolution coordinates so the crop keeps all
the pixels the frame had.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in full-resolution pixels

# The width frames are shrunk to before the Haar cascade runs (``ingest.face_detect_width``),
# and the narrowest it may be: the cascade's own window is 24 pixels wide.
DETECT_WIDTH = 320
MIN_DETECT_WIDTH = 24


class FaceDetector(Protocol):
    """Finds the largest face of a frame."""

    def largest_face(self, frame_bgr: np.ndarray) -> Box | None:
        """``(x, y, w, h)`` of the largest face in full-resolution coordinates, or None."""
        ...


@functools.lru_cache(maxsize=4)
def _cascade(file_name: str) -> cv2.CascadeClassifier:
    # Loaded once per process: detectors stay cheap to build and to pickle into Ray tasks.
    path = cv2.data.haarcascades + file_name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"can't load the Haar cascade {path}")
    return cascade


@dataclass(frozen=True)
class HaarFaceDetector:
    """OpenCV's Haar frontal-face cascade on a downscaled, equalised grayscale frame.

    ``detect_width``: the frame is shrunk to this width before detection (never enlarged);
    ``min_size_fraction``: the smallest face searched for, as a fraction of the shrunk
    frame's shorter side (RAVDESS and CREMA-D faces span a third of the frame or more, and
    skipping small scales is most of the cascade's speed).
    """

    detect_width: int = DETECT_WIDTH
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size_fraction: float = 0.2
    cascade_file: str = "haarcascade_frontalface_default.xml"

    def __post_init__(self) -> None:
        if self.detect_width < MIN_DETECT_WIDTH:
            raise ValueError(
                f"face detector detect_width: must be >= {MIN_DETECT_WIDTH}, "
                f"got {self.detect_width}"
            )
        if self.scale_factor <= 1.0:
            raise ValueError(f"face detector scale_factor: must be > 1, got {self.scale_factor}")
        if self.min_neighbors < 0:
            raise ValueError(f"face detector min_neighbors: must be >= 0, got {self.min_neighbors}")
        if not 0.0 <= self.min_size_fraction < 1.0:
            raise ValueError(
                f"face detector min_size_fraction: must be in [0, 1), got {self.min_size_fraction}"
            )

    def largest_face(self, frame_bgr: np.ndarray) -> Box | None:
        """The largest detected face, scaled back to ``frame_bgr``'s coordinates."""
        height, width = frame_bgr.shape[:2]
        scale = min(1.0, self.detect_width / width)
        small = frame_bgr
        if scale < 1.0:
            small = cv2.resize(frame_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        gray = cv2.equalizeHist(gray)
        min_side = max(1, int(self.min_size_fraction * min(gray.shape)))
        boxes = _cascade(self.cascade_file).detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        if len(boxes) == 0:
            return None
        x, y, w, h = max(boxes, key=lambda box: int(box[2]) * int(box[3]))
        x0, y0 = int(round(x / scale)), int(round(y / scale))
        x1, y1 = min(width, int(round((x + w) / scale))), min(height, int(round((y + h) / scale)))
        return x0, y0, x1 - x0, y1 - y0


def crop_face(frame: np.ndarray, box: Box, size: int, margin: float = 0.1) -> np.ndarray:
    """A ``size`` x ``size`` crop of ``frame`` around ``box``.

    The crop is the square on the box's centre whose side is the box's longer side plus
    ``margin`` of it on each side (forehead and chin, as in FER-2013's faces), shrunk and
    shifted where needed to stay inside the frame, so faces are never stretched.
    """
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    height, width = frame.shape[:2]
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"face box {box} has no area")
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    side = max(1, min(side, width, height))
    centre_x, centre_y = x + w / 2.0, y + h / 2.0
    left = int(round(min(max(centre_x - side / 2.0, 0), width - side)))
    top = int(round(min(max(centre_y - side / 2.0, 0), height - side)))
    square = frame[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)

"""Wang's SFEW descriptors computed from a clip: LBP and LPQ texture, and PHOG shape.

The paper works on SFEW's published table (5 principal components each of LPQ and PHOG
descriptors of the face). For clips we compute the descriptors themselves from the middle
frame's face (the nearest frame with a face when the middle one has none), in grayscale at
``face_size`` (64x64):

- ``lbp``: uniform LBP codes (P=8, R=1: P+2 = 10 code values) histogrammed per cell of a 4x4
  grid, each cell's histogram normalised: 160 values.
- ``lpq``: local phase quantisation (Ojansivu & Heikkilä 2008): the short-term Fourier
  transform over a 7x7 window at the four lowest non-zero frequencies, the signs of the
  real and imaginary parts as an 8-bit code per pixel, and the normalised 256-bin histogram
  of the codes (the reference ``lpq.m`` without its optional decorrelation step).
- ``phog``: pyramid histogram of oriented gradients (Bosch, Zisserman & Muñoz 2007): Canny
  edge pixels vote their unsigned gradient orientation (8 bins over 0-180°), weighted by
  gradient magnitude, in every cell of pyramid levels 0-2 (1 + 4 + 16 cells): 168 values,
  normalised to sum 1. Canny thresholds follow MATLAB's ``edge`` defaults, as the original
  code used: high = 70th percentile of the gradient magnitude, low = 0.4 x high.

The reduction to 5 principal components each is fitted at sweep time on training folds
only (fitting it here, on every clip, would leak the test folds into the features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from orchestrate.extractors.base import (
    ClipMedia,
    Embedder,
    Modality,
    check_param_types,
    extractor_params,
    finite_features,
    middle_face_position,
    require_positive,
)


@dataclass(frozen=True)
class WangTexture:
    """``lbp``, ``lpq``, ``phog`` histograms of the middle frame's face (see module doc)."""

    name: ClassVar[str] = "wang_texture"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "video"
    outputs: ClassVar[tuple[str, ...]] = ("lbp", "lpq", "phog", "frames_with_face")

    face_size: int = 64
    lbp_points: int = 8
    lbp_radius: int = 1
    lbp_grid: int = 4
    lpq_window: int = 7
    phog_bins: int = 8
    phog_levels: int = 2  # pyramid levels 0..phog_levels

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(self, "face_size", "lbp_points", "lbp_radius", "lbp_grid", "phog_bins")
        if self.lpq_window < 3 or self.lpq_window % 2 == 0:
            raise ValueError(f"{self.name}.lpq_window: must be odd and >= 3, got {self.lpq_window}")
        if self.phog_levels < 0:
            raise ValueError(f"{self.name}.phog_levels: must be >= 0, got {self.phog_levels}")
        if self.face_size < max(self.lpq_window, self.lbp_grid * 2, 2**self.phog_levels):
            raise ValueError(
                f"{self.name}.face_size: {self.face_size} is too small for the LPQ window, "
                "LBP grid and PHOG pyramid"
            )

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        track, position = middle_face_position(media)
        gray = track.gray_face(position, self.face_size)  # shared with EMODal and Mitseas
        return {
            "lbp": finite_features(
                lbp_histograms(gray, self.lbp_points, self.lbp_radius, self.lbp_grid), "LBP"
            ),
            "lpq": finite_features(lpq_histogram(gray, self.lpq_window), "LPQ"),
            "phog": finite_features(phog(gray, self.phog_bins, self.phog_levels), "PHOG"),
            "frames_with_face": np.array(track.frames_with_face),
        }

    def make_embedder(self) -> Embedder | None:
        return None


def lbp_histograms(gray: np.ndarray, points: int = 8, radius: int = 1, grid: int = 4) -> np.ndarray:
    """Uniform LBP code histograms of a ``grid`` x ``grid`` split of ``gray``, concatenated.

    Each cell's ``points + 2`` bins sum to 1: ``(grid * grid * (points + 2),)``.
    """
    from skimage.feature import local_binary_pattern  # here: the registry imports fast

    codes = local_binary_pattern(gray, points, radius, method="uniform").astype(np.int64)
    n_codes = points + 2
    rows = np.array_split(np.arange(gray.shape[0]), grid)
    cols = np.array_split(np.arange(gray.shape[1]), grid)
    cells = []
    for row in rows:
        for col in cols:
            counts = np.bincount(codes[np.ix_(row, col)].ravel(), minlength=n_codes)
            cells.append(counts / counts.sum())
    return np.concatenate(cells)


def lpq_histogram(gray: np.ndarray, window: int = 7) -> np.ndarray:
    """Normalised 256-bin histogram of LPQ codes (uniform STFT window, no decorrelation)."""
    from scipy.signal import convolve2d  # here: scipy.signal takes seconds to import

    image = gray.astype(np.float64)
    alpha = 1.0 / window  # the lowest non-zero frequency of a window-long transform
    x = np.arange(window) - (window - 1) / 2.0
    w0 = np.ones_like(x, dtype=np.complex128)
    w1 = np.exp(-2j * np.pi * alpha * x)
    w2 = np.conj(w1)

    def separable(column_filter: np.ndarray, row_filter: np.ndarray) -> np.ndarray:
        # Filter down the columns, then along the rows ('valid': no border effects).
        vertical = convolve2d(image, column_filter[:, None], mode="valid")
        return convolve2d(vertical, row_filter[None, :], mode="valid")

    # Frequencies [alpha, 0], [0, alpha], [alpha, alpha], [alpha, -alpha], as in lpq.m.
    responses = [separable(w0, w1), separable(w1, w0), separable(w1, w1), separable(w1, w2)]
    parts = [part for response in responses for part in (response.real, response.imag)]
    codes = sum((part > 0).astype(np.int64) << bit for bit, part in enumerate(parts))
    counts = np.bincount(np.asarray(codes).ravel(), minlength=256)
    return counts / counts.sum()


def phog(gray: np.ndarray, bins: int = 8, levels: int = 2) -> np.ndarray:
    """PHOG: edge-pixel orientation histograms over pyramid levels ``0..levels``.

    ``(bins * sum(4**l for l in 0..levels),)``, normalised to sum 1 (all zeros when the
    image has no edges).
    """
    smooth = cv2.GaussianBlur(gray, (5, 5), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_64F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    high = float(np.percentile(magnitude, 70))
    # cv2.Canny recomputes the same 3x3 Sobel with L2 magnitude, so these thresholds apply.
    edges = cv2.Canny(smooth, 0.4 * high, high, L2gradient=True) > 0
    angle = np.degrees(np.arctan2(gy, gx)) % 180.0
    orientation = np.minimum((angle * bins / 180.0).astype(np.int64), bins - 1)
    weight = np.where(edges, magnitude, 0.0)

    height, width = gray.shape
    ys, xs = np.mgrid[0:height, 0:width]
    histograms = []
    for level in range(levels + 1):
        cells = 2**level
        cell = (ys * cells // height) * cells + (xs * cells // width)
        histograms.append(
            np.bincount(
                (cell * bins + orientation).ravel(),
                weights=weight.ravel(),
                minlength=cells * cells * bins,
            )
        )
    descriptor = np.concatenate(histograms)
    total = descriptor.sum()
    return descriptor / total if total > 0 else descriptor

"""EMODal (Zhang et al., SenSys 2018) features: a 128x128 grayscale face and 68 audio features.

The paper takes each clip's middle frame, crops it to the largest face, resizes it to
128x128 and converts it to grayscale ("we only use frames with clear faces": when the middle
frame has no face, the nearest frame that has one stands in). Its face frontalization step
needs a 3-D face model the paper does not name, and is left out. The audio is downsampled to
16 kHz and described by pyAudioAnalysis's 68 short-term features (34 + their deltas) on
50 ms windows every 25 ms, averaged over the clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from orchestrate.extractors.base import (
    DEFAULT_MIN_RMS,
    ClipMedia,
    Embedder,
    ExtractionError,
    Modality,
    audible_samples,
    check_param_types,
    extractor_params,
    finite_features,
    middle_face_position,
    require_positive,
)
from orchestrate.extractors.pyaudioanalysis import pyaudioanalysis

# pyAudioAnalysis reads int16-scaled samples (it divides by 2**15 itself).
INT16_SCALE = 32768.0


@dataclass(frozen=True)
class EmodalFace:
    """``face``: the middle frame's largest face, ``face_size`` square, grayscale uint8."""

    name: ClassVar[str] = "emodal_face"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "video"
    outputs: ClassVar[tuple[str, ...]] = ("face", "frames_with_face")

    face_size: int = 128

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(self, "face_size")

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        track, position = middle_face_position(media)
        gray = track.gray_face(position, self.face_size)  # shared with Wang and Mitseas
        return {"face": gray, "frames_with_face": np.array(track.frames_with_face)}

    def make_embedder(self) -> Embedder | None:
        return None


@dataclass(frozen=True)
class EmodalAudio:
    """``features``: the clip mean of pyAudioAnalysis's 68 short-term features at 16 kHz."""

    name: ClassVar[str] = "emodal_audio"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "audio"
    outputs: ClassVar[tuple[str, ...]] = ("features",)

    sample_rate: int = 16000
    window: float = 0.050  # seconds
    step: float = 0.025  # seconds
    min_rms: float = DEFAULT_MIN_RMS  # quieter clips are "silent audio"

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(self, "sample_rate", "window", "step", "min_rms")

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        samples = audible_samples(media, self.sample_rate, self.min_rms)
        window = int(round(self.window * self.sample_rate))
        step = int(round(self.step * self.sample_rate))
        if samples.size < window:
            raise ExtractionError(f"audio shorter than one {self.window * 1000:.0f} ms window")
        short_term = pyaudioanalysis_short_term(samples, self.sample_rate, window, step)
        return {"features": finite_features(short_term.mean(axis=1), "short-term audio features")}

    def make_embedder(self) -> Embedder | None:
        return None


def pyaudioanalysis_short_term(
    samples: np.ndarray, sample_rate: int, window: int, step: int
) -> np.ndarray:
    """pyAudioAnalysis short-term features with deltas: ``(68, windows)``."""
    ShortTermFeatures, _ = pyaudioanalysis()
    features, _ = ShortTermFeatures.feature_extraction(
        samples.astype(np.float64) * INT16_SCALE, sample_rate, window, step, deltas=True
    )
    return features

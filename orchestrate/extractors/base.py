"""The contract every feature extractor follows.

Ingest decodes a clip once (``orchestrate.media.decode_clip``) into a ``ClipMedia``: the
largest face of every decoded frame, cropped from the full-resolution frame (raw frames
are dropped as soon as their face is cropped), and the mono audio track. Each extractor
turns that into named feature arrays. Extractors that run a heavy network (VGG16, the
FER CNN) split their work: ``extract`` returns the face crops to embed, and the ingest
stage runs ``make_embedder()`` inside ``Dataset.map_batches`` with an actor pool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

Modality = Literal["audio", "video"]


class ExtractionError(Exception):
    """A clip cannot give this extractor's features; the message is the one-line reason."""


@dataclass
class FaceTrack:
    """Face crops of the decoded frames of one clip.

    ``crops[i]`` is the largest face of frame ``frame_indices[i]`` as a square BGR uint8
    array of side ``crop_size``, or ``None`` where no face was found in that frame.
    """

    frame_indices: list[int]
    crops: list[np.ndarray | None]
    fps: float
    crop_size: int

    @property
    def frames_with_face(self) -> int:
        return sum(crop is not None for crop in self.crops)


@dataclass
class AudioTrack:
    """The clip's audio, mixed to mono float32 in [-1, 1] at its native rate."""

    samples: np.ndarray
    sample_rate: int
    _resampled: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def at_rate(self, sample_rate: int) -> np.ndarray:
        """The samples resampled to ``sample_rate`` (computed once per rate)."""
        ...


@dataclass
class ClipMedia:
    faces: FaceTrack | None  # None when no extractor asked for video
    audio: AudioTrack | None  # None when no extractor asked for audio


class Extractor(Protocol):
    name: str
    version: str
    modality: Modality
    params: dict[str, Any]

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        """Feature arrays of one clip (or the crops its embedder consumes).

        Raises ``ExtractionError`` with a one-line reason when the clip can't give them.
        """
        ...

    def make_embedder(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
        """A batch function for ``map_batches`` (None for extractors without a network)."""
        ...


def param_hash(params: dict[str, Any]) -> str:
    """A short stable hash of an extractor's parameters: part of the cache key."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]

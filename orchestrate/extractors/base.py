"""The contract every feature extractor follows.

Ingest decodes a clip once (``orchestrate.media.decode_clip``) into a ``ClipMedia``: the
largest face of every decoded frame, cropped from the full-resolution frame (raw frames
are dropped as soon as their face is cropped), and the mono audio track. Each extractor
turns that into named feature arrays. Extractors that run a heavy network (VGG16, the
FER CNN) split their work: ``extract`` returns the face crops to embed, and the ingest
stage runs ``make_embedder()`` inside ``Dataset.map_batches`` with an actor pool.

Besides the contract, this module holds the few checks every extractor shares: parameter
validation, "which frames have a face", and "is there audible audio".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

Modality = Literal["audio", "video"]

# What ``make_embedder()`` returns: the per-clip outputs of ``extract`` for a batch of clips
# in, the per-clip stored arrays out (same order, same length).
Embedder = Callable[[list[dict[str, np.ndarray]]], list[dict[str, np.ndarray]]]

# Below -80 dBFS RMS a track carries no speech: pyAudioAnalysis would only amplify noise.
DEFAULT_MIN_RMS = 1e-4
# Inputs per forward pass of a network on a GPU; on a CPU each network uses a smaller,
# cache-sized forward (see forward_batch_size).
GPU_FORWARD_BATCH = 256


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
    still: bool = False  # one still image (fps 0), not a video's frames
    # (position, side) -> grayscale face: extractors that need the same face share it.
    _gray: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def gray_face(self, position: int, size: int) -> np.ndarray:
        """``crops[position]`` in grayscale at ``size`` x ``size`` (computed once per size).

        BGR to gray first, then shrunk with area interpolation (enlarged: bilinear), as
        every video extractor of the papers does; EMODal, Wang and Mitseas share the result.
        """
        key = (position, size)
        if key not in self._gray:
            import cv2

            crop = self.crops[position]
            if crop is None:
                raise ValueError(f"frame {self.frame_indices[position]} has no face")
            gray_key = (position, crop.shape[0])
            gray = self._gray.get(gray_key)
            if gray is None:
                gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
                self._gray[gray_key] = gray
            if gray.shape[0] != size:
                interpolation = cv2.INTER_AREA if gray.shape[0] > size else cv2.INTER_LINEAR
                gray = cv2.resize(gray, (size, size), interpolation=interpolation)
            self._gray[key] = gray
        return self._gray[key]

    @property
    def frames_with_face(self) -> int:
        return sum(crop is not None for crop in self.crops)

    @property
    def frame_stride(self) -> int:
        """The step between decoded frames (1: every frame was decoded)."""
        if len(self.frame_indices) < 2:
            return 1
        return self.frame_indices[1] - self.frame_indices[0]


@dataclass
class AudioTrack:
    """The clip's audio, mixed to mono float32 in [-1, 1] at its native rate."""

    samples: np.ndarray
    sample_rate: int
    _resampled: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def at_rate(self, sample_rate: int) -> np.ndarray:
        """The samples resampled to ``sample_rate`` (computed once per rate)."""
        if sample_rate == self.sample_rate:
            return self.samples
        if sample_rate not in self._resampled:
            # Imported here: decoding and the registry must not pay torch's import time.
            import torch
            import torchaudio.functional

            resampled = torchaudio.functional.resample(
                torch.from_numpy(np.ascontiguousarray(self.samples, dtype=np.float32)),
                orig_freq=self.sample_rate,
                new_freq=sample_rate,
            )
            self._resampled[sample_rate] = resampled.numpy()
        return self._resampled[sample_rate]

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class ClipMedia:
    faces: FaceTrack | None  # None when no extractor asked for video
    audio: AudioTrack | None  # None when no extractor asked for audio


class Extractor(Protocol):
    name: str
    version: str
    modality: Modality
    outputs: tuple[str, ...]  # names of the stored arrays (the embedder's, if it has one)

    @property
    def params(self) -> dict[str, Any]: ...

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        """Feature arrays of one clip (or the crops its embedder consumes).

        Raises ``ExtractionError`` with a one-line reason when the clip can't give them.
        """
        ...

    def make_embedder(self) -> Embedder | None:
        """A batch function for ``map_batches`` (None for extractors without a network).

        It is cheap to make: the network is loaded on its first call, in the actor.
        """
        ...


def param_hash(params: dict[str, Any]) -> str:
    """A short stable hash of an extractor's parameters: part of the cache key."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def extractor_params(extractor: Any) -> dict[str, Any]:
    """An extractor dataclass's parameters: its fields, by name."""
    return {f.name: getattr(extractor, f.name) for f in dataclasses.fields(extractor)}


def check_param_types(extractor: Any) -> None:
    """Check each field of an extractor dataclass against its annotation.

    Handles the annotations extractors use: ``int``, ``float`` (an int is accepted and
    stored as float, as YAML writes ``1`` for ``1.0``), ``str``, ``bool`` and ``X | None``.
    Raises ``ValueError("<extractor>.<param>: ...")``.
    """
    hints = typing.get_type_hints(type(extractor))
    for f in dataclasses.fields(extractor):
        value = getattr(extractor, f.name)
        allowed = _allowed_types(hints[f.name])
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(extractor, f.name, float(value))
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, tuple(t for t in allowed if t is not type(None)))
        if not ok:
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{extractor.name}.{f.name}: must be {expected}, got {value!r}")


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def require_positive(extractor: Any, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` that is not > 0."""
    for name in names:
        if getattr(extractor, name) <= 0:
            raise ValueError(
                f"{extractor.name}.{name}: must be > 0, got {getattr(extractor, name)!r}"
            )


def video_faces(
    media: ClipMedia, frame_step: int = 1
) -> tuple[FaceTrack, list[int], list[np.ndarray]]:
    track, positions = video_face_positions(media, frame_step)
    return (
        track,
        [track.frame_indices[p] for p in positions],
        [track.crops[p] for p in positions],  # type: ignore[misc]
    )


def video_face_positions(media: ClipMedia, frame_step: int = 1) -> tuple[FaceTrack, list[int]]:
    """The clip's face track and the frames at multiples of ``frame_step`` that have a face.

    Returns ``(track, frame_indices, crops)``. Raises ``ExtractionError`` when no such frame
    has a face, and ``ValueError`` when the track was decoded at a stride that can't give
    every ``frame_step``-th frame (an ingest wiring mistake, not a property of the clip).
    """
    track = media.faces
    if track is None:
        raise ValueError("this extractor needs video: decode the clip with need_video=True")
    if frame_step % track.frame_stride:
        raise ValueError(
            f"frames were decoded every {track.frame_stride}, "
            f"which can't give every {frame_step}th frame: decode with frame_stride=1"
        )
    picked = [
        position
        for position, (index, crop) in enumerate(zip(track.frame_indices, track.crops, strict=True))
        if index % frame_step == 0 and crop is not None
    ]
    if not picked:
        if track.still:
            raise ExtractionError("no face in the image")
        looked_at = sum(index % frame_step == 0 for index in track.frame_indices)
        raise ExtractionError(f"no face in any of {looked_at} frames")
    return track, picked


def face_nearest_middle(media: ClipMedia) -> tuple[FaceTrack, np.ndarray]:
    """The face of the clip's middle frame, else of the nearest frame that has one.

    Raises ``ExtractionError("no face in any of N frames")`` when no frame has a face.
    """
    track, position = middle_face_position(media)
    return track, track.crops[position]  # type: ignore[return-value]


def middle_face_position(media: ClipMedia) -> tuple[FaceTrack, int]:
    """``face_nearest_middle``'s face as its position in the track (for ``gray_face``)."""
    track, positions = video_face_positions(media, frame_step=1)
    indices = [track.frame_indices[p] for p in positions]
    middle = track.frame_indices[len(track.frame_indices) // 2]
    nearest = min(range(len(indices)), key=lambda i: (abs(indices[i] - middle), indices[i]))
    return track, positions[nearest]


def audible_samples(media: ClipMedia, sample_rate: int, min_rms: float) -> np.ndarray:
    """The clip's mono samples at ``sample_rate``; ``ExtractionError`` when silent."""
    audio = media.audio
    if audio is None:
        raise ValueError("this extractor needs audio: decode the clip with need_audio=True")
    if audio.samples.size == 0:
        raise ExtractionError("no audio samples")
    rms = float(np.sqrt(np.mean(np.square(audio.samples, dtype=np.float64))))
    if not np.isfinite(rms):
        raise ExtractionError("audio samples are not finite")
    if rms < min_rms:
        raise ExtractionError(f"silent audio (RMS below {20 * np.log10(min_rms):.0f} dBFS)")
    return audio.at_rate(sample_rate)


def finite_features(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as float32; ``ExtractionError`` when any value is NaN or infinite."""
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ExtractionError(f"{what} are not finite")
    return array


def forward_batch_size(device_type: str, on_cpu: int) -> int:
    """Inputs per forward pass of a network on ``device_type`` ("cpu", "cuda", ...).

    On a CPU, ``on_cpu``: the network's size whose activations stay near the core's caches
    (a forward over hundreds of inputs runs several times slower per input on one thread,
    with the same outputs; BENCHMARKS.md). Elsewhere ``GPU_FORWARD_BATCH``.
    """
    return on_cpu if device_type == "cpu" else GPU_FORWARD_BATCH

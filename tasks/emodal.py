"""EMODal (Zhang et al., SenSys 2018): common and modality-specific information, jointly trained.

The paper (``emodal-zhang-2018-sensys.txt``) in one breath: a 128x128 grayscale face goes
through an image CNN to a 10-d image feature, 68 pyAudioAnalysis features go through an
audio DNN to a 10-d audio feature, and four losses train both networks together:

    loss = w_common * (-SoftHGR(f_img, f_aud))     common: maximal correlation of the two
         + w_cls    * CE(fused softmax head)       classify: on the concatenated 20-d feature
         + w_img    * CE(image head)               specific: each modality on its own
         + w_aud    * CE(audio head)

trained with Adam. A clip is classified by the fused softmax head.

What the paper leaves open, and what this module does:

- Image CNN: "three 3x3 convolutional layers, each followed by a max pooling layer", flatten,
  a fully connected layer, dropout, a 10-unit fully connected layer. Channel counts, the FC
  width and the dropout rate are not given: they are knobs (``conv_channels`` doubles per
  layer: c, 2c, 4c; ``fc_width``; ``dropout``). Convolutions are same-padded with ReLU and
  2x2 pooling, so a 128x128 face leaves the third pool as 16x16.
- Audio DNN: fully connected 68 -> 128 -> 64 -> ``feature_size`` with ReLU between layers.
- The 10-d features are linear (no activation): Soft-HGR is defined on zero-mean features
  of any scale, and the heads are linear softmax classifiers on top of them.
- Soft-HGR (Wang et al. 2019, the paper's ref. [6]) on a batch: centre F and G (m x k),
  ``sum_i f_i . g_i / (m - 1) - 1/2 tr(cov_f cov_g)`` with ``cov = X^T X / (m - 1)``.
- Inputs: faces are scaled to [0, 1] and standardised with the training split's pixel mean
  and standard deviation; audio features are standardised per dimension
  (``StandardScaler``) on the training split only.
- Variants: ``audio`` and ``video`` train one network and its own head with cross-entropy
  only (the paper's unimodal rows); ``fused`` uses the full loss.

The paper's numbers come from its own data set (11606 clips from 33 TV shows and 20 movies,
data-augmented, Chinese speakers, 80% for training), not RAVDESS: they are a reference, not
a target this project can reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional

from tasks.common import ExportedModel, FeatureSet, Knobs, PaperResult, TaskSpec, Variant, seeded

NAME = "emodal"

# The paper's four emotions, in the order of its confusion matrix (Table 2).
CLASSES: tuple[str, ...] = ("angry", "happy", "neutral", "sad")

FACE = "emodal_face.face"
AUDIO = "emodal_audio.features"


@dataclass(frozen=True)
class EmodalKnobs(Knobs):
    """EMODal's knobs; the paper gives the feature size, the rest are choices (defaults)."""

    TASK: ClassVar[str] = NAME

    # Loss weights: the paper combines the four losses without giving weights: equal ones.
    w_common: float = 1.0
    w_cls: float = 1.0
    w_img: float = 1.0
    w_aud: float = 1.0
    feature_size: int = 10  # the paper's 10-d image and audio features
    conv_channels: int = 16  # first conv layer; the next two have 2x and 4x as many
    fc_width: int = 128  # the image CNN's first fully connected layer
    dropout: float = 0.5
    lr: float = 1e-3  # Adam's default; the paper gives none
    batch_size: int = 32
    epochs: int = 30

    def check(self) -> None:
        self.require_at_least(1, "feature_size", "conv_channels", "fc_width", "batch_size")
        self.require_at_least(1, "epochs")
        self.require(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)")
        self.require(self.lr > 0, "lr", "> 0")


# The knobs each variant reads: a sweep of a variant searches only these (unimodal rows
# train their own head with cross-entropy alone, so no loss weight reaches them).
_TRAINING_KNOBS = ("feature_size", "lr", "batch_size", "epochs")
_IMAGE_KNOBS = ("conv_channels", "fc_width", "dropout")
_LOSS_WEIGHTS = ("w_common", "w_cls", "w_img", "w_aud")
PAPER_PROTOCOL = "random-80-20"
VARIANTS: dict[str, Variant] = {
    "audio": Variant((AUDIO,), _TRAINING_KNOBS, PAPER_PROTOCOL),
    "video": Variant((FACE,), (*_TRAINING_KNOBS, *_IMAGE_KNOBS), PAPER_PROTOCOL),
    "fused": Variant(
        (FACE, AUDIO), (*_TRAINING_KNOBS, *_IMAGE_KNOBS, *_LOSS_WEIGHTS), PAPER_PROTOCOL
    ),
}


_PAPER_NOTE = (
    "the authors' own data set (11606 augmented clips from Chinese TV shows and movies, "
    "4 emotions), 80% train / 20% test; not RAVDESS"
)
PAPER_RESULTS: tuple[PaperResult, ...] = (
    PaperResult("audio", "accuracy", 0.5220, PAPER_PROTOCOL, _PAPER_NOTE),
    PaperResult("video", "accuracy", 0.6373, PAPER_PROTOCOL, _PAPER_NOTE),
    PaperResult("fused", "accuracy", 0.6602, PAPER_PROTOCOL, _PAPER_NOTE),
)


# -- the common loss ---------------------------------------------------------------------------


def soft_hgr(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The Soft-HGR objective of a batch of paired features ``f``, ``g`` (both ``(m, k)``).

    ``sum_i f_i . g_i / (m - 1) - 1/2 tr(cov_f cov_g)`` on centred features, with
    ``cov = X^T X / (m - 1)``. Maximal (``k / 2``) when f = g with identity covariance;
    the common loss is its negative.
    """
    if f.shape != g.shape or f.dim() != 2:
        raise ValueError(
            f"soft_hgr needs two (m, k) batches of one shape, "
            f"got {tuple(f.shape)} and {tuple(g.shape)}"
        )
    m = f.shape[0]
    if m < 2:
        raise ValueError(f"soft_hgr needs a batch of at least 2 pairs, got {m}")
    f = f - f.mean(dim=0, keepdim=True)
    g = g - g.mean(dim=0, keepdim=True)
    correlation = (f * g).sum() / (m - 1)
    cov_f = f.T @ f / (m - 1)
    cov_g = g.T @ g / (m - 1)
    return correlation - 0.5 * torch.trace(cov_f @ cov_g)


# -- the networks --------------------------------------------------------------------------------


class ImageNet(nn.Module):
    """Three 3x3 conv + 2x2 max-pool blocks, flatten, FC, dropout, FC -> image feature."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        conv_channels: int,
        fc_width: int,
        dropout: float,
        feature_size: int,
    ):
        super().__init__()
        channels = (1, conv_channels, 2 * conv_channels, 4 * conv_channels)
        blocks: list[nn.Module] = []
        for inputs, outputs in zip(channels[:-1], channels[1:], strict=True):
            blocks += [
                nn.Conv2d(inputs, outputs, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.convolutions = nn.Sequential(*blocks)
        height, width = (side // 8 for side in image_shape)  # three 2x2 pools
        if height < 1 or width < 1:
            raise ValueError(
                f"{FACE}: faces of {image_shape} are too small for three 2x2 pools (need >= 8x8)"
            )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * height * width, fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, feature_size),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``(batch, H, W)`` standardised faces -> ``(batch, feature_size)``."""
        return self.head(self.convolutions(faces.unsqueeze(1)))


class AudioNet(nn.Module):
    """Fully connected 68 -> 128 -> 64 -> feature_size (the paper's audio DNN)."""

    def __init__(self, audio_dim: int, feature_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(audio_dim, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, feature_size),
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.layers(audio)


class EmodalNet(nn.Module):
    """The modality networks a variant uses, their heads, and (fused) the classify head."""

    def __init__(
        self,
        knobs: EmodalKnobs,
        variant: str,
        image_shape: tuple[int, int] | None,
        audio_dim: int | None,
    ):
        super().__init__()
        size = knobs.feature_size
        n_classes = len(CLASSES)
        self.image = self.audio = self.image_head = self.audio_head = self.fused_head = None
        if variant in ("video", "fused"):
            assert image_shape is not None
            self.image = ImageNet(
                image_shape,
                knobs.conv_channels,
                knobs.fc_width,
                knobs.dropout,
                size,
            )
            self.image_head = nn.Linear(size, n_classes)
        if variant in ("audio", "fused"):
            assert audio_dim is not None
            self.audio = AudioNet(audio_dim, size)
            self.audio_head = nn.Linear(size, n_classes)
        if variant == "fused":
            self.fused_head = nn.Linear(2 * size, n_classes)

    def forward(
        self, faces: torch.Tensor | None, audio: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Features and logits by name: ``f_img``, ``f_aud``, ``img``, ``aud``, ``fused``."""
        out: dict[str, torch.Tensor] = {}
        if self.image is not None:
            out["f_img"] = self.image(faces)
            out["img"] = self.image_head(out["f_img"])
        if self.audio is not None:
            out["f_aud"] = self.audio(audio)
            out["aud"] = self.audio_head(out["f_aud"])
        if self.fused_head is not None:
            out["fused"] = self.fused_head(torch.cat([out["f_img"], out["f_aud"]], dim=1))
        return out


def emodal_loss(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, knobs: EmodalKnobs
) -> tuple[torch.Tensor, dict[str, float]]:
    """The variant's training loss and its parts (the full four-part loss when fused)."""
    if "fused" not in outputs:  # a unimodal variant: its own head, cross-entropy only
        logits = outputs["img"] if "img" in outputs else outputs["aud"]
        loss = functional.cross_entropy(logits, labels)
        return loss, {}
    ce_fused = functional.cross_entropy(outputs["fused"], labels)
    ce_img = functional.cross_entropy(outputs["img"], labels)
    ce_aud = functional.cross_entropy(outputs["aud"], labels)
    loss = knobs.w_cls * ce_fused + knobs.w_img * ce_img + knobs.w_aud * ce_aud
    parts = {"ce_fused": ce_fused.item(), "ce_img": ce_img.item(), "ce_aud": ce_aud.item()}
    if labels.shape[0] >= 2:  # Soft-HGR needs two pairs to centre; a lone clip has none
        hgr = soft_hgr(outputs["f_img"], outputs["f_aud"])
        loss = loss - knobs.w_common * hgr
        parts["soft_hgr"] = hgr.item()
    return loss, parts


# -- training --------------------------------------------------------------------------------


class EmodalTrainer:
    """Trains one EMODal variant on one training split, an epoch at a time."""

    def __init__(self, knobs: EmodalKnobs, variant: str, train: FeatureSet, seed: int):
        self.knobs = knobs
        self.variant = variant
        self.seed = seed
        self.epoch = 0
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.labels = torch.as_tensor(_checked_labels(train), dtype=torch.long)

        # Normalisation statistics come from the training split only.
        self.face_mean = self.face_std = None
        self.audio_scaler: StandardScaler | None = None
        faces = audio = None
        if FACE in VARIANTS[variant].columns:
            raw_faces = _faces(train)
            self.face_shape = raw_faces.shape[1:]
            self.face_mean = float(raw_faces.mean())
            self.face_std = float(raw_faces.std()) or 1.0
            faces = (raw_faces - self.face_mean) / self.face_std
        if AUDIO in VARIANTS[variant].columns:
            raw_audio = _audio(train)
            self.audio_scaler = StandardScaler().fit(raw_audio)
            audio = self.audio_scaler.transform(raw_audio).astype(np.float32)
        self.faces = None if faces is None else torch.as_tensor(faces)
        self.audio = None if audio is None else torch.as_tensor(audio)

        with seeded(seed):
            self.model = EmodalNet(
                knobs,
                variant,
                None if faces is None else tuple(faces.shape[1:]),
                None if audio is None else audio.shape[1],
            ).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=knobs.lr)

    def fit_epoch(self) -> dict[str, float]:
        """One pass over the training split in shuffled mini-batches."""
        self.epoch += 1
        # Seeded per epoch: the same (seed, epoch) gives the same shuffle and dropout masks,
        # whatever else ran in this process in between.
        with seeded(self.seed, self.epoch) as rng:
            order = rng.permutation(len(self.labels))
            self.model.train()
            totals: dict[str, float] = {}
            for batch in _balanced_batches(order, self.knobs.batch_size):
                index = torch.as_tensor(batch)
                outputs = self.model(self._take(self.faces, index), self._take(self.audio, index))
                loss, parts = emodal_loss(outputs, self.labels[index].to(self.device), self.knobs)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                for name, value in {"train_loss": loss.item(), **parts}.items():
                    totals[name] = totals.get(name, 0.0) + value * len(batch)
        return {name: total / len(order) for name, total in totals.items()}

    @torch.no_grad()
    def predict_proba(self, features: FeatureSet) -> np.ndarray:
        """Softmax of the variant's classifier: the fused head, or the modality's own head."""
        self.model.eval()
        faces = audio = None
        if self.face_mean is not None:
            raw_faces = _faces(features)
            if raw_faces.shape[1:] != self.face_shape:
                raise ValueError(
                    f"{FACE}: faces are {raw_faces.shape[1:]}, "
                    f"the model was trained on {self.face_shape}"
                )
            faces = torch.as_tensor((raw_faces - self.face_mean) / self.face_std)
        if self.audio_scaler is not None:
            audio = torch.as_tensor(
                self.audio_scaler.transform(_audio(features)).astype(np.float32)
            )
        head = {"audio": "aud", "video": "img", "fused": "fused"}[self.variant]
        probabilities = []
        for start in range(0, len(features), 256):
            index = torch.arange(start, min(start + 256, len(features)))
            logits = self.model(self._take(faces, index), self._take(audio, index))[head]
            probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        if not probabilities:
            return np.zeros((0, len(CLASSES)))
        return np.concatenate(probabilities).astype(np.float64)

    def _take(self, tensor: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
        return None if tensor is None else tensor[index].to(self.device)

    def export(self, features: FeatureSet) -> ExportedModel:
        """The network with the variant's softmax head; inputs standardised as in training."""
        inputs: dict[str, np.ndarray] = {}
        if self.face_mean is not None:
            inputs["faces"] = ((_faces(features) - self.face_mean) / self.face_std).astype(
                np.float32
            )
        if self.audio_scaler is not None:
            inputs["audio"] = self.audio_scaler.transform(_audio(features)).astype(np.float32)
        head = {"audio": "aud", "video": "img", "fused": "fused"}[self.variant]
        model = EmodalProbabilities(self.model.cpu().eval(), head, tuple(inputs))
        self.model.to(self.device)
        return ExportedModel(
            "pytorch",
            model,
            inputs,
            f"EMODal {self.variant}: inputs {', '.join(inputs)} standardised with the training "
            "split's statistics (faces: one mean/std; audio: per-feature StandardScaler)",
        )


class EmodalProbabilities(nn.Module):
    """``EmodalNet`` with one head's softmax: ``forward(*inputs)`` in the order of ``names``."""

    def __init__(self, network: EmodalNet, head: str, names: tuple[str, ...]):
        super().__init__()
        self.network, self.head, self.names = network, head, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs, strict=True))
        outputs = self.network(given.get("faces"), given.get("audio"))
        return torch.softmax(outputs[self.head], dim=1)


def make_trainer(
    knobs: EmodalKnobs | Mapping[str, Any], variant: str, train: FeatureSet, seed: int
) -> EmodalTrainer:
    """An EMODal trainer for ``variant`` on ``train``.

    ``knobs``: the knobs, or a mapping of the knobs that differ from the defaults.
    """
    knobs = EmodalKnobs.of(knobs)
    for column in SPEC.variant(variant).columns:
        if column not in train.columns:
            raise ValueError(f"emodal/{variant}: the training features have no column {column!r}")
    return EmodalTrainer(knobs, variant, train, seed)


# -- input checks ---------------------------------------------------------------------------------


def _checked_labels(train: FeatureSet) -> np.ndarray:
    labels = np.asarray(train.labels)
    if len(labels) == 0:
        raise ValueError("emodal: the training split has no clips")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if len(bad):
        raise ValueError(
            f"emodal: clip {train.clip_ids[bad[0]]} has label {labels[bad[0]]}, "
            f"not an index into {CLASSES}"
        )
    return labels


def _faces(features: FeatureSet) -> np.ndarray:
    """``(clips, H, W)`` faces scaled to [0, 1]; one size for all, or an error naming the clip."""
    faces = features.columns[FACE]
    if not faces:
        return np.zeros((0, 1, 1), dtype=np.float32)
    shape = np.shape(faces[0])
    for clip_id, face in zip(features.clip_ids, faces, strict=True):
        if np.ndim(face) != 2 or np.shape(face) != shape:
            raise ValueError(
                f"clip {clip_id}: {FACE} is {np.shape(face)}, expected a grayscale face of {shape}"
            )
    return np.stack(faces).astype(np.float32) / 255.0


def _audio(features: FeatureSet) -> np.ndarray:
    """``(clips, dim)`` audio features; NaN/inf or a wrong size is an error naming the clip."""
    vectors = features.columns[AUDIO]
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    dim = np.size(vectors[0])
    for clip_id, vector in zip(features.clip_ids, vectors, strict=True):
        if np.ndim(vector) != 1 or np.size(vector) != dim:
            raise ValueError(
                f"clip {clip_id}: {AUDIO} has shape {np.shape(vector)}, expected ({dim},)"
            )
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"clip {clip_id}: {AUDIO} holds NaN or infinite values")
    return np.stack(vectors).astype(np.float32)


def _balanced_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Mini-batches of near-equal size: no trailing batch of 1 (for batch_size >= 4).

    Soft-HGR centres each batch: a batch of one clip carries no correlation signal.
    """
    return np.array_split(order, max(1, math.ceil(len(order) / batch_size)))


SPEC = TaskSpec(
    name=NAME,
    classes=CLASSES,
    variants=VARIANTS,
    knobs=EmodalKnobs,
    paper_results=PAPER_RESULTS,
    make_trainer=make_trainer,
)

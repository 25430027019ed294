"""Song, Cai & Tan: VGG16-GRU (faces) and MFCC-GRU (speech), feature fusion, softmax; 8 classes.

The paper (``song-cai-tan-vgg16-gru-mfcc-gru-fusion.txt``), read as a recipe:

- **video branch**: frozen ImageNet VGG16 block-5 pooled features of every 4th frame's
  48x48x3 face (column ``song_vgg16.features``, ``(T, 512)``) → GRU (best: 1 layer,
  512 units, batch norm; Table I) → fully connected 256.
- **audio branch**: 13 MFCC per 4096-sample frame (column ``song_mfcc.mfcc``, ``(T, 13)``)
  → GRU (best: 3 layers, 256 units, batch norm; Table II) → fully connected 256.
- **fusion**: both FC 256 outputs concatenated (512) → softmax over the 8 RAVDESS emotions.

Choices the paper leaves open, made here:

- *Where batch norm goes.* Section II.E puts it "between the fully connected layer and the
  concatenation layer", so each branch's "with batch normalization" switch adds a
  ``BatchNorm1d`` on that branch's FC output (after its ReLU). BatchNorm1d normalises each
  feature on its own, so this is the same as one batch norm on the 512-wide concatenation
  (Fig. 1, SPEC's "concat 512 → BN → softmax") when both branches have it on.
  Single-branch variants are the same branch followed by the softmax layer.
- *Variable lengths.* Clips are zero-padded per batch and packed with
  ``pack_padded_sequence(enforce_sorted=False)``; the branch reads the top GRU layer's
  hidden state at each clip's own last frame, so padding never reaches the model.
- *Inputs* are standardised per feature dimension with statistics of the training split's
  frames only (fitted inside the trainer).
- *Clip centring* (``video_clip_centred``, off by default: not in the paper) subtracts each
  clip's mean video feature from its frames before standardising, so the video GRU reads how
  the face changes over the clip and not what stays constant in it (background, identity,
  lighting). Frozen ImageNet features carry the expression in the frame itself; features of
  a randomly initialised VGG16 (the demo, offline) are dominated by what is constant, and a
  linear probe on their clip means is at chance while one on their change from the clip's
  mean is not.
- *Training* is not described (optimiser, learning rate, batch size, epochs): Adam,
  cross-entropy on the softmax layer's logits, the defaults of ``SongKnobs``. A final training
  batch of one clip is dropped when batch norm is on (its batch variance is undefined).
- *Dropout* is not in the paper (``SongKnobs.dropout = 0``); the search space tries it,
  after each branch's FC layer and between stacked GRU layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence
from torch.utils.data import DataLoader, Dataset

from orchestrate.emotions import EMOTIONS
from tasks.common import ExportedModel, FeatureSet, Knobs, PaperResult, TaskSpec, Variant, seeded

NAME = "song"
CLASSES: tuple[str, ...] = EMOTIONS  # all 8 RAVDESS speech emotions

VIDEO_COLUMN = "song_vgg16.features"
AUDIO_COLUMN = "song_mfcc.mfcc"
# Branch (modality) name -> the feature column its GRU reads.
BRANCH_COLUMNS: dict[str, str] = {"video": VIDEO_COLUMN, "audio": AUDIO_COLUMN}

INTEGER_KNOBS = ("video_gru_layers", "video_gru_units", "audio_gru_layers", "audio_gru_units")


@dataclass(frozen=True)
class SongKnobs(Knobs):
    """Song's knobs; the defaults are the paper's best configurations (Tables I and II)."""

    TASK: ClassVar[str] = NAME

    video_gru_layers: int = 1  # Table I best: 1 layer, 512 units, with batch norm (79%)
    video_gru_units: int = 512
    video_batch_norm: bool = True
    video_clip_centred: bool = False  # not in the paper: frames minus their clip's mean
    audio_gru_layers: int = 3  # Table II best: 3 layers, 256 units, with batch norm (80%)
    audio_gru_units: int = 256
    audio_batch_norm: bool = True
    fc_units: int = 256  # "experimentally set to 256 and 256"
    dropout: float = 0.0  # not in the paper
    lr: float = 1.0e-3
    batch_size: int = 32
    epochs: int = 20  # not in the paper; ASHA stops weak configurations earlier

    def check(self) -> None:
        self.require_at_least(1, *INTEGER_KNOBS, "fc_units", "batch_size", "epochs")
        self.require(self.lr > 0, "lr", "> 0")
        self.require(0 <= self.dropout < 1, "dropout", "in [0, 1)")


_SHARED_KNOBS = ("fc_units", "dropout", "lr", "batch_size", "epochs")
_VIDEO_KNOBS = ("video_gru_layers", "video_gru_units", "video_batch_norm", "video_clip_centred")
_AUDIO_KNOBS = ("audio_gru_layers", "audio_gru_units", "audio_batch_norm")
# Tables I and II (single branches) are one random 80/20 split, the fused model's 90% is
# 10-fold cross-validation.
VARIANTS: dict[str, Variant] = {
    "audio": Variant((AUDIO_COLUMN,), (*_AUDIO_KNOBS, *_SHARED_KNOBS), "random-80-20"),
    "video": Variant((VIDEO_COLUMN,), (*_VIDEO_KNOBS, *_SHARED_KNOBS), "random-80-20"),
    "fused": Variant(
        (VIDEO_COLUMN, AUDIO_COLUMN),
        (*_VIDEO_KNOBS, *_AUDIO_KNOBS, *_SHARED_KNOBS),
        "stratified-10fold",
    ),
}

PAPER_RESULTS: tuple[PaperResult, ...] = (
    PaperResult(
        "audio",
        "accuracy",
        0.80,
        "random-80-20",
        "Table II: MFCC + 3-layer GRU (256 units) with batch norm; one random 80/20 split",
    ),
    PaperResult(
        "video",
        "accuracy",
        0.79,
        "random-80-20",
        "Table I: VGG16 + 1-layer GRU (512 units) with batch norm; one random 80/20 split",
    ),
    PaperResult(
        "fused",
        "accuracy",
        0.90,
        "stratified-10fold",
        "Section III.E: mean over 10 cross-validation folds (stratification not stated)",
    ),
)


# --- model ---------------------------------------------------------------------------------


class SequenceBranch(nn.Module):
    """GRU over a padded feature sequence → last valid state → FC → ReLU → (batch norm)."""

    def __init__(
        self,
        input_dim: int,
        gru_layers: int,
        gru_units: int,
        fc_units: int,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        # nn.GRU applies dropout only between stacked layers (it warns when there is one).
        self.gru = nn.GRU(
            input_dim,
            gru_units,
            num_layers=gru_layers,
            batch_first=True,
            dropout=dropout if gru_layers > 1 else 0.0,
        )
        self.fc = nn.Linear(gru_units, fc_units)
        self.norm = nn.BatchNorm1d(fc_units) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``padded``: (clips, max_time, dim); ``lengths``: (clips,) valid frames per clip."""
        packed = pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        # h_n holds each clip's state at its own last frame, restored to the batch's order.
        _, last_state = self.gru(packed)
        return self.dropout(self.norm(torch.relu(self.fc(last_state[-1]))))


class SongNet(nn.Module):
    """One ``SequenceBranch`` per modality, concatenated, then the softmax layer (as logits)."""

    def __init__(self, branches: dict[str, SequenceBranch], fc_units: int, n_classes: int) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)
        self.classifier = nn.Linear(fc_units * len(branches), n_classes)

    def forward(self, sequences: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``sequences``: branch name -> (padded, lengths); returns class logits."""
        fused = torch.cat(
            [branch(*sequences[name]) for name, branch in self.branches.items()], dim=1
        )
        return self.classifier(fused)


# --- clips as tensors ----------------------------------------------------------------------


class ClipSequences(Dataset):
    """Standardised per-clip sequences of each branch, with the clip's label."""

    def __init__(self, sequences: dict[str, list[torch.Tensor]], labels: np.ndarray) -> None:
        self.sequences = sequences
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {name: clips[i] for name, clips in self.sequences.items()}, self.labels[i]


def collate_clips(
    batch: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Zero-pad each branch's sequences to the batch's longest and keep their true lengths."""
    names = batch[0][0].keys()
    sequences = {
        name: (
            pad_sequence([clip[name] for clip, _ in batch], batch_first=True),
            torch.tensor([len(clip[name]) for clip, _ in batch], dtype=torch.long),
        )
        for name in names
    }
    return sequences, torch.stack([label for _, label in batch])


def checked_sequences(
    features: FeatureSet, column: str, dim: int | None = None
) -> list[np.ndarray]:
    """The column's ``(time, dim)`` arrays; a clear error names the first bad clip."""
    if column not in features.columns:
        raise ValueError(f"{NAME}: the features have no column {column!r}")
    sequences = []
    for clip_id, array in zip(features.clip_ids, features.columns[column], strict=True):
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(
                f"clip {clip_id}: {column} must be a non-empty (time, dim) sequence, "
                f"got shape {array.shape}"
            )
        if dim is not None and array.shape[1] != dim:
            raise ValueError(
                f"clip {clip_id}: {column} has {array.shape[1]} features per frame, expected {dim}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"clip {clip_id}: {column} holds NaN or infinite values")
        dim = array.shape[1]
        sequences.append(array)
    return sequences


# --- training ------------------------------------------------------------------------------


class SongTrainer:
    """Trains the variant's branches (and fusion) with Adam, one epoch per ``fit_epoch``."""

    def __init__(self, knobs: SongKnobs, variant: str, train: FeatureSet, seed: int) -> None:
        self.knobs = knobs
        self.seed = seed
        self.epoch = 0
        self.branch_names = [
            name for name, column in BRANCH_COLUMNS.items() if column in VARIANTS[variant].columns
        ]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if len(train) < 2:
            raise ValueError(f"{NAME}: training needs at least 2 clips, got {len(train)}")

        # Standardisation statistics come from the training clips' frames only.
        self.scalers: dict[str, StandardScaler] = {}
        self.dims: dict[str, int] = {}
        train_sequences: dict[str, list[torch.Tensor]] = {}
        for name in self.branch_names:
            arrays = self._centred(name, checked_sequences(train, BRANCH_COLUMNS[name]))
            self.dims[name] = arrays[0].shape[1]
            self.scalers[name] = StandardScaler().fit(np.concatenate(arrays))
            train_sequences[name] = [
                torch.from_numpy(self.scalers[name].transform(a).astype(np.float32)) for a in arrays
            ]

        with seeded(seed):
            branches = {
                name: SequenceBranch(
                    input_dim=self.dims[name],
                    gru_layers=getattr(knobs, f"{name}_gru_layers"),
                    gru_units=getattr(knobs, f"{name}_gru_units"),
                    fc_units=knobs.fc_units,
                    batch_norm=getattr(knobs, f"{name}_batch_norm"),
                    dropout=knobs.dropout,
                )
                for name in self.branch_names
            }
            self.model = SongNet(branches, knobs.fc_units, len(CLASSES)).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=knobs.lr)
        self.clips = ClipSequences(train_sequences, train.labels)
        uses_batch_norm = any(getattr(knobs, f"{name}_batch_norm") for name in self.branch_names)
        # Batch norm cannot train on a batch of one clip: drop such a last batch.
        self.drop_last = uses_batch_norm and len(train) % knobs.batch_size == 1

    def _centred(self, name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Each clip's frames minus the clip's mean frame, when the branch asks for it."""
        if getattr(self.knobs, f"{name}_clip_centred", False):
            return [a - a.mean(axis=0, keepdims=True) for a in arrays]
        return arrays

    def _standardised(self, name: str, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Clip-centred (when asked) and standardised with the training frames' statistics."""
        scaler = self.scalers[name]
        return [
            torch.from_numpy(scaler.transform(a).astype(np.float32))
            for a in self._centred(name, arrays)
        ]

    def _to_device(
        self, sequences: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        # Lengths stay on the CPU: pack_padded_sequence wants them there.
        return {
            name: (padded.to(self.device), lengths) for name, (padded, lengths) in sequences.items()
        }

    def fit_epoch(self) -> dict[str, float]:
        """One pass over the training clips; mean cross-entropy and accuracy over the epoch."""
        self.epoch += 1
        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        # Batch order and dropout draws come from (seed, epoch): folds trained in lockstep in
        # one process give the same result as each fold trained alone.
        with seeded(self.seed, self.epoch) as rng:
            loader = DataLoader(
                self.clips,
                batch_size=self.knobs.batch_size,
                sampler=rng.permutation(len(self.clips)).tolist(),
                collate_fn=collate_clips,
                drop_last=self.drop_last,
            )
            for sequences, labels in loader:
                labels = labels.to(self.device)
                logits = self.model(self._to_device(sequences))
                loss = nn.functional.cross_entropy(logits, labels)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total_loss += loss.item() * len(labels)
                correct += int((logits.argmax(dim=1) == labels).sum())
                seen += len(labels)
        return {"train_loss": total_loss / seen, "train_accuracy": correct / seen}

    @torch.no_grad()
    def predict_proba(self, features: FeatureSet, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities, ``(clips, 8)``; batch norm uses its running statistics."""
        self.model.eval()
        sequences = {
            name: self._standardised(
                name, checked_sequences(features, BRANCH_COLUMNS[name], self.dims[name])
            )
            for name in self.branch_names
        }
        dataset = ClipSequences(sequences, np.zeros(len(features), dtype=np.int64))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_clips)
        probabilities = [
            torch.softmax(self.model(self._to_device(batch)), dim=1).cpu() for batch, _ in loader
        ]
        if not probabilities:
            return np.zeros((0, len(CLASSES)))
        return torch.cat(probabilities).double().numpy()

    @torch.no_grad()
    def export(self, features: FeatureSet) -> ExportedModel:
        """The network with a softmax; per branch a zero-padded batch and its lengths."""
        sequences = {
            name: self._standardised(
                name, checked_sequences(features, BRANCH_COLUMNS[name], self.dims[name])
            )
            for name in self.branch_names
        }
        batch, _ = collate_clips(
            [
                ({name: clips[i] for name, clips in sequences.items()}, torch.tensor(0))
                for i in range(len(features))
            ]
        )
        inputs: dict[str, np.ndarray] = {}
        for name, (padded, lengths) in batch.items():
            inputs[name] = padded.numpy()
            inputs[f"{name}_lengths"] = lengths.numpy()
        model = SongProbabilities(self.model.cpu().eval(), tuple(self.branch_names))
        self.model.to(self.device)
        return ExportedModel(
            "pytorch",
            model,
            inputs,
            "Song: per branch (" + ", ".join(self.branch_names) + ") a (clips, time, dim) "
            "batch standardised per feature with the training frames' StandardScaler"
            + (
                " (video frames minus their clip's mean frame first)"
                if "video" in self.branch_names and self.knobs.video_clip_centred
                else ""
            )
            + ", zero-padded, then its int64 lengths",
        )


class SongProbabilities(nn.Module):
    """``SongNet`` with a softmax: ``forward(padded, lengths, ...)`` per branch, in order."""

    def __init__(self, network: SongNet, branches: tuple[str, ...]) -> None:
        super().__init__()
        self.network, self.branches = network, branches

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        sequences = {
            name: (inputs[2 * i], inputs[2 * i + 1].long().cpu())
            for i, name in enumerate(self.branches)
        }
        return torch.softmax(self.network(sequences), dim=1)


def make_trainer(
    knobs: SongKnobs | Mapping[str, Any], variant: str, train: FeatureSet, seed: int
) -> SongTrainer:
    """A trainer for one variant on one training split, seeded by ``seed``.

    ``knobs``: the knobs, or a mapping of the knobs that differ from the defaults.
    """
    knobs = SongKnobs.of(knobs)
    branches = [
        name for name, column in BRANCH_COLUMNS.items() if column in SPEC.variant(variant).columns
    ]
    if any(getattr(knobs, f"{name}_batch_norm") for name in branches):
        knobs.require(knobs.batch_size >= 2, "batch_size", "at least 2 with batch norm on")
    return SongTrainer(knobs, variant, train, seed)


SPEC = TaskSpec(
    name=NAME,
    classes=CLASSES,
    variants=VARIANTS,
    knobs=SongKnobs,
    paper_results=PAPER_RESULTS,
    make_trainer=make_trainer,
)

"""Wang (ANU): SFEW texture descriptors, a distinctiveness-pruned shallow net and a 1-D CNN fusion.

The paper (``wang-sfew-pruning-cnn-fusion.txt``) works on SFEW's feature table: 5 principal
components of LPQ ("LBP" in its text) and 5 of PHOG per face image, Min-Max normalised, 7
emotions. Two models, five rows of its Table 3:

- **Shallow net, pruned by distinctiveness** (Gedeon & Harris 1992, the paper's ref. [9]),
  on one descriptor at a time (``shallow-lpq``, ``shallow-phog``): 5 inputs -> hidden units
  (default 16) -> 7 outputs. Algorithm 1: train one epoch; take every hidden unit's
  activation vector over the training patterns; compute the angle between each pair of
  vectors; remove one unit of each pair closer than the threshold (60 degrees, the paper's
  pick); rebuild the net without them; train on (200 epochs, batch 10, lr 1e-4).
- **Two-branch 1-D CNN** (``cnn-lpq``, ``cnn-phog``, ``cnn-fused``): one 1-D CNN branch per
  descriptor, "5 layers, each one convolution with kernel 3 and max-pooling", then FC 14
  (twice the classes) -> FC 7, trained with Smooth L1 (30 epochs, batch 10, lr 1e-4).

What the paper leaves open, and what this module does:

- Inputs: each column is reduced to ``pca_components`` (5) principal components by a PCA
  fitted on the training split only; columns that are already that narrow (the SFEW table's
  published components) skip the PCA. Then Min-Max normalisation fitted on the training
  split (Equation 1); test values may fall slightly outside [0, 1].
- Hidden units are sigmoid: the paper's Table 1 activations all lie in (0, 1).
- Angles: the paper's Table 2 is reproduced (to 0.1 degree) by the angle between the *raw*
  activation vectors of its Table 1. But raw sigmoid activations are all positive, so
  their angles lie in [0, 90) and mostly near 0: after one epoch every unit's vector is
  dominated by its constant offset, and a 60-degree threshold leaves one unit. Centring at
  0.5 (Gedeon & Harris) leaves two (one per sign of the offset). ``activation_centring``
  chooses ``raw`` (the paper's arithmetic), ``half`` (Gedeon & Harris) or ``mean`` (the
  default: each unit's mean over the patterns is subtracted, so the angle is the arccosine
  of the two units' correlation; an offset the output bias can absorb does not make units
  alike). On the real SFEW table (PHOG, 16 units, 60 degrees, 5 folds) ``raw``, ``half``
  and ``mean`` keep 1, 2 and about 5 units. Only the "similar" rule is applied (Gedeon &
  Harris also remove both units of a near-180-degree, complementary pair; the paper does
  not mention it).
- Which unit of a pair goes: pairs are processed in increasing angle order and the
  higher-index unit is removed unless one of the pair is already gone, so the survivors are
  pairwise at least the threshold apart and unit 0 always survives. As in Gedeon & Harris,
  a removed unit's outgoing weights are added to its kept twin (the unit it was closest to
  in that pair), and the difference of their centres times those weights to the output
  bias, so the rebuilt net computes nearly what the unpruned one did.
- Algorithm 1's "repeat" is read as: prune once, after one epoch of the full net, then train
  the rebuilt net (a fresh Adam state) for the full ``epochs``. A sweep counts epochs by
  ``fit_epoch()`` calls, so the first call does the pruning step whole: one epoch of the
  full net, prune, rebuild, then the pruned net's first epoch. After ``epochs`` calls the
  pruned net has trained ``epochs`` epochs, after the full net's one. Adam
  replaces the paper's unnamed PyTorch optimiser: plain SGD at lr 1e-4 barely moves in 200
  epochs.
- The shallow net is trained with cross-entropy (the paper names a loss only for the CNN);
  its probabilities are the softmax of its outputs.
- CNN branch: input ``(1 channel, length 5)``; five blocks of Conv1d(kernel 3, same padding)
  + ReLU + MaxPool1d(2, ceil_mode) where the pool only applies while the length is above 1:
  5 -> 3 -> 2 -> 1 -> 1 -> 1. ``cnn_channels`` channels in every block. The branch output
  (``cnn_channels`` x final length) is flattened; branches are concatenated; FC 14 + ReLU;
  FC 7. One-branch variants feed their single branch to the same head. Weights start from
  He initialisation: with PyTorch's default the signal fades through the seven ReLU layers
  and Smooth L1 training stalls at the class prior.
- Smooth L1 regresses the 7 outputs onto the one-hot target (the paper's "regression of the
  emotion representations"); ``predict_proba`` is the softmax of those outputs: its argmax is
  the regression's argmax, the values are not calibrated probabilities.
- Epochs: one ``epochs`` knob serves both models. The default is the CNN's 30; the shallow
  variants default to the paper's 200 (their ``Variant.defaults``).

The paper does not say how it split its 675 rows for Table 3; this project evaluates with
stratified k-fold. Its "Average Accuracy" column is the mean of per-class accuracies (recall),
i.e. UAR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import MinMaxScaler
from torch import nn
from torch.nn import functional

from tasks.common import ExportedModel, FeatureSet, Knobs, PaperResult, TaskSpec, Variant, seeded

NAME = "wang"

# SFEW's seven emotions in the table's label order (1 Angry ... 7 Surprise).
CLASSES: tuple[str, ...] = ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised")

LPQ = "wang_texture.lpq"
PHOG = "wang_texture.phog"

CENTRINGS: tuple[str, ...] = ("raw", "half", "mean")


@dataclass(frozen=True)
class WangKnobs(Knobs):
    """Wang's knobs; the defaults are the paper's where it gives them."""

    TASK: ClassVar[str] = NAME

    pca_components: int = 5  # the paper's 5 principal components per descriptor
    hidden_units: int = 16  # shallow net before pruning (the paper's default, from ref. [9])
    prune_angle: float = 60.0  # degrees: the paper's best threshold (its Figure 6b)
    activation_centring: str = "mean"  # angles of "raw", "half" (0.5) or "mean"-centred
    cnn_channels: int = 16  # per 1-D conv layer; the paper does not say
    fusion_width: int = 14  # twice the 7 classes, as the paper's first FC layer
    lr: float = 1e-4
    batch_size: int = 10
    epochs: int = 30  # the CNN's; the shallow net's is 200 (its variants' defaults)

    def check(self) -> None:
        self.require_at_least(1, "pca_components", "hidden_units", "cnn_channels")
        self.require_at_least(1, "fusion_width", "batch_size", "epochs")
        self.require(0.0 < self.prune_angle <= 180.0, "prune_angle", "in (0, 180] degrees")
        self.require(
            self.activation_centring in CENTRINGS,
            "activation_centring",
            f"one of {', '.join(CENTRINGS)}",
        )
        self.require(self.lr > 0, "lr", "> 0")


_TRAINING_KNOBS = ("pca_components", "lr", "batch_size", "epochs")
_SHALLOW_KNOBS = (*_TRAINING_KNOBS, "hidden_units", "prune_angle", "activation_centring")
_CNN_KNOBS = (*_TRAINING_KNOBS, "cnn_channels", "fusion_width")
PAPER_PROTOCOL = "stratified-kfold"
# The paper's per-model training lengths: the shallow net trains 200 epochs.
_SHALLOW_EPOCHS = {"epochs": 200}
VARIANTS: dict[str, Variant] = {
    "shallow-lpq": Variant((LPQ,), _SHALLOW_KNOBS, PAPER_PROTOCOL, _SHALLOW_EPOCHS),
    "shallow-phog": Variant((PHOG,), _SHALLOW_KNOBS, PAPER_PROTOCOL, _SHALLOW_EPOCHS),
    "cnn-lpq": Variant((LPQ,), _CNN_KNOBS, PAPER_PROTOCOL),
    "cnn-phog": Variant((PHOG,), _CNN_KNOBS, PAPER_PROTOCOL),
    "cnn-fused": Variant((LPQ, PHOG), _CNN_KNOBS, PAPER_PROTOCOL),
}

_PAPER_NOTE = (
    "SFEW feature table (675 images, 5 LPQ + 5 PHOG principal components); Table 3 'average "
    "accuracy' = mean per-class accuracy (UAR); the paper does not state its split"
)
PAPER_RESULTS: tuple[PaperResult, ...] = (
    PaperResult("shallow-lpq", "uar", 0.23, PAPER_PROTOCOL, _PAPER_NOTE),
    PaperResult("shallow-phog", "uar", 0.27, PAPER_PROTOCOL, _PAPER_NOTE),
    PaperResult("cnn-lpq", "uar", 0.20, PAPER_PROTOCOL, _PAPER_NOTE),
    PaperResult("cnn-phog", "uar", 0.28, PAPER_PROTOCOL, _PAPER_NOTE),
    PaperResult("cnn-fused", "uar", 0.31, PAPER_PROTOCOL, _PAPER_NOTE),
)


# -- distinctiveness pruning ---------------------------------------------------------------------

# How activation vectors are centred before their angles are taken.


def activation_centres(activations: np.ndarray, centring: str = "raw") -> np.ndarray:
    """The value subtracted from each hidden unit's activations before angles are taken.

    ``raw``: nothing (the paper's Table 2); ``half``: 0.5, the middle of a sigmoid's range
    (Gedeon & Harris); ``mean``: each unit's mean over the patterns, so the angle is the
    arccosine of the two units' correlation and a constant offset (which the output bias
    absorbs) does not make two units look alike.
    """
    activations = np.asarray(activations, dtype=np.float64)
    if activations.ndim != 2:
        raise ValueError(f"activations must be (patterns, units), got shape {activations.shape}")
    if centring == "raw":
        return np.zeros(activations.shape[1])
    if centring == "half":
        return np.full(activations.shape[1], 0.5)
    if centring == "mean":
        return activations.mean(axis=0)
    raise ValueError(f"activation centring {centring!r} is not one of {', '.join(CENTRINGS)}")


def hidden_unit_angles(activations: np.ndarray, centring: str = "raw") -> np.ndarray:
    """Angles in degrees between the activation vectors of every pair of hidden units.

    ``activations`` is ``(patterns, units)``. A unit whose centred vector is all zero has no
    direction: its angles are 90 degrees.
    """
    vectors = np.asarray(activations, dtype=np.float64) - activation_centres(activations, centring)
    norms = np.linalg.norm(vectors, axis=0)
    unit_vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    cosine = np.clip(unit_vectors.T @ unit_vectors, -1.0, 1.0)
    return np.degrees(np.arccos(cosine))


def removal_pairs(
    activations: np.ndarray, threshold_degrees: float, centring: str = "raw"
) -> list[tuple[int, int]]:
    """``(removed, kept twin)`` for each unit pruned, in the order they are removed.

    Pairs closer than ``threshold_degrees`` are processed in increasing angle order (ties
    by unit index); the higher-index unit goes unless one of the pair is already removed.
    """
    angles = hidden_unit_angles(activations, centring)
    units = angles.shape[0]
    close = [
        (angles[i, j], i, j)
        for i in range(units)
        for j in range(i + 1, units)
        if angles[i, j] < threshold_degrees
    ]
    removed: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for _, i, j in sorted(close):
        if i in removed or j in removed:
            continue
        removed.add(j)
        pairs.append((j, i))
    return pairs


def distinctiveness_prune(
    activations: np.ndarray, threshold_degrees: float, centring: str = "raw"
) -> list[int]:
    """Indices (ascending) of the hidden units to remove: one of each pair under the threshold.

    ``activations`` is ``(patterns, units)``: each column is a unit's output over the
    training patterns. See ``removal_pairs`` for which unit of a pair goes.
    """
    return sorted(removed for removed, _ in removal_pairs(activations, threshold_degrees, centring))


# -- the shallow net ----------------------------------------------------------------------------


class ShallowNet(nn.Module):
    """inputs -> sigmoid hidden units -> class outputs."""

    def __init__(self, inputs: int, hidden_units: int, n_classes: int):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden_units)
        self.output = nn.Linear(hidden_units, n_classes)

    def hidden_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden_activations(x))

    @torch.no_grad()
    def without_units(
        self, pairs: list[tuple[int, int]], centres: np.ndarray | None = None
    ) -> ShallowNet:
        """A copy without the removed units, their outgoing weights moved to their kept twins.

        A removed unit ``j`` behaves like its twin ``i`` up to the centres the angle was
        taken around (``a_j - c_j ~ a_i - c_i``), so its weights ``w_j`` join the twin's and
        ``w_j (c_j - c_i)`` joins the output bias (zero for ``raw`` and ``half`` centring).
        """
        outgoing = self.output.weight.detach().clone()  # (classes, hidden)
        bias = self.output.bias.detach().clone()
        offsets = (
            torch.zeros(self.hidden.out_features) if centres is None else torch.as_tensor(centres)
        )
        offsets = offsets.to(outgoing)
        for removed, kept in pairs:  # in removal order, so a chain of twins merges onward
            bias += outgoing[:, removed] * (offsets[removed] - offsets[kept])
            outgoing[:, kept] += outgoing[:, removed]
        gone = {removed for removed, _ in pairs}
        keep = [unit for unit in range(self.hidden.out_features) if unit not in gone]
        pruned = ShallowNet(self.hidden.in_features, len(keep), self.output.out_features)
        pruned.to(self.hidden.weight.device)
        pruned.hidden.weight.copy_(self.hidden.weight[keep])
        pruned.hidden.bias.copy_(self.hidden.bias[keep])
        pruned.output.weight.copy_(outgoing[:, keep])
        pruned.output.bias.copy_(bias)
        return pruned


# -- the 1-D CNN fusion ---------------------------------------------------------------------------


class TextureBranch(nn.Module):
    """Five blocks of Conv1d(kernel 3, same padding) + ReLU + max-pool while length > 1."""

    def __init__(self, length: int, channels: int, layers: int = 5):
        super().__init__()
        blocks: list[nn.Module] = []
        inputs = 1
        for _ in range(layers):
            blocks += [nn.Conv1d(inputs, channels, kernel_size=3, padding=1), nn.ReLU()]
            if length > 1:
                blocks.append(nn.MaxPool1d(2, ceil_mode=True))
                length = math.ceil(length / 2)
            inputs = channels
        self.blocks = nn.Sequential(*blocks)
        self.output_size = channels * length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length)`` -> ``(batch, output_size)``."""
        return self.blocks(x.unsqueeze(1)).flatten(1)


class TextureCNN(nn.Module):
    """One branch per descriptor, concatenated, FC ``fusion_width`` + ReLU, FC to the classes."""

    def __init__(self, lengths: list[int], channels: int, fusion_width: int, n_classes: int):
        super().__init__()
        self.branches = nn.ModuleList(TextureBranch(length, channels) for length in lengths)
        self.fusion = nn.Sequential(
            nn.Linear(sum(branch.output_size for branch in self.branches), fusion_width),
            nn.ReLU(),
            nn.Linear(fusion_width, n_classes),
        )
        # He initialisation keeps the signal alive through seven ReLU layers; PyTorch's
        # default shrinks it about threefold per layer, and training then stalls at the prior.
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, *descriptors: torch.Tensor) -> torch.Tensor:
        features = [branch(x) for branch, x in zip(self.branches, descriptors, strict=True)]
        return self.fusion(torch.cat(features, dim=1))


def cnn_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the outputs and the one-hot targets."""
    targets = functional.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
    return functional.smooth_l1_loss(outputs, targets)


def shallow_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the shallow net's outputs."""
    return functional.cross_entropy(outputs, labels)


# -- preprocessing --------------------------------------------------------------------------------


class DescriptorScaler:
    """PCA to ``components`` (skipped when a column is already that narrow), then Min-Max.

    Both are fitted on the training split only.
    """

    def __init__(self, column: str, components: int):
        self.column = column
        self.components = components
        self.pca: PCA | None = None
        self.minmax = MinMaxScaler()

    def fit_transform(self, features: FeatureSet) -> np.ndarray:
        vectors = descriptor_matrix(features, self.column)
        if vectors.shape[1] > self.components:
            if len(vectors) < self.components:
                raise ValueError(
                    f"{self.column}: PCA to {self.components} components needs as many "
                    f"training clips, got {len(vectors)}"
                )
            self.pca = PCA(n_components=self.components, svd_solver="full")
            vectors = self.pca.fit_transform(vectors)
        return self.minmax.fit_transform(vectors).astype(np.float32)

    def transform(self, features: FeatureSet) -> np.ndarray:
        vectors = descriptor_matrix(features, self.column)
        if self.pca is not None:
            vectors = self.pca.transform(vectors)
        return self.minmax.transform(vectors).astype(np.float32)


def descriptor_matrix(features: FeatureSet, column: str) -> np.ndarray:
    """``(clips, dim)`` float64 descriptors; a wrong size or NaN is an error naming the clip."""
    vectors = features.columns[column]
    if not vectors:
        return np.zeros((0, 0))
    dim = np.size(vectors[0])
    for clip_id, vector in zip(features.clip_ids, vectors, strict=True):
        if np.ndim(vector) != 1 or np.size(vector) != dim:
            raise ValueError(
                f"clip {clip_id}: {column} has shape {np.shape(vector)}, expected ({dim},)"
            )
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"clip {clip_id}: {column} holds NaN or infinite values")
    return np.stack(vectors).astype(np.float64)


# -- training -----------------------------------------------------------------------------------


class WangTrainer:
    """Trains one of the paper's five rows on one training split, an epoch at a time."""

    def __init__(self, knobs: WangKnobs, variant: str, train: FeatureSet, seed: int):
        self.knobs = knobs
        self.variant = variant
        self.seed = seed
        self.epoch = 0  # fit_epoch calls
        self.passes = 0  # passes over the training rows (the shallow net's first call makes 2)
        self.shallow = variant.startswith("shallow")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.labels = torch.as_tensor(_checked_labels(train), dtype=torch.long)
        components = knobs.pca_components
        self.scalers = [
            DescriptorScaler(column, components) for column in VARIANTS[variant].columns
        ]
        self.inputs = [torch.as_tensor(scaler.fit_transform(train)) for scaler in self.scalers]
        n_classes = len(CLASSES)
        with seeded(seed):
            if self.shallow:
                self.model: nn.Module = ShallowNet(
                    self.inputs[0].shape[1], knobs.hidden_units, n_classes
                )
            else:
                self.model = TextureCNN(
                    [x.shape[1] for x in self.inputs],
                    knobs.cnn_channels,
                    knobs.fusion_width,
                    n_classes,
                )
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=knobs.lr)
        self.pruned_units: list[int] = []

    def fit_epoch(self) -> dict[str, float]:
        """One epoch in shuffled mini-batches.

        The shallow net's first call trains the full net one epoch, prunes it, and trains the
        rebuilt net its first epoch (see the module docstring); ``train_loss`` is the last pass's.
        """
        self.epoch += 1
        if self.shallow and self.epoch == 1:
            self._train_pass()
            self._prune()
        metrics = {"train_loss": self._train_pass()}
        if self.shallow:
            metrics["hidden_units"] = float(self.model.hidden.out_features)
        return metrics

    def _train_pass(self) -> float:
        """One pass over the training rows; the mean training loss."""
        self.passes += 1
        batch_size = self.knobs.batch_size
        loss_fn = shallow_loss if self.shallow else cnn_loss
        total = 0.0
        with seeded(self.seed, self.passes) as rng:
            order = rng.permutation(len(self.labels))
            self.model.train()
            for start in range(0, len(order), batch_size):
                index = torch.as_tensor(order[start : start + batch_size])
                outputs = self.model(*(x[index].to(self.device) for x in self.inputs))
                loss = loss_fn(outputs, self.labels[index].to(self.device))
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total += loss.item() * len(index)
        return total / len(order)

    @torch.no_grad()
    def _prune(self) -> None:
        """Algorithm 1, steps 2-3: remove indistinct hidden units and rebuild the net."""
        self.model.eval()
        activations = self.model.hidden_activations(self.inputs[0].to(self.device)).cpu().numpy()
        centring = self.knobs.activation_centring
        pairs = removal_pairs(activations, self.knobs.prune_angle, centring)
        self.pruned_units = sorted(removed for removed, _ in pairs)
        self.model = self.model.without_units(pairs, activation_centres(activations, centring))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.knobs.lr)

    @torch.no_grad()
    def predict_proba(self, features: FeatureSet) -> np.ndarray:
        """Softmax of the outputs (the CNN's regression outputs, the shallow net's logits)."""
        self.model.eval()
        if len(features) == 0:
            return np.zeros((0, len(CLASSES)))
        inputs = [
            torch.as_tensor(scaler.transform(features)).to(self.device) for scaler in self.scalers
        ]
        return torch.softmax(self.model(*inputs), dim=1).cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def export(self, features: FeatureSet) -> ExportedModel:
        """The (pruned) net with a softmax; inputs: each descriptor's training-fold PCA."""
        inputs = {
            scaler.column.split(".")[-1]: scaler.transform(features).astype(np.float32)
            for scaler in self.scalers
        }
        model = SoftmaxOf(self.model.cpu().eval())
        self.model.to(self.device)
        return ExportedModel(
            "pytorch",
            model,
            inputs,
            f"Wang {self.variant}: per descriptor the principal components fitted on the "
            "training fold, then Min-Max scaled as in training",
        )


class SoftmaxOf(nn.Module):
    """A network's outputs as class probabilities."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(*inputs), dim=1)


def make_trainer(
    knobs: WangKnobs | Mapping[str, Any], variant: str, train: FeatureSet, seed: int
) -> WangTrainer:
    """A trainer for one of Wang's rows on ``train``.

    ``knobs``: the knobs, or a mapping of the knobs that differ from the defaults.
    """
    knobs = WangKnobs.of(knobs)
    for column in SPEC.variant(variant).columns:
        if column not in train.columns:
            raise ValueError(f"wang/{variant}: the training features have no column {column!r}")
    return WangTrainer(knobs, variant, train, seed)


# -- input checks ---------------------------------------------------------------------------------


def _checked_labels(train: FeatureSet) -> np.ndarray:
    labels = np.asarray(train.labels)
    if len(labels) == 0:
        raise ValueError("wang: the training split has no clips")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if len(bad):
        raise ValueError(
            f"wang: clip {train.clip_ids[bad[0]]} has label {labels[bad[0]]}, "
            f"not an index into {CLASSES}"
        )
    return labels


SPEC = TaskSpec(
    name=NAME,
    classes=CLASSES,
    variants=VARIANTS,
    knobs=WangKnobs,
    paper_results=PAPER_RESULTS,
    make_trainer=make_trainer,
)

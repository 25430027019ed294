"""VGG16 conv block-5 embedder for face crops (Song et al.: VGG16-GRU video branch).

The paper feeds 48x48x3 face crops through VGG16's five convolutional blocks with frozen
ImageNet weights and takes the output of block 5's max-pool: 512x1x1 at 48x48, flattened
to a 512-vector per crop. The GRU that consumes the sequence lives in ``tasks/``.

Weights policy: torchvision's ImageNet weights when they can be loaded (from the torch hub
cache, or downloaded into it), else a weights file named in the config; random
initialisation only when the config asks for it, and then recorded in ``weights_source``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16
from torchvision.transforms.functional import normalize

from orchestrate.errors import InputError
from orchestrate.extractors.base import forward_batch_size

# torchvision's ImageNet preprocessing statistics (RGB, on [0, 1] inputs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDING_DIM = 512
# Five 2x2 max-pools: a side below 32 pixels would leave block 5 with an empty map.
MIN_CROP_SIDE = 32
RANDOM_INIT_SEED = 0
# Crops per forward on a CPU: one thread spends about the same per crop from 32 to 256
# crops at 48x48 (5.3-6.3 ms; BENCHMARKS.md); 64 keeps a forward's activations near the
# caches' size without splitting small batches.
CPU_FORWARD_CROPS = 64


class WeightsError(InputError):
    """Network weights cannot be loaded; the message is the one-line reason."""


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG16 weights, from the hub cache or downloaded into it."""
    weights = VGG16_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        # load_state_dict_from_url reads the cached file when present, else downloads it.
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # no network, proxy refusal, truncated cache file, ...
        where = f"{cache} unreadable" if cache.exists() else f"{cache} absent, download failed"
        raise WeightsError(
            f"VGG16 ImageNet weights could not be loaded ({where}: {_one_line(err)}): set the "
            "weights to the path of a torchvision VGG16 state_dict .pth file, or to 'random' "
            "for seeded random initialisation"
        ) from err


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict saved with ``torch.save``, read without unpickling arbitrary objects."""
    if not path.is_file():
        raise WeightsError(f"VGG16 weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = _one_line(err)
        raise WeightsError(
            f"VGG16 weights file {path} is not a torch state_dict ({reason})"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"VGG16 weights file {path} does not hold a state_dict of tensors")
    return state


def _load_features(features: nn.Sequential, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a VGG16 state_dict's ``features`` part into the meta-device ``features`` exactly.

    A whole-model state_dict has "features.N.weight" keys (its classifier is ignored), a
    features-only one "N.weight". Every key and shape must match.
    """
    prefix = "features."
    if any(key.startswith(prefix) for key in state):
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {key: value.float() for key, value in state.items()}  # e.g. a half-precision file
    expected = features.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            extra = ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else "")
            problems.append(f"unexpected {extra}")
        for key in wrong_shape[:4]:
            problems.append(
                f"{key} has shape {tuple(state[key].shape)}, expected {tuple(expected[key].shape)}"
            )
        raise WeightsError(f"{source} is not a torchvision VGG16 state_dict: {'; '.join(problems)}")
    features.load_state_dict(state, strict=True, assign=True)


def random_features_state() -> dict[str, torch.Tensor]:
    """The ``features`` weights of torchvision's VGG16 initialised under ``RANDOM_INIT_SEED``.

    Building them costs about 2 s of CPU (the whole model is initialised, its 123M-parameter
    classifier first, since the features' draws come after it in the generator's stream):
    a network actor paid that at every ingest. They are built once per torch and
    torchvision version and kept in the torch hub cache beside torchvision's own
    checkpoints (58 MB); a cached file that can't be read is built again.
    """
    import torchvision

    name = (
        f"orchestrate-vgg16-features-random-seed{RANDOM_INIT_SEED}"
        f"-torch{torch.__version__}-torchvision{torchvision.__version__}.pt"
    ).replace("+", "_")
    cache = Path(torch.hub.get_dir()) / "checkpoints" / name
    try:
        return torch.load(cache, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # absent, or a partial or foreign file: build it again
        pass
    # fork_rng: seed the init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        state = vgg16(weights=None).features.state_dict()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, cache)  # atomic: two actors building at once never tear it
    except OSError:
        pass  # a read-only cache: the next build pays again, nothing else changes
    return state


class Vgg16Block5Embedder:
    """Frozen VGG16 conv blocks 1-5 (ending with block 5's max-pool) as a face-crop embedder.

    ``weights``: ``"imagenet"`` (torchvision's IMAGENET1K_V1; a clear ``WeightsError`` when
    they cannot be loaded), a path to a torchvision VGG16 state_dict ``.pth`` (whole model or
    ``features`` only), or ``"random"`` (torchvision's initialisation under seed 0, so it is
    deterministic). ``weights_source`` records what was resolved: ``"imagenet"``,
    ``"file:<absolute path>"`` or ``"random"``. ``device``: CUDA when available unless given.
    """

    def __init__(self, weights: str = "imagenet", device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Crops per forward: cache-sized on a CPU, 256 on a GPU
        # (~0.5 GB of activations at 48x48).
        self.batch_size = forward_batch_size(self.device.type, CPU_FORWARD_CROPS)
        if weights == "random":
            with torch.device("meta"):
                features = vgg16(weights=None).features
            _load_features(features, random_features_state(), "VGG16's random initialisation")
            self.weights_source = "random"
        else:
            if weights == "imagenet":
                state, source, label = _imagenet_state_dict(), "imagenet", "torchvision's file"
            else:
                path = Path(weights).expanduser().resolve()
                state, source = _file_state_dict(path), f"file:{path}"
                label = f"VGG16 weights file {path}"
            # Built on the meta device: the random init of 138M parameters would be wasted.
            with torch.device("meta"):
                features = vgg16(weights=None).features
            _load_features(features, state, label)
            self.weights_source = source
        self.features = features.to(self.device).eval().requires_grad_(False)

    def __call__(self, crops_bgr: np.ndarray) -> np.ndarray:
        """Embed face crops: (N, H, W, 3) uint8 BGR -> (N, 512) float32.

        At 48x48 block 5's max-pool leaves a 512x1x1 map, which is flattened; at larger
        sizes (H, W >= 32) the block-5 map is global-max-pooled to 512, which equals the
        flatten at 1x1.
        """
        if not isinstance(crops_bgr, np.ndarray) or crops_bgr.ndim != 4 or crops_bgr.shape[-1] != 3:
            shape = getattr(crops_bgr, "shape", type(crops_bgr).__name__)
            raise ValueError(f"VGG16 crops must be an (N, H, W, 3) BGR array, got {shape}")
        if crops_bgr.dtype != np.uint8:
            raise ValueError(f"VGG16 crops must be uint8, got {crops_bgr.dtype}")
        height, width = crops_bgr.shape[1:3]
        if min(height, width) < MIN_CROP_SIDE:
            raise ValueError(
                f"VGG16 crops must be at least {MIN_CROP_SIDE} pixels a side, got {height}x{width}"
            )
        embeddings = np.empty((len(crops_bgr), EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops_bgr), self.batch_size):
                batch = crops_bgr[start : start + self.batch_size, :, :, ::-1]  # BGR -> RGB
                pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
                pixels = pixels.permute(0, 3, 1, 2).float().div_(255.0)
                pixels = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
                block5 = self.features(pixels)
                pooled = torch.amax(block5, dim=(2, 3))
                embeddings[start : start + len(batch)] = pooled.cpu().numpy()
        return embeddings

"""The ingest networks: VGG16 block-5 embedder and the Keras mini-Xception FER CNN port.

The FER port is checked against an independent numpy implementation of the Keras layer
semantics (HWIO kernels, TensorFlow 'same' padding, BatchNormalization), on the real
mini-Xception file and on a small synthetic file of the same layout with another input size
and number of classes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.error import URLError

import cv2
import h5py
import numpy as np
import pytest
import torch
from torchvision.models import VGG16_Weights

from orchestrate.extractors.base import GPU_FORWARD_BATCH, forward_batch_size
from orchestrate.extractors.fer_cnn import (
    CPU_FORWARD_FACES,
    FER2013_CLASSES,
    FerCnn,
    mini_xception_config,
)
from orchestrate.extractors.vgg16 import CPU_FORWARD_CROPS, Vgg16Block5Embedder, WeightsError

FER_MODEL = Path("models") / "fer2013_mini_XCEPTION.102-0.66.hdf5"


def _crops(count: int, side: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth random BGR crops (blurred noise, so conv features are not all saturated)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(crop, (5, 5), 0) for crop in noise])


# ---------------------------------------------------------------- VGG16 block-5 embedder


@pytest.fixture(scope="module")
def random_embedder() -> Vgg16Block5Embedder:
    return Vgg16Block5Embedder(weights="random", device="cpu")


@pytest.fixture(scope="module")
def saved_vgg_state(random_embedder: Vgg16Block5Embedder, tmp_path_factory) -> Path:
    """The random embedder's weights saved as a torchvision-style whole-model state_dict."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16_random.pth"
    state = {f"features.{k}": v for k, v in random_embedder.features.state_dict().items()}
    torch.save(state, path)
    return path


def test_random_weights_give_finite_512_features(random_embedder: Vgg16Block5Embedder) -> None:
    features = random_embedder(_crops(5))
    assert random_embedder.weights_source == "random"
    assert features.shape == (5, 512) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert np.abs(features).max() > 0  # ReLU + max-pool: not everything may be zero
    assert not np.allclose(features[0], features[1])  # different crops, different features


def test_random_init_is_deterministic(random_embedder: Vgg16Block5Embedder) -> None:
    crops = _crops(3)
    again = Vgg16Block5Embedder(weights="random", device="cpu")
    np.testing.assert_array_equal(again(crops), random_embedder(crops))


def test_embedding_is_batch_invariant(random_embedder: Vgg16Block5Embedder) -> None:
    crops = _crops(6, seed=1)
    together = random_embedder(crops)
    alone = random_embedder(crops[2:3])
    np.testing.assert_allclose(alone[0], together[2], rtol=1e-4, atol=1e-5)
    batch_size = random_embedder.batch_size
    random_embedder.batch_size = 4  # the 6 crops now span two internal forwards
    try:
        split = random_embedder(crops)
    finally:
        random_embedder.batch_size = batch_size
    np.testing.assert_allclose(split, together, rtol=1e-4, atol=1e-5)


def test_embedding_is_block5_pool_of_imagenet_normalised_rgb(
    random_embedder: Vgg16Block5Embedder,
) -> None:
    crops = _crops(2, seed=2)
    rgb = crops[..., ::-1].astype(np.float32) / 255.0
    normalised = (rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(normalised.transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        block5 = random_embedder.features(pixels)
    assert block5.shape == (2, 512, 1, 1)  # 48x48 -> 512x1x1 after block 5's max-pool
    np.testing.assert_allclose(
        random_embedder(crops), block5.flatten(1).numpy(), rtol=1e-4, atol=1e-5
    )
    # Channel order matters: the same crop given as RGB is a different image.
    assert not np.allclose(random_embedder(crops[..., ::-1].copy()), random_embedder(crops))


def test_larger_crops_are_global_max_pooled(random_embedder: Vgg16Block5Embedder) -> None:
    features = random_embedder(_crops(2, side=80))
    assert features.shape == (2, 512) and np.isfinite(features).all()
    assert random_embedder(np.zeros((0, 48, 48, 3), np.uint8)).shape == (0, 512)


@pytest.mark.parametrize(
    ("crops", "message"),
    [
        (np.zeros((2, 16, 16, 3), np.uint8), "at least 32"),
        (np.zeros((2, 48, 48), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((2, 48, 48, 3), np.float32), "uint8"),
    ],
)
def test_bad_crops_are_rejected(
    random_embedder: Vgg16Block5Embedder, crops: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        random_embedder(crops)


def test_weights_file_round_trip(
    random_embedder: Vgg16Block5Embedder, saved_vgg_state: Path
) -> None:
    loaded = Vgg16Block5Embedder(weights=str(saved_vgg_state), device="cpu")
    assert loaded.weights_source == f"file:{saved_vgg_state.resolve()}"
    crops = _crops(3, seed=3)
    np.testing.assert_array_equal(loaded(crops), random_embedder(crops))


def test_imagenet_without_network_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(WeightsError) as error:
        Vgg16Block5Embedder(weights="imagenet", device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "state_dict .pth" in message and "'random'" in message and "absent" in message


def test_imagenet_weights_load_from_the_hub_cache(
    random_embedder: Vgg16Block5Embedder, saved_vgg_state: Path, tmp_path: Path, monkeypatch
) -> None:
    # Whatever file sits at torchvision's cache path is what "imagenet" loads, offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    cached.symlink_to(saved_vgg_state)
    loaded = Vgg16Block5Embedder(weights="imagenet", device="cpu")
    assert loaded.weights_source == "imagenet"
    crops = _crops(2, seed=4)
    np.testing.assert_array_equal(loaded(crops), random_embedder(crops))


def test_imagenet_weights_real_cache_if_present() -> None:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name
    if not cached.is_file():
        pytest.skip(f"torchvision's VGG16 ImageNet weights are not cached at {cached}")
    embedder = Vgg16Block5Embedder(weights="imagenet", device="cpu")
    features = embedder(_crops(2))
    assert embedder.weights_source == "imagenet"
    assert features.shape == (2, 512) and np.isfinite(features).all()


def test_bad_weights_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        Vgg16Block5Embedder(weights=str(tmp_path / "missing.pth"), device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a torch state_dict"):
        Vgg16Block5Embedder(weights=str(garbage), device="cpu")
    other_network = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other_network)
    with pytest.raises(
        WeightsError, match=r"not a torchvision VGG16 state_dict: missing 0\.bias, 0\.weight"
    ):
        Vgg16Block5Embedder(weights=str(other_network), device="cpu")
    wrong_shape = tmp_path / "wrong_shape.pth"
    state = {k: torch.zeros(v.shape) for k, v in _vgg_meta_state().items()}
    state["28.weight"] = torch.zeros(512, 512, 1, 1)
    torch.save(state, wrong_shape)
    with pytest.raises(WeightsError, match=r"28\.weight has shape \(512, 512, 1, 1\)"):
        Vgg16Block5Embedder(weights=str(wrong_shape), device="cpu")


def _vgg_meta_state() -> dict[str, torch.Tensor]:
    from torchvision.models import vgg16

    with torch.device("meta"):
        return vgg16(weights=None).features.state_dict()


# ---------------------------------------------------------------- numpy Keras reference


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: int, padding: str, fill: float):
    """(i, j, strided window view) for each kernel offset, Keras/TensorFlow style (NHWC)."""
    if padding == "same":
        pads = [(0, 0), _same_pads(x.shape[1], kernel[0], stride)]
        pads += [_same_pads(x.shape[2], kernel[1], stride), (0, 0)]
        x = np.pad(x, pads, constant_values=fill)
    out_h = (x.shape[1] - kernel[0]) // stride + 1
    out_w = (x.shape[2] - kernel[1]) // stride + 1
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield i, j, x[:, i : i + stride * (out_h - 1) + 1 : stride,
                          j : j + stride * (out_w - 1) + 1 : stride, :]  # fmt: skip


def _keras_reference(path: Path, faces: np.ndarray) -> np.ndarray:
    """Run a Keras HDF5 model of the mini-Xception layer set in numpy (float64)."""
    with h5py.File(path, "r") as handle:
        config = json.loads(handle.attrs["model_config"])["config"]
        weights: dict[str, dict[str, np.ndarray]] = {}
        for name, group in handle["model_weights"].items():
            weights[name] = {
                n.decode().rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[n.decode()], "f8")
                for n in group.attrs["weight_names"]
            }
    outputs: dict[str, np.ndarray] = {}
    for layer in config["layers"]:
        kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
        inputs = (
            [outputs[node[0]] for node in layer["inbound_nodes"][0]]
            if layer["inbound_nodes"]
            else []
        )
        w = weights.get(name, {})
        if kind == "InputLayer":
            x = (faces.astype("f8") / 255.0 - 0.5) * 2.0
            out = x[..., None]
        elif kind in ("Conv2D", "SeparableConv2D"):
            x, stride = inputs[0], cfg["strides"][0]
            kernel = tuple(cfg["kernel_size"])
            out = 0.0
            for i, j, window in _windows(x, kernel, stride, cfg["padding"], 0.0):
                if kind == "Conv2D":
                    out = out + window @ w["kernel"][i, j]
                else:  # depthwise: channel c, multiplier m -> output channel c * M + m
                    depth = window[..., :, None] * w["depthwise_kernel"][i, j]
                    out = out + depth.reshape(*depth.shape[:3], -1)
            if kind == "SeparableConv2D":
                out = out @ w["pointwise_kernel"][0, 0]
            if "bias" in w:
                out = out + w["bias"]
            if cfg["activation"] == "relu":
                out = np.maximum(out, 0)
        elif kind == "BatchNormalization":
            x = inputs[0]
            out = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"])
            out = out * w.get("gamma", 1.0) + w.get("beta", 0.0)
        elif kind == "Activation":
            x = inputs[0]
            if cfg["activation"] == "relu":
                out = np.maximum(x, 0)
            elif cfg["activation"] == "softmax":
                e = np.exp(x - x.max(axis=-1, keepdims=True))
                out = e / e.sum(axis=-1, keepdims=True)
            else:
                out = x
        elif kind == "MaxPooling2D":
            out = -np.inf
            windows = _windows(inputs[0], tuple(cfg["pool_size"]), cfg["strides"][0],
                               cfg["padding"], -np.inf)  # fmt: skip
            for _, _, window in windows:
                out = np.maximum(out, window)
        elif kind == "Add":
            out = sum(inputs)
        elif kind == "GlobalAveragePooling2D":
            out = inputs[0].mean(axis=(1, 2))
        else:
            raise AssertionError(f"reference does not know {kind}")
        outputs[name] = out
    return outputs[config["output_layers"][0][0]]


# ---------------------------------------------------------------- synthetic Keras files


def _keras_layer(kind: str, name: str, inputs: list[str], **config: Any) -> dict[str, Any]:
    return {
        "class_name": kind,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": [[[source, 0, 0, {}] for source in inputs]] if inputs else [],
    }


def _small_model_layers(side: int, classes: int) -> list[dict[str, Any]]:
    """A mini-Xception-layout graph: valid conv, separable convs, residual 1x1/2, max-pools."""
    conv = {"padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1]}
    bn = {"axis": -1, "epsilon": 0.001, "center": True, "scale": True}
    return [
        _keras_layer("InputLayer", "input_1", [], batch_input_shape=[None, side, side, 1]),
        _keras_layer("Conv2D", "conv2d_1", ["input_1"], filters=4, kernel_size=[3, 3],
                     strides=[1, 1], use_bias=False, activation="linear", **conv),
        _keras_layer("BatchNormalization", "bn_1", ["conv2d_1"], **bn),
        _keras_layer("Activation", "act_1", ["bn_1"], activation="relu"),
        _keras_layer("SeparableConv2D", "sep_1", ["act_1"], filters=8, kernel_size=[3, 3],
                     strides=[1, 1], use_bias=False, activation="linear", depth_multiplier=2,
                     **{**conv, "padding": "same"}),
        _keras_layer("BatchNormalization", "bn_2", ["sep_1"], **bn),
        _keras_layer("MaxPooling2D", "pool_1", ["bn_2"], pool_size=[3, 3], strides=[2, 2],
                     padding="same", data_format="channels_last"),
        _keras_layer("Conv2D", "res_1", ["act_1"], filters=8, kernel_size=[1, 1],
                     strides=[2, 2], use_bias=False, activation="linear",
                     **{**conv, "padding": "same"}),
        _keras_layer("BatchNormalization", "bn_3", ["res_1"], **{**bn, "center": False}),
        _keras_layer("Add", "add_1", ["pool_1", "bn_3"]),
        _keras_layer("MaxPooling2D", "pool_2", ["add_1"], pool_size=[3, 3], strides=[2, 2],
                     padding="same", data_format="channels_last"),
        _keras_layer("Conv2D", "conv2d_out", ["pool_2"], filters=classes, kernel_size=[3, 3],
                     strides=[1, 1], use_bias=True, activation="linear",
                     **{**conv, "padding": "same"}),
        _keras_layer("GlobalAveragePooling2D", "gap", ["conv2d_out"],
                     data_format="channels_last"),
        _keras_layer("Activation", "predictions", ["gap"], activation="softmax"),
    ]  # fmt: skip


def _small_model_weights(classes: int, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    def bn(channels: int, center: bool = True) -> dict[str, np.ndarray]:
        weights = {"gamma": rng.uniform(0.5, 1.5, channels)}
        if center:
            weights["beta"] = rng.normal(0, 0.2, channels)
        weights["moving_mean"] = rng.normal(0, 0.2, channels)
        weights["moving_variance"] = rng.uniform(0.5, 1.5, channels)
        return weights

    return {
        "conv2d_1": {"kernel": rng.normal(0, 0.5, (3, 3, 1, 4))},
        "bn_1": bn(4),
        "sep_1": {
            "depthwise_kernel": rng.normal(0, 0.5, (3, 3, 4, 2)),
            "pointwise_kernel": rng.normal(0, 0.5, (1, 1, 8, 8)),
        },
        "bn_2": bn(8),
        "res_1": {"kernel": rng.normal(0, 0.5, (1, 1, 4, 8))},
        "bn_3": bn(8, center=False),
        "conv2d_out": {
            "kernel": rng.normal(0, 0.3, (3, 3, 8, classes)),
            "bias": rng.normal(0, 0.1, classes),
        },
    }


def _write_keras_h5(
    path: Path, layers: list[dict[str, Any]], weights: dict[str, dict[str, Any]]
) -> Path:
    """A Keras 2.0.5 ``model.save`` HDF5 file: model_config JSON + model_weights groups."""
    config = {
        "class_name": "Model",
        "config": {
            "name": "model_1",
            "layers": layers,
            "input_layers": [[layers[0]["name"], 0, 0]],
            "output_layers": [[layers[-1]["name"], 0, 0]],
        },
    }
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"2.0.5"
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["model_config"] = json.dumps(config).encode()
        group = handle.create_group("model_weights")
        group.attrs["layer_names"] = [layer["name"].encode() for layer in layers]
        for layer in layers:
            name = layer["name"]
            layer_group = group.create_group(name)
            names = [f"{name}_1/{key}:0" for key in weights.get(name, {})]
            # As Keras writes them: fixed-length bytes, or an empty float array.
            encoded = np.array([n.encode() for n in names]) if names else np.array([])
            layer_group.attrs["weight_names"] = encoded
            for full_name, array in zip(names, weights.get(name, {}).values(), strict=True):
                layer_group.create_dataset(full_name, data=np.asarray(array, np.float32))
    return path


# ---------------------------------------------------------------- FER CNN


@pytest.fixture(scope="module")
def fer(shared_data: Path) -> FerCnn:
    return FerCnn.from_keras_h5(shared_data / FER_MODEL, device="cpu")


@pytest.fixture(scope="module")
def actor_faces(shared_data: Path) -> np.ndarray:
    """The largest Haar-cascade face of each of the 24 RAVDESS stills, gray, 64x64."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = []
    for still in sorted((shared_data / "ravdess" / "faces").glob("Actor_*.png")):
        gray = cv2.cvtColor(cv2.imread(str(still)), cv2.COLOR_BGR2GRAY)
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
        assert len(found), f"no face found in {still.name}"
        x, y, w, h = max(found, key=lambda box: box[2] * box[3])
        faces.append(cv2.resize(gray[y : y + h, x : x + w], (64, 64)))
    assert len(faces) == 24
    return np.stack(faces)


def test_fer_loads_the_mini_xception_file(fer: FerCnn) -> None:
    assert fer.input_size == 64
    assert fer.classes == FER2013_CLASSES
    assert len(fer.source_sha256) == 64


def test_fer_matches_numpy_keras_reference(
    fer: FerCnn, actor_faces: np.ndarray, shared_data: Path
) -> None:
    rng = np.random.default_rng(0)
    faces = np.concatenate([actor_faces[:3], rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)])
    expected = _keras_reference(shared_data / FER_MODEL, faces)
    np.testing.assert_allclose(fer.predict_proba(faces), expected, atol=2e-5)


def test_fer_probabilities_on_actor_faces(fer: FerCnn, actor_faces: np.ndarray) -> None:
    probabilities = fer.predict_proba(actor_faces)
    assert probabilities.shape == (24, 7) and probabilities.dtype == np.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Faces differ: no two rows are the same.
    distances = np.abs(probabilities[:, None] - probabilities[None]).sum(axis=2)
    assert distances[~np.eye(24, dtype=bool)].min() > 1e-4
    # Confident rather than uniform noise (uniform would be 1/7 everywhere).
    assert (probabilities.max(axis=1) > 0.35).sum() >= 20
    # Calm/neutral stills: mostly neutral, sad or happy (the real file gives 23 neutral, 1 sad).
    predicted = Counter(fer.classes[i] for i in probabilities.argmax(axis=1))
    assert predicted["neutral"] + predicted["sad"] + predicted["happy"] >= 18, predicted


def test_fer_is_deterministic_batch_invariant_and_resizes(
    fer: FerCnn, actor_faces: np.ndarray
) -> None:
    first = fer.predict_proba(actor_faces[:6])
    np.testing.assert_array_equal(fer.predict_proba(actor_faces[:6]), first)
    np.testing.assert_allclose(fer.predict_proba(actor_faces[4:5])[0], first[4], atol=1e-6)
    larger = np.stack([cv2.resize(face, (96, 96)) for face in actor_faces[:2]])
    resized = np.stack([cv2.resize(face, (64, 64)) for face in larger])
    np.testing.assert_array_equal(fer.predict_proba(larger), fer.predict_proba(resized))
    assert fer.predict_proba(np.zeros((0, 64, 64), np.uint8)).shape == (0, 7)
    with pytest.raises(ValueError, match="grayscale"):
        fer.predict_proba(np.zeros((2, 64, 64, 3), np.uint8))


def test_fer_loads_other_input_size_and_classes(tmp_path: Path) -> None:
    path = _write_keras_h5(
        tmp_path / "small.h5",
        _small_model_layers(side=32, classes=3),
        _small_model_weights(3, np.random.default_rng(1)),
    )
    model = FerCnn.from_keras_h5(path, device="cpu")
    assert model.input_size == 32
    assert model.classes == ("class_0", "class_1", "class_2")
    faces = np.random.default_rng(2).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    probabilities = model.predict_proba(faces)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities, _keras_reference(path, faces), atol=2e-5)
    named = FerCnn.from_keras_h5(path, device="cpu", classes=("a", "b", "c"))
    assert named.classes == ("a", "b", "c")


def _malformed(tmp_path: Path, change: str) -> Path:
    layers = _small_model_layers(side=32, classes=3)
    weights = _small_model_weights(3, np.random.default_rng(1))
    if change == "dense":
        layers.insert(-1, _keras_layer("Dense", "dense_1", ["gap"], units=3))
        layers[-1]["inbound_nodes"] = [[["dense_1", 0, 0, {}]]]
    elif change == "kernel_shape":
        weights["sep_1"]["pointwise_kernel"] = np.zeros((1, 1, 8, 5))
    elif change == "missing_weight":
        del weights["bn_1"]["moving_variance"]
    elif change == "rgb_input":
        layers[0]["config"]["batch_input_shape"] = [None, 32, 32, 3]
    elif change == "no_softmax":
        layers[-1]["config"]["activation"] = "linear"
    return _write_keras_h5(tmp_path / f"{change}.h5", layers, weights)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("dense", r"layer 'dense_1' is a Dense, not part of the mini-Xception layout"),
        ("kernel_shape", r"layer 'sep_1' weight 'pointwise_kernel' has shape \(1, 1, 8, 5\)"),
        ("missing_weight", r"layer 'bn_1' has weights \['beta', 'gamma', 'moving_mean'\]"),
        ("rgb_input", r"not a square grayscale image"),
        ("no_softmax", r"output 'predictions' is not a softmax"),
    ],
)
def test_fer_malformed_layouts_are_clear_errors(tmp_path: Path, change: str, message: str) -> None:
    path = _malformed(tmp_path, change)
    with pytest.raises(WeightsError, match=message) as error:
        FerCnn.from_keras_h5(path, device="cpu")
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_fer_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        FerCnn.from_keras_h5(tmp_path / "missing.hdf5")
    text = tmp_path / "text.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(WeightsError, match="not an HDF5 file"):
        FerCnn.from_keras_h5(text)
    weights_only = tmp_path / "weights_only.h5"
    with h5py.File(weights_only, "w") as handle:
        handle.create_group("conv2d_1")
    with pytest.raises(WeightsError, match="no model_config attribute"):
        FerCnn.from_keras_h5(weights_only)
    broken_json = tmp_path / "broken_json.h5"
    with h5py.File(broken_json, "w") as handle:
        handle.attrs["model_config"] = b"{not json"
        handle.create_group("model_weights")
    with pytest.raises(WeightsError, match="malformed model_config"):
        FerCnn.from_keras_h5(broken_json)


# ---------------------------------------------------------------- random mini-Xception


def _gray_faces(count: int, seed: int = 0) -> np.ndarray:
    """Smooth random grayscale 64x64 'faces' (blurred noise)."""
    noise = np.random.default_rng(seed).integers(0, 256, (count, 64, 64), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(face, (7, 7), 0) for face in noise])


@pytest.fixture(scope="module")
def random_fer() -> FerCnn:
    return FerCnn.random(device="cpu")


def test_random_fer_is_seeded_and_leaves_global_rng_alone(random_fer: FerCnn) -> None:
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    again = FerCnn.random(seed=0, device="cpu")
    other = FerCnn.random(seed=1, device="cpu")
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert random_fer.source == again.source == other.source == "random"
    assert random_fer.classes == FER2013_CLASSES and random_fer.input_size == 64
    assert len(random_fer.source_sha256) == 64
    assert again.source_sha256 == random_fer.source_sha256 != other.source_sha256
    same = again.network.state_dict()
    for name, tensor in random_fer.network.state_dict().items():
        assert torch.equal(tensor, same[name]), name
    faces = _gray_faces(4)
    np.testing.assert_array_equal(again.predict_proba(faces), random_fer.predict_proba(faces))
    assert np.abs(other.predict_proba(faces) - random_fer.predict_proba(faces)).max() > 1e-4


def test_random_fer_gives_probabilities_that_vary_with_the_face(random_fer: FerCnn) -> None:
    # BatchNormalization at its initial moving statistics: inference only rescales.
    norms = [m for m in random_fer.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 14
    for norm in norms:
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    probabilities = random_fer.predict_proba(_gray_faces(8, seed=1))
    assert probabilities.shape == (8, 7) and probabilities.dtype == np.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    distances = np.abs(probabilities[:, None] - probabilities[None]).sum(axis=2)
    assert distances[~np.eye(8, dtype=bool)].min() > 1e-4  # every face its own posteriors


def test_random_fer_kernels_follow_keras_glorot_uniform(random_fer: FerCnn) -> None:
    params = dict(random_fer.network.named_parameters())
    # The first conv (3x3, 1 -> 8): limit sqrt(6 / (fan_in 9 + fan_out 72)).
    first = params["layer_modules.0.0.weight"]
    limit = np.sqrt(6 / (9 + 72))
    assert first.abs().max() <= limit
    # The largest kernel (separable_conv2d_8's pointwise, 128 -> 128): uniform, std
    # limit/sqrt(3).
    pointwise = [p for p in params.values() if tuple(p.shape) == (128, 128, 1, 1)]
    assert len(pointwise) == 1
    limit = np.sqrt(6 / (128 + 128))
    assert pointwise[0].abs().max() <= limit
    assert float(pointwise[0].std()) == pytest.approx(limit / np.sqrt(3), rel=0.03)
    # Only the last conv has a bias, and Keras starts it at zero.
    biases = [name for name, p in params.items() if name.endswith(".bias") and p.dim() == 1]
    conv_bias = [name for name in biases if params[name].shape == (7,)]
    assert len(conv_bias) == 1 and not params[conv_bias[0]].any()


def test_random_fer_other_sizes_and_bad_ones() -> None:
    small = FerCnn.random(seed=2, num_classes=3, input_size=32, device="cpu")
    assert small.classes == ("class_0", "class_1", "class_2") and small.input_size == 32
    probabilities = small.predict_proba(_gray_faces(2))  # 64x64 faces, resized to 32x32
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(WeightsError, match=r"random mini-Xception .*empty map") as error:
        FerCnn.random(input_size=4, device="cpu")
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="num_classes must be >= 1"):
        FerCnn.random(num_classes=0, device="cpu")


def test_mini_xception_config_is_the_real_files(shared_data: Path) -> None:
    with h5py.File(shared_data / FER_MODEL, "r") as handle:
        real = json.loads(handle.attrs["model_config"])
    ours = json.loads(json.dumps(mini_xception_config()))  # tuples/None as JSON has them
    assert ours["class_name"] == real["class_name"]
    for key in ("name", "input_layers", "output_layers"):
        assert ours["config"][key] == real["config"][key], key
    real_layers, our_layers = real["config"]["layers"], ours["config"]["layers"]
    assert [layer["name"] for layer in our_layers] == [layer["name"] for layer in real_layers]
    for real_layer, our_layer in zip(real_layers, our_layers, strict=True):
        name = real_layer["name"]
        assert our_layer["class_name"] == real_layer["class_name"], name
        assert our_layer["inbound_nodes"] == real_layer["inbound_nodes"], name
        for key, value in our_layer["config"].items():  # every setting we write is Keras's
            assert real_layer["config"][key] == value, (name, key)


def test_random_fer_has_the_real_files_architecture(fer: FerCnn, random_fer: FerCnn) -> None:
    assert random_fer.network.order == fer.network.order  # same layers, inputs, order
    assert str(random_fer.network) == str(fer.network)  # same modules, sizes, strides, pads
    real = {name: tuple(t.shape) for name, t in fer.network.state_dict().items()}
    ours = {name: tuple(t.shape) for name, t in random_fer.network.state_dict().items()}
    assert ours == real
    assert (random_fer.input_size, random_fer.classes) == (fer.input_size, fer.classes)
    # Same shapes, different weights.
    faces = _gray_faces(2)
    assert not np.allclose(random_fer.predict_proba(faces), fer.predict_proba(faces))


def test_networks_forward_cache_sized_batches_on_a_cpu_with_the_same_outputs(
    random_embedder: Vgg16Block5Embedder, random_fer: FerCnn
) -> None:
    # On a CPU each network forwards a cache-sized slice of its inputs at a time (a forward
    # over hundreds of faces ran several times slower per face, BENCHMARKS.md); a GPU
    # takes GPU_FORWARD_BATCH. What a network computes doesn't depend on it.
    assert random_fer.batch_size == CPU_FORWARD_FACES < GPU_FORWARD_BATCH
    assert random_embedder.batch_size == CPU_FORWARD_CROPS < GPU_FORWARD_BATCH
    assert forward_batch_size("cuda", CPU_FORWARD_FACES) == GPU_FORWARD_BATCH
    faces = _gray_faces(CPU_FORWARD_FACES * 2 + 5, seed=3)  # three forwards, the last short
    crops = _crops(CPU_FORWARD_CROPS + 3, seed=3)  # two forwards
    sliced_faces, sliced_crops = random_fer.predict_proba(faces), random_embedder(crops)
    random_fer.batch_size = random_embedder.batch_size = GPU_FORWARD_BATCH  # one forward each
    try:
        whole_faces, whole_crops = random_fer.predict_proba(faces), random_embedder(crops)
    finally:
        random_fer.batch_size, random_embedder.batch_size = CPU_FORWARD_FACES, CPU_FORWARD_CROPS
    np.testing.assert_allclose(sliced_faces, whole_faces, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sliced_crops, whole_crops, rtol=1e-4, atol=1e-5)
    assert np.ptp(sliced_faces, axis=0).max() > 1e-3  # the faces' probabilities differ

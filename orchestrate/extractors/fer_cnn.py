"""The FER-2013 facial-expression CNN (Mitseas et al.'s video base model) in torch.

Mitseas et al. average a pretrained FER-2013 CNN's class probabilities over a clip's frames.
The weights we ship tests against are Arriaga et al.'s mini-Xception (the ``mini_XCEPTION``
of oarriaga/face_classification), saved by Keras 2.0.5 as HDF5. This module rebuilds the
network from the file's own ``model_config`` (the Keras functional graph) and copies the
``model_weights`` into torch layers with Keras semantics: channels-last kernels (HWIO)
transposed to OIHW, SeparableConv2D as a depthwise then a pointwise conv, BatchNormalization
with its own epsilon (1e-3), TensorFlow's 'same' padding (asymmetric for even inputs with
stride 2, -inf for max-pooling). So any file of that layout loads, whatever its input size
and number of classes; a layer outside that layout is a clear ``WeightsError``.

``FerCnn.random`` builds the same network without a file: ``mini_xception_config`` writes
the ``model_config`` Keras saves for ``mini_XCEPTION`` (layer for layer, names included), and
the same graph builder fills it with the initialisers that config names (Glorot-uniform
kernels, BatchNormalization at gamma 1, beta 0, moving mean 0, moving variance 1), drawn
from a seeded numpy generator: an untrained mini-Xception, for runs without the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from orchestrate.extractors.base import forward_batch_size
from orchestrate.extractors.vgg16 import WeightsError

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SUPPORTED_LAYERS = (
    "InputLayer",
    "Conv2D",
    "SeparableConv2D",
    "BatchNormalization",
    "Activation",
    "MaxPooling2D",
    "Add",
    "GlobalAveragePooling2D",
)
_ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU}
# Keras names a layer "<prefix>_<n>", n counting that class's layers in creation order.
_KERAS_PREFIXES = {
    "InputLayer": "input",
    "Conv2D": "conv2d",
    "SeparableConv2D": "separable_conv2d",
    "BatchNormalization": "batch_normalization",
    "Activation": "activation",
    "MaxPooling2D": "max_pooling2d",
    "Add": "add",
    "GlobalAveragePooling2D": "global_average_pooling2d",
}
# The initialiser config entry of each Keras weight name.
_INITIALIZER_KEYS = {
    "kernel": "kernel_initializer",
    "bias": "bias_initializer",
    "depthwise_kernel": "depthwise_initializer",
    "pointwise_kernel": "pointwise_initializer",
    "gamma": "gamma_initializer",
    "beta": "beta_initializer",
    "moving_mean": "moving_mean_initializer",
    "moving_variance": "moving_variance_initializer",
}
_GLOROT_UNIFORM = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None},
}
_ZEROS: dict[str, Any] = {"class_name": "Zeros", "config": {}}
_ONES: dict[str, Any] = {"class_name": "Ones", "config": {}}


class _TfSamePad(nn.Module):
    """TensorFlow 'same' padding: total ``(ceil(n/s)-1)*s + (k-1)*d + 1 - n``, extra at the end."""

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        value: float = 0.0,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation, self.value = kernel, stride, dilation, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad takes the last dimension (width) first.
        for size, k, s, d in zip(
            x.shape[:-3:-1], self.kernel[::-1], self.stride[::-1], self.dilation[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads, value=self.value) if any(pads) else x


class _Add(nn.Module):
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack(inputs).sum(dim=0)


class _GlobalAveragePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _Softmax(nn.Module):
    # Keras applies softmax over the last (channels) axis: dim 1 in torch's NCHW / NC.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


@dataclass
class _Layer:
    """One Keras layer of the graph: its torch module and the layers it reads."""

    name: str
    class_name: str
    config: dict[str, Any]
    inputs: list[str]
    module: nn.Module | None = None


class KerasGraphNet(nn.Module):
    """A Keras functional graph of the supported layers, evaluated in topological order."""

    def __init__(self, layers: list[_Layer], input_name: str, output_name: str) -> None:
        super().__init__()
        self.order = [(layer.name, layer.inputs) for layer in layers]
        self.layer_modules = nn.ModuleList(layer.module for layer in layers)
        self.input_name, self.output_name = input_name, output_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = {self.input_name: x}
        for (name, inputs), module in zip(self.order, self.layer_modules, strict=True):
            outputs[name] = module(*(outputs[i] for i in inputs))
        return outputs[self.output_name]


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _spatial_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    return (size - (kernel - 1) * dilation - 1) // stride + 1


# A layer's weight arrays by Keras name ("kernel", "gamma"...), given the shapes the layer
# expects; None when the source has no weights for that layer.
WeightSource = Callable[[_Layer, dict[str, tuple[int, ...]]], dict[str, np.ndarray] | None]


class _Hdf5Weights:
    """The weights of a Keras ``model.save`` file's ``model_weights`` group."""

    def __init__(self, group: h5py.Group) -> None:
        self.group = group

    def __call__(
        self, layer: _Layer, expected: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray] | None:
        if layer.name not in self.group:
            return None
        group = self.group[layer.name]
        arrays: dict[str, np.ndarray] = {}
        for full_name in group.attrs.get("weight_names", []):
            full_name = full_name.decode() if isinstance(full_name, bytes) else str(full_name)
            # "conv2d_1_1/kernel:0" -> "kernel"
            arrays[full_name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(
                group[full_name], dtype=np.float32
            )
        return arrays


class _KerasInitializers:
    """Fresh weights as Keras initialises a layer: each weight by the initialiser its config
    names (``VarianceScaling``, ``Zeros``, ``Ones``), drawn from a seeded numpy generator, so
    the caller's numpy and torch random states are left alone."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, layer: _Layer, expected: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray] | None:
        return {key: self.draw(layer, key, shape) for key, shape in expected.items()}

    def draw(self, layer: _Layer, key: str, shape: tuple[int, ...]) -> np.ndarray:
        spec = layer.config.get(_INITIALIZER_KEYS[key])
        kind = spec.get("class_name") if isinstance(spec, dict) else spec
        if kind == "Zeros":
            return np.zeros(shape, np.float32)
        if kind == "Ones":
            return np.ones(shape, np.float32)
        if kind != "VarianceScaling":
            raise WeightsError(
                f"layer {layer.name!r} weight {key!r}: initialiser {kind!r} is not one of "
                "VarianceScaling, Zeros, Ones"
            )
        options = spec["config"]
        # Keras's fans of a channels-last kernel (kh, kw, in, out): in or out x kh*kw.
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
        variance = float(options.get("scale", 1.0)) / max(1.0, fan[options.get("mode", "fan_in")])
        if options.get("distribution", "normal") != "uniform":
            raise WeightsError(
                f"layer {layer.name!r} weight {key!r}: only uniform VarianceScaling is supported"
            )
        limit = math.sqrt(3.0 * variance)
        return self.rng.uniform(-limit, limit, shape).astype(np.float32)


class _GraphBuilder:
    """Builds the torch modules of a Keras model config and fills them from a weight source.

    ``label`` names the model in errors (the file's path, or the random model's seed).
    """

    def __init__(self, label: str, config: dict[str, Any], weights: WeightSource) -> None:
        self.label, self.config, self.weights = label, config, weights

    def fail(self, reason: str) -> WeightsError:
        return WeightsError(f"FER model {self.label}: {reason}")

    def build(self) -> tuple[KerasGraphNet, int, int]:
        """The network, its square input side and its number of classes."""
        if self.config.get("class_name") not in ("Model", "Functional"):
            raise self.fail(
                f"model_config is a Keras {self.config.get('class_name')!r}, expected a functional "
                "Model (mini-Xception layout)"
            )
        graph = self.config["config"]
        by_name: dict[str, _Layer] = {}
        for entry in graph["layers"]:
            name, class_name = entry["name"], entry["class_name"]
            if class_name not in SUPPORTED_LAYERS:
                raise self.fail(
                    f"layer {name!r} is a {class_name}, not part of the mini-Xception layout "
                    f"(supported: {', '.join(SUPPORTED_LAYERS)})"
                )
            nodes = entry.get("inbound_nodes", [])
            if len(nodes) > 1:
                raise self.fail(f"layer {name!r} is shared ({len(nodes)} inbound nodes)")
            inputs = [inbound[0] for inbound in nodes[0]] if nodes else []
            by_name[name] = _Layer(name, class_name, entry["config"], inputs)
        if len(graph["input_layers"]) != 1 or len(graph["output_layers"]) != 1:
            raise self.fail("expected one input and one output layer")
        input_name, output_name = graph["input_layers"][0][0], graph["output_layers"][0][0]
        for layer in by_name.values():
            for source in layer.inputs:
                if source not in by_name:
                    raise self.fail(f"layer {layer.name!r} reads unknown layer {source!r}")
        try:
            dependencies = {name: layer.inputs for name, layer in by_name.items()}
            order = list(TopologicalSorter(dependencies).static_order())
        except CycleError as err:
            raise self.fail(f"the layer graph has a cycle ({err.args[1]})") from err

        shape_in = by_name[input_name].config.get("batch_input_shape")
        if by_name[input_name].class_name != "InputLayer" or not shape_in or len(shape_in) != 4:
            raise self.fail(f"input {input_name!r} is not an image InputLayer (N, H, W, C)")
        _, height, width, channels = shape_in
        if height is None or height != width or channels != 1:
            raise self.fail(f"input shape {shape_in[1:]} is not a square grayscale image (S, S, 1)")
        # Shapes (C, H, W) or (C,) after global pooling, propagated to size every layer.
        shapes: dict[str, tuple[int, ...]] = {input_name: (1, height, width)}
        built: list[_Layer] = []
        for name in order:
            layer = by_name[name]
            if layer.class_name == "InputLayer":
                if name != input_name:
                    raise self.fail(f"extra input layer {name!r}")
                continue
            if not layer.inputs:
                raise self.fail(f"layer {name!r} has no inputs")
            shapes[name] = self.build_layer(layer, [shapes[i] for i in layer.inputs])
            built.append(layer)
        output_shape = shapes[output_name]
        last = by_name[output_name]
        activation = last.config.get("activation")
        if len(output_shape) != 1 or activation != "softmax":
            raise self.fail(
                f"output {output_name!r} is not a softmax over classes "
                f"(shape {output_shape}, activation {activation!r})"
            )
        return KerasGraphNet(built, input_name, output_name), int(height), output_shape[0]

    def build_layer(self, layer: _Layer, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        """Set ``layer.module`` (weights loaded) and return its output shape."""
        cfg, kind = layer.config, layer.class_name
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise self.fail(f"layer {layer.name!r} uses data_format {cfg['data_format']!r}")
        if kind == "Add":
            if len(set(in_shapes)) != 1:
                raise self.fail(f"layer {layer.name!r} adds different shapes {in_shapes}")
            layer.module = _Add()
            return in_shapes[0]
        if len(in_shapes) != 1:
            raise self.fail(f"layer {layer.name!r} ({kind}) has {len(in_shapes)} inputs")
        shape = in_shapes[0]
        if kind == "Activation":
            layer.module = self.activation(layer, cfg["activation"])
            return shape
        if len(shape) != 3:
            raise self.fail(f"layer {layer.name!r} ({kind}) follows global pooling")
        channels, height, width = shape
        if kind == "GlobalAveragePooling2D":
            layer.module = _GlobalAveragePool()
            return (channels,)
        if kind == "BatchNormalization":
            axis = cfg.get("axis", -1)
            if axis not in (-1, 3, [-1], [3]):  # later Keras versions save the axis as a list
                raise self.fail(f"layer {layer.name!r} normalises axis {axis}, expected -1")
            norm = nn.BatchNorm2d(channels, eps=float(cfg["epsilon"]))
            names = (
                (["gamma"] if cfg.get("scale", True) else [])
                + (["beta"] if cfg.get("center", True) else [])
                + ["moving_mean", "moving_variance"]
            )
            arrays = self.layer_weights(layer, {n: (channels,) for n in names})
            with torch.no_grad():
                if "gamma" in arrays:
                    norm.weight.copy_(torch.from_numpy(arrays["gamma"]))
                if "beta" in arrays:
                    norm.bias.copy_(torch.from_numpy(arrays["beta"]))
                norm.running_mean.copy_(torch.from_numpy(arrays["moving_mean"]))
                norm.running_var.copy_(torch.from_numpy(arrays["moving_variance"]))
            layer.module = norm
            return shape
        kernel = _pair(cfg["pool_size"] if kind == "MaxPooling2D" else cfg["kernel_size"])
        stride = _pair(cfg.get("strides") or kernel)
        dilation = _pair(cfg.get("dilation_rate", 1))
        padding = cfg.get("padding", "valid")
        if padding not in ("same", "valid"):
            raise self.fail(f"layer {layer.name!r} has padding {padding!r}")
        out_hw = tuple(
            _spatial_out(n, k, s, d, padding)
            for n, k, s, d in zip((height, width), kernel, stride, dilation, strict=True)
        )
        if min(out_hw) < 1:
            raise self.fail(f"layer {layer.name!r} leaves an empty map from {height}x{width}")
        # Max-pooling pads with -inf so that padding never wins the max (as TensorFlow does).
        pad_value = float("-inf") if kind == "MaxPooling2D" else 0.0
        pad = [_TfSamePad(kernel, stride, dilation, pad_value)] if padding == "same" else []
        if kind == "MaxPooling2D":
            layer.module = nn.Sequential(*pad, nn.MaxPool2d(kernel, stride, dilation=dilation))
            return (channels, *out_hw)
        filters, use_bias = int(cfg["filters"]), bool(cfg.get("use_bias", True))
        bias_shape = {"bias": (filters,)} if use_bias else {}
        if kind == "Conv2D":
            arrays = self.layer_weights(
                layer, {"kernel": (*kernel, channels, filters), **bias_shape}
            )
            # skip_init: every parameter is copied below, so torch's RNG is never drawn from.
            conv = skip_init(
                nn.Conv2d, channels, filters, kernel, stride, dilation=dilation, bias=use_bias
            )
            self.copy(conv.weight, arrays["kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
            if use_bias:
                self.copy(conv.bias, arrays["bias"])
            convs: list[nn.Module] = [conv]
        else:  # SeparableConv2D: depthwise (per input channel) then pointwise 1x1
            multiplier = int(cfg.get("depth_multiplier", 1))
            arrays = self.layer_weights(
                layer,
                {
                    "depthwise_kernel": (*kernel, channels, multiplier),
                    "pointwise_kernel": (1, 1, channels * multiplier, filters),
                    **bias_shape,
                },
            )
            depthwise = skip_init(
                nn.Conv2d,
                channels,
                channels * multiplier,
                kernel,
                stride,
                dilation=dilation,
                groups=channels,
                bias=False,
            )
            # Keras' depthwise output channel c*multiplier+m is input channel c, multiplier m.
            depth = arrays["depthwise_kernel"].transpose(2, 3, 0, 1)
            self.copy(depthwise.weight, depth.reshape(channels * multiplier, 1, *kernel))
            pointwise = skip_init(nn.Conv2d, channels * multiplier, filters, 1, bias=use_bias)
            self.copy(pointwise.weight, arrays["pointwise_kernel"].transpose(3, 2, 0, 1))
            if use_bias:
                self.copy(pointwise.bias, arrays["bias"])
            convs = [depthwise, pointwise]
        activation = self.activation(layer, cfg.get("activation", "linear"))
        layer.module = nn.Sequential(*pad, *convs, activation)
        return (filters, *out_hw)

    def activation(self, layer: _Layer, name: str) -> nn.Module:
        if name == "softmax":
            return _Softmax()
        if name not in _ACTIVATIONS:
            raise self.fail(f"layer {layer.name!r} has activation {name!r}")
        return _ACTIVATIONS[name]()

    def layer_weights(
        self, layer: _Layer, expected: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        """The layer's weight arrays by Keras name (``kernel``, ``gamma``...), shapes checked."""
        try:
            arrays = self.weights(layer, expected)
        except WeightsError as err:
            raise self.fail(str(err)) from err
        if arrays is None:
            raise self.fail(f"model_weights has no group for layer {layer.name!r}")
        if set(arrays) != set(expected):
            raise self.fail(
                f"layer {layer.name!r} has weights {sorted(arrays)}, expected {sorted(expected)}"
            )
        for key, shape in expected.items():
            if arrays[key].shape != shape:
                raise self.fail(
                    f"layer {layer.name!r} weight {key!r} has shape {arrays[key].shape}, "
                    f"expected {shape}"
                )
        return arrays

    @staticmethod
    def copy(param: torch.Tensor, array: np.ndarray) -> None:
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(array)))


def mini_xception_config(input_size: int = 64, num_classes: int = 7) -> dict[str, Any]:
    """The Keras ``model_config`` of Arriaga et al.'s ``mini_XCEPTION`` (face_classification).

    Layer for layer what Keras 2 saves for ``mini_XCEPTION((input_size, input_size, 1),
    num_classes)``: the same classes, names, inbound nodes, order and the layer settings the
    graph builder reads, with the initialisers Keras records. Two 3x3 valid convs (8 filters),
    four residual modules (16, 32, 64, 128 filters: two separable 3x3 convs and a 3x3/2
    max-pool, beside a 1x1/2 conv shortcut), a 3x3 conv to the classes, global average
    pooling and softmax. Every conv has batch normalisation; only the last has a bias.
    """
    counts: Counter[str] = Counter()

    def layer(class_name: str, inputs: Sequence[str], name: str = "", **config: Any) -> dict:
        prefix = _KERAS_PREFIXES[class_name]
        counts[prefix] += 1  # Keras counts every created layer, named or not
        name = name or f"{prefix}_{counts[prefix]}"
        return {
            "class_name": class_name,
            "name": name,
            "config": {"name": name, **config},
            "inbound_nodes": [[[source, 0, 0, {}] for source in inputs]] if inputs else [],
        }

    def conv(inputs: str, filters: int, kernel: int, stride: int, padding: str, bias: bool):
        return layer(
            "Conv2D",
            [inputs],
            filters=filters,
            kernel_size=[kernel, kernel],
            strides=[stride, stride],
            padding=padding,
            data_format="channels_last",
            dilation_rate=[1, 1],
            activation="linear",
            use_bias=bias,
            kernel_initializer=_GLOROT_UNIFORM,
            bias_initializer=_ZEROS,
        )

    def separable(inputs: str, filters: int) -> dict:
        return layer(
            "SeparableConv2D",
            [inputs],
            filters=filters,
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            depth_multiplier=1,
            data_format="channels_last",
            dilation_rate=[1, 1],
            activation="linear",
            use_bias=False,
            depthwise_initializer=_GLOROT_UNIFORM,
            pointwise_initializer=_GLOROT_UNIFORM,
            bias_initializer=_ZEROS,
        )

    def batch_norm(inputs: str) -> dict:
        return layer(
            "BatchNormalization",
            [inputs],
            axis=-1,
            momentum=0.99,
            epsilon=0.001,
            center=True,
            scale=True,
            beta_initializer=_ZEROS,
            gamma_initializer=_ONES,
            moving_mean_initializer=_ZEROS,
            moving_variance_initializer=_ONES,
        )

    layers: list[dict[str, Any]] = []

    def add(entry: dict) -> str:
        layers.append(entry)
        return entry["name"]

    x = add(
        layer(
            "InputLayer",
            [],
            batch_input_shape=[None, input_size, input_size, 1],
            dtype="float32",
            sparse=False,
        )
    )
    input_name = x
    for _ in range(2):
        x = add(conv(x, 8, 3, 1, "valid", bias=False))
        x = add(batch_norm(x))
        x = add(layer("Activation", [x], activation="relu"))
    for filters in (16, 32, 64, 128):
        # Created first (so named first) but listed after the main branch, as Keras orders
        # a model's layers by depth in the graph.
        shortcut = conv(x, filters, 1, 2, "same", bias=False)
        shortcut_norm = batch_norm(shortcut["name"])
        branch = add(separable(x, filters))
        branch = add(batch_norm(branch))
        branch = add(layer("Activation", [branch], activation="relu"))
        branch = add(separable(branch, filters))
        branch = add(batch_norm(branch))
        add(shortcut)
        pooled = add(
            layer(
                "MaxPooling2D",
                [branch],
                pool_size=[3, 3],
                strides=[2, 2],
                padding="same",
                data_format="channels_last",
            )
        )
        add(shortcut_norm)
        x = add(layer("Add", [pooled, shortcut_norm["name"]]))
    x = add(conv(x, num_classes, 3, 1, "same", bias=True))
    x = add(layer("GlobalAveragePooling2D", [x], data_format="channels_last"))
    output_name = add(layer("Activation", [x], name="predictions", activation="softmax"))
    return {
        "class_name": "Model",
        "config": {
            "name": "model_1",
            "layers": layers,
            "input_layers": [[input_name, 0, 0]],
            "output_layers": [[output_name, 0, 0]],
        },
    }


def network_sha256(network: nn.Module) -> str:
    """sha256 of a network's parameters and buffers (names, shapes and float bytes)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _class_names(num_classes: int, classes: Sequence[str] | None, label: str) -> tuple[str, ...]:
    if classes is None:
        classes = (
            FER2013_CLASSES
            if num_classes == len(FER2013_CLASSES)
            else tuple(f"class_{i}" for i in range(num_classes))
        )
    if len(classes) != num_classes:
        raise WeightsError(
            f"FER model {label} has {num_classes} outputs but {len(classes)} class names given"
        )
    return tuple(classes)


# Faces per forward on a CPU: one thread spends ~1.3 ms a face at 16-128 faces and 3.5-5 ms
# at 256 (64x64 inputs; a forward's activations then outgrow the caches; BENCHMARKS.md), with
# identical outputs.
CPU_FORWARD_FACES = 32


class FerCnn:
    """A Keras FER CNN (mini-Xception layout) run in torch: face crops -> class probabilities."""

    def __init__(
        self,
        network: KerasGraphNet,
        input_size: int,
        classes: Sequence[str],
        device: str | None = None,
        source: str = "",
        source_sha256: str = "",
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.input_size = input_size
        self.classes = tuple(classes)
        self.source = source  # the model file, or "random"
        # The file's content hash, or the random network's weights hash: for cache keys.
        self.source_sha256 = source_sha256
        # Faces per forward: cache-sized on a CPU, GPU_FORWARD_BATCH on a GPU.
        self.batch_size = forward_batch_size(self.device.type, CPU_FORWARD_FACES)

    @classmethod
    def from_keras_h5(
        cls, path: str | Path, device: str | None = None, *, classes: Sequence[str] | None = None
    ) -> FerCnn:
        """Load a Keras HDF5 model file (``model.save`` layout: ``model_config`` + weights).

        ``classes`` names the outputs; by default ``FER2013_CLASSES`` for a 7-way model and
        ``class_0..class_{k-1}`` otherwise. Raises ``WeightsError`` (one line) for a missing,
        unreadable or differently laid out file.
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(f"FER model file not found: {path}")
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise WeightsError(f"FER model {path} is not an HDF5 file ({err})") from err
        with handle:
            raw_config = handle.attrs.get("model_config")
            if raw_config is None:
                raise WeightsError(
                    f"FER model {path}: no model_config attribute (not a Keras model.save file)"
                )
            if "model_weights" not in handle:
                raise WeightsError(f"FER model {path}: no model_weights group")
            try:
                raw = raw_config.decode() if isinstance(raw_config, bytes) else str(raw_config)
                config = json.loads(raw)
                network, input_size, num_classes = _GraphBuilder(
                    str(path), config, _Hdf5Weights(handle["model_weights"])
                ).build()
            except WeightsError:
                raise
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise WeightsError(
                    f"FER model {path}: malformed model_config ({type(err).__name__}: {err})"
                ) from err
        classes = _class_names(num_classes, classes, str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(network, input_size, classes, device, str(path), digest)

    @classmethod
    def random(
        cls, seed: int = 0, num_classes: int = 7, input_size: int = 64, device: str | None = None
    ) -> FerCnn:
        """An untrained mini-Xception: ``mini_xception_config`` with Keras's initialisers.

        Deterministic for a ``seed`` (numpy's generator; the global numpy and torch random
        states are not touched). BatchNormalization keeps its initial moving statistics
        (mean 0, variance 1), so at inference it only rescales by 1/sqrt(1 + 1e-3) and the
        class probabilities still vary with the face. ``source`` is ``"random"`` and
        ``source_sha256`` the hash of the weights (``network_sha256``). Classes as in
        ``from_keras_h5``. Raises ``WeightsError`` (one line) for no classes or an input
        too small for the layout (the two valid 3x3 convs need at least 5 pixels).
        """
        label = f"random mini-Xception (seed {seed}, input {input_size})"
        if num_classes < 1:
            raise WeightsError(f"FER model {label}: num_classes must be >= 1, got {num_classes}")
        config = mini_xception_config(input_size, num_classes)
        network, size, outputs = _GraphBuilder(label, config, _KerasInitializers(seed)).build()
        classes = _class_names(outputs, None, label)
        return cls(network, size, classes, device, "random", network_sha256(network))

    def predict_proba(self, faces_gray: np.ndarray) -> np.ndarray:
        """Class probabilities of grayscale face crops: (N, H, W) uint8 -> (N, classes) float32.

        Preprocessing as in face_classification: resize to ``input_size`` (bilinear, as
        ``cv2.resize`` by default), x / 255, then (x - 0.5) * 2 into [-1, 1].
        """
        if not isinstance(faces_gray, np.ndarray) or faces_gray.ndim != 3:
            shape = getattr(faces_gray, "shape", type(faces_gray).__name__)
            raise ValueError(
                f"FER faces must be an (N, H, W) grayscale array, got {shape} "
                "(convert BGR crops with cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))"
            )
        if faces_gray.dtype != np.uint8:
            raise ValueError(f"FER faces must be uint8, got {faces_gray.dtype}")
        size = self.input_size
        if faces_gray.shape[1:] != (size, size):
            faces_gray = (
                np.stack([cv2.resize(face, (size, size)) for face in faces_gray])
                if len(faces_gray)
                else np.empty((0, size, size), np.uint8)
            )
        probabilities = np.empty((len(faces_gray), len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(faces_gray), self.batch_size):
                batch = faces_gray[start : start + self.batch_size]
                batch = torch.from_numpy(batch).to(self.device)
                pixels = (batch.float().div_(255.0).sub_(0.5).mul_(2.0)).unsqueeze(1)
                probabilities[start : start + len(batch)] = self.network(pixels).cpu().numpy()
        return probabilities

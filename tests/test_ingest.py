"""The ingest stage on real clips: rows in the store, cache hits and misses, bad input reported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.dataset as pds
import pytest
import ray

from orchestrate.config import RunConfig, load_config
from orchestrate.features import feature_source
from orchestrate.pipeline import ingest
from orchestrate.store import FeatureStore
from tasks import TASKS

AV_CLIP = "01-01-01-01-01-01-01.mp4"  # the real full-AV RAVDESS clip (actor 01, neutral)
EXTRACTORS = (
    "{emodal_face: {}, emodal_audio: {}, song_mfcc: {}, song_vgg16: {weights: random},"
    " wang_texture: {}}"
)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _corpus(shared_data: Path, root: Path) -> Path:
    """The real AV clip, four real wavs of two actors, and three broken clips made here."""
    root.mkdir()
    shutil.copy(shared_data / "ravdess" / "av" / AV_CLIP, root / AV_CLIP)
    for actor in ("01", "02"):
        for emotion in ("03", "04"):
            name = f"03-01-{emotion}-01-01-01-{actor}.wav"
            shutil.copy(shared_data / "ravdess" / "audio" / f"Actor_{actor}" / name, root / name)
    data = (shared_data / "ravdess" / "av" / AV_CLIP).read_bytes()
    # Corrupt: the container's header is overwritten; truncated: the first 40 kB only.
    corrupt = bytearray(data)
    corrupt[:4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (root / "01-01-05-01-01-01-03.mp4").write_bytes(bytes(corrupt))
    (root / "01-01-06-01-01-01-03.mp4").write_bytes(data[:40_000])
    _video_without_audio(root / "01-01-07-01-01-01-03.mp4")
    (root / "notes-01.mp4").write_bytes(b"not a clip name")
    return root


def _video_without_audio(path: Path) -> None:
    """An mp4 with an H.264 stream of a plain gradient and no audio stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(15):
            image = np.full((64, 64, 3), 8 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _config(tmp_path: Path, root: Path, *overrides: str) -> RunConfig:
    return load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            f"dataset.root={root}",
            "tasks={emodal: {}, song: {}, wang: {}}",  # what they read is what is ingested
            f"ingest.extractors={EXTRACTORS}",
            *overrides,
        ],
    )


def _files(store_dir: Path) -> set[str]:
    return {
        str(p.relative_to(store_dir)) for p in store_dir.rglob("*.parquet") if "features" in p.parts
    }


def test_ingest_caches_and_reports_bad_clips(shared_data: Path, tmp_path: Path, local_ray) -> None:
    root = _corpus(shared_data, tmp_path / "clips")
    config = _config(tmp_path, root)
    summary = ingest(config, progress=False)

    assert summary.clips == 8 and summary.computed == 8
    failed = dict(summary.failed_clips)
    assert set(failed) == {"01-01-05-01-01-01-03", "01-01-06-01-01-01-03", "01-01-07-01-01-01-03"}
    assert "no audio stream" in failed["01-01-07-01-01-01-03"]
    assert all("\n" not in reason for reason in failed.values())
    assert summary.ok == 5 and summary.failed == 3
    assert [uri for uri, _ in summary.rejected_files] == [str(root / "notes-01.mp4")]

    store_dir = Path(config.store_uri)
    store = FeatureStore(config.store_uri)
    rows = (
        pds.dataset(next(store_dir.glob("features/emodal_audio/*")), format="parquet")
        .to_table()
        .to_pandas()
    )
    assert sorted(rows["status"]) == ["failed"] * 3 + ["ok"] * 5
    ok = rows[rows["status"] == "ok"]
    assert all(len(features) == 68 and np.isfinite(features).all() for features in ok["features"])
    assert set(ok["label"]) == {"neutral", "happy", "sad"}

    # The real AV clip's VGG16 sequence went through the actor pool.
    vgg = (
        pds.dataset(next(store_dir.glob("features/song_vgg16/*")), format="parquet")
        .to_table()
        .to_pandas()
    )
    av_row = vgg[vgg["clip_id"] == "01-01-01-01-01-01-01"].iloc[0]
    assert (
        av_row["status"] == "ok"
        and av_row["features__shape"][1] == 512
        and av_row["features__shape"][0] >= 20
    )

    # Warm: nothing is computed again.
    before = _files(store_dir)
    warm = ingest(config, progress=False)
    assert warm.computed == 0 and warm.failed == 3 and _files(store_dir) == before

    # One extractor's parameters change: only that extractor is recomputed, in a new directory.
    changed = _config(tmp_path, root, "ingest.extractors.song_mfcc.n_mfcc=20")
    summary = ingest(changed, progress=False)
    after = _files(store_dir)
    new_files = after - before
    assert summary.computed == 8  # every clip has an audio URI: song_mfcc runs on each
    assert new_files and all(path.startswith("features/song_mfcc/") for path in new_files)
    assert (
        len({Path(path).parent for path in new_files} - {Path(path).parent for path in before}) == 1
    )
    mfcc = feature_source(changed, TASKS["song"], "audio").load()[0]
    assert {array.shape[1] for array in mfcc.columns["song_mfcc.mfcc"]} == {20}

    # A changed clip (same name, other content) is recomputed; the others are not.
    shutil.copy(
        shared_data / "ravdess" / "audio" / "Actor_01" / "03-01-03-02-01-01-01.wav",
        root / "03-01-03-01-01-01-01.wav",
    )
    summary = ingest(changed, progress=False)
    assert summary.computed == 1
    manifest = store.read_manifest("ravdess", str(root))
    assert len(manifest) == 8


def test_ingest_cli_exit_status_follows_the_failure_ratio(
    shared_data: Path, tmp_path: Path
) -> None:
    root = _corpus(shared_data, tmp_path / "clips")
    command = [
        sys.executable,
        "-m",
        "orchestrate",
        "ingest",
        "--quiet",
        "--workspace",
        str(tmp_path / "ws"),
        f"dataset.root={root}",
        "tasks={emodal: {}}",  # ingests emodal_audio and emodal_face
    ]
    strict = subprocess.run(
        [*command, "ingest.max_failure_ratio=0.2"], capture_output=True, text=True
    )
    assert strict.returncode == 1, strict.stderr[-2000:]
    assert "failed: 3" in strict.stdout
    assert "above ingest.max_failure_ratio=20%" in strict.stderr
    lenient = subprocess.run(
        [*command, "ingest.max_failure_ratio=0.5"], capture_output=True, text=True
    )
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    assert "8 clips, 0 computed, 8 from cache" in lenient.stdout


def test_ingest_leaves_out_the_song_channel_and_sweeps_count_identical_files_once(
    shared_data: Path, tmp_path: Path, local_ray
) -> None:
    audio = shared_data / "ravdess" / "audio" / "Actor_01"
    root = tmp_path / "clips" / "Actor_01"
    root.mkdir(parents=True)
    shutil.copy(audio / "03-01-03-01-02-01-01.wav", root / "03-01-03-01-02-01-01.wav")
    # The quirk of RAVDESS's public audio copy (Actor_07's 03-01-03-01-02-0{1,2}-07),
    # reproduced: two takes' names on the very same bytes.
    shutil.copy(audio / "03-01-03-01-02-01-01.wav", root / "03-01-03-01-02-02-01.wav")
    shutil.copy(audio / "03-01-04-01-01-01-01.wav", root / "03-01-04-01-01-01-01.wav")
    # A song-channel name (vocal channel 02): not a clip under dataset.vocal_channel=speech.
    shutil.copy(audio / "03-01-04-01-01-02-01.wav", root / "03-02-04-01-01-01-01.wav")
    config = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            f"dataset.root={root.parent}",
            "tasks={emodal: {variants: [audio]}}",  # ingests emodal_audio
        ],
    )
    summary = ingest(config, progress=False)
    assert (summary.clips, summary.ok, summary.failed) == (3, 3, 0)
    assert summary.rejected_files == []
    assert "  1 files of the song channel left out (dataset.vocal_channel=speech)" in (
        summary.lines()
    )

    features, left_out = feature_source(config, TASKS["emodal"], "audio").load()
    assert features.clip_ids == ["03-01-03-01-02-01-01", "03-01-04-01-01-01-01"]
    assert left_out == [("03-01-03-01-02-02-01", "byte-identical to 03-01-03-01-02-01-01")]

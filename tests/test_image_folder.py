"""Still images: the ``image-folder`` adapter, one-frame decoding, and Wang and EMODal on stills.

The listing tests build tiny layouts on disk (and on moto's S3); the decoding tests read
the 24 real RAVDESS stills in ``../shared/data/ravdess/faces`` (skipped when absent); the
ingest test runs the real stage on a folder with bad files in it; the end-to-end tests
write labelled face images from generated clips' frames (``orchestrate.corpus``) and run
ingest and a tiny nested sweep of ``wang`` and ``emodal/video`` in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray

from orchestrate.config import ConfigError, IngestConfig, load_config
from orchestrate.corpus.synth import ClipSpec, _generator, draw_actor, render_video
from orchestrate.datasets import DATASETS, list_clips
from orchestrate.datasets.base import Clip
from orchestrate.emotions import emotion_named
from orchestrate.errors import InputError
from orchestrate.extractors import build_extractor
from orchestrate.extractors.base import ClipMedia, ExtractionError
from orchestrate.faces import DETECT_WIDTH, MIN_DETECT_WIDTH, HaarFaceDetector
from orchestrate.features import feature_source
from orchestrate.media import decode_clip, decode_image
from orchestrate.pipeline import ingest, sweep
from orchestrate.stages.ingest import extractor_key
from tasks import TASKS

# SFEW's seven folders, as the release names them.
SFEW_FOLDERS = {
    "Angry": "angry",
    "Disgust": "disgust",
    "Fear": "fearful",
    "Happy": "happy",
    "Neutral": "neutral",
    "Sad": "sad",
    "Surprise": "surprised",
}
SMALL = [
    "sweep.num_samples=2",
    "sweep.max_epochs=1",
    "sweep.folds=2",
    "sweep.protocols=[actor-kfold]",
    "sweep.baseline=[]",
    "sweep.max_concurrent=1",
]


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _face_frames(spec: ClipSpec, positions: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """BGR frames of a generated clip at ``positions`` (frame indices), rendered, never encoded."""
    frames = {}
    for index, rgb in enumerate(
        render_video(spec, draw_actor(seed, spec.actor), _generator(seed, "clip", spec.name))
    ):
        if index in positions:
            frames[index] = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if index >= max(positions):
            break
    return [frames[p] for p in positions]


# -- the emotion vocabulary and the listing ---------------------------------------------------


def test_sfew_folder_names_and_synonyms_map_to_the_vocabulary() -> None:
    for folder, emotion in SFEW_FOLDERS.items():
        assert emotion_named(folder) == emotion
        assert emotion_named(folder.upper()) == emotion
    assert emotion_named("surprised") == "surprised" and emotion_named("Anger") == "angry"
    assert emotion_named("contempt") is None and emotion_named("Train") is None


def test_folder_layout_lists_images_and_reports_what_it_cannot_label(tmp_path: Path) -> None:
    root = tmp_path / "stills"
    grey = np.full((32, 32, 3), 128, np.uint8)
    for folder in ("Angry", "Fear", "surprise"):
        _write_png(root / folder / f"{folder.lower()}_1.png", grey)
    _write_png(root / "Train" / "Sad" / "sad_1.jpg", grey)  # the label is the parent folder
    _write_png(root / "Contempt" / "c_1.png", grey)
    _write_png(root / "Contempt" / "c_2.png", grey)
    _write_png(root / "loose.png", grey)
    _write_png(root / "Happy" / "angry_1.png", grey)  # the name of an image already listed
    (root / "README.txt").write_text("not an image")
    (root / "Angry" / "angry_1.mat").write_bytes(b"not an image either")

    listing = list_clips("image-folder", str(root))

    labels = {clip.clip_id: clip.label for clip in listing.clips}
    assert labels == {
        "angry_1": "angry",
        "fear_1": "fearful",
        "surprise_1": "surprised",
        "sad_1": "sad",
    }
    for clip in listing.clips:
        assert clip.audio_uri is None and clip.video_uri.endswith((".png", ".jpg"))
        assert clip.actor == clip.clip_id  # no group: each image is its own
    reasons = {Path(r.uri).name: r.reason for r in listing.rejected}
    assert set(reasons) == {"Contempt", "loose.png", "angry_1.png"}
    assert "2 images left out" in reasons["Contempt"] and "not an emotion" in reasons["Contempt"]
    assert "not in an emotion folder" in reasons["loose.png"]
    assert "same image name as" in reasons["angry_1.png"]
    assert all("\n" not in reason for reason in reasons.values())


def test_csv_lists_paths_labels_and_groups_and_reports_bad_rows(tmp_path: Path) -> None:
    grey = np.full((32, 32, 3), 128, np.uint8)
    _write_png(tmp_path / "img" / "a.png", grey)
    _write_png(tmp_path / "img" / "b.png", grey)
    absolute = _write_png(tmp_path / "elsewhere" / "c.png", grey)
    table = tmp_path / "stills.csv"
    table.write_text(
        "path,label,group\n"
        "img/a.png,Angry,Juno\n"
        "img/b.png,fear,Juno\n"
        f"{absolute},Surprise,Heat\n"
        "img/d.png,Contempt,Heat\n"
        "img/e.png,Sad,\n"
        "notes.txt,Sad,Heat\n"
    )
    listing = list_clips("image-folder", str(table))
    assert [(c.clip_id, c.label, c.actor) for c in listing.clips] == [
        ("a", "angry", "Juno"),
        ("b", "fearful", "Juno"),
        ("c", "surprised", "Heat"),
    ]
    assert listing.clips[0].video_uri == str(tmp_path / "img" / "a.png")
    reasons = [r.reason for r in listing.rejected]
    assert len(reasons) == 3
    assert "line 5" in reasons[0] and "'Contempt' is not an emotion" in reasons[0]
    assert "line 6" in reasons[1] and "empty group" in reasons[1]
    assert "line 7" in reasons[2] and "notes.txt is not an image" in reasons[2]

    no_label = tmp_path / "bad.csv"
    no_label.write_text("file,emotion\nimg/a.png,Angry\n")
    with pytest.raises(InputError, match="missing path, label"):
        list_clips("image-folder", str(no_label))


def test_folder_layout_on_s3(moto_s3, tmp_path: Path) -> None:
    moto_s3.client.create_bucket(Bucket="stills")
    png = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))[1].tobytes()
    moto_s3.put("stills", "sfew/Angry/x_1.png", png)
    moto_s3.put("stills", "sfew/Disgust/x_2.png", png)
    moto_s3.put("stills", "sfew/Bored/x_3.png", png)
    listing = list_clips("image-folder", "s3://stills/sfew", moto_s3.storage_options)
    assert [(c.video_uri, c.label) for c in listing.clips] == [
        ("s3://stills/sfew/Angry/x_1.png", "angry"),
        ("s3://stills/sfew/Disgust/x_2.png", "disgust"),
    ]
    assert [r.uri for r in listing.rejected] == ["s3://stills/sfew/Bored"]


# -- decoding a still -----------------------------------------------------------------------


def test_each_real_ravdess_still_gives_a_detected_face(shared_data: Path) -> None:
    stills = sorted((shared_data / "ravdess" / "faces").glob("Actor_*.png"))
    assert len(stills) == 24
    detector = HaarFaceDetector()
    texture = build_extractor("wang_texture")
    for path in stills:
        clip = Clip(path.stem, "image-folder", path.stem, "neutral", str(path), None)
        media = decode_clip(clip, need_video=True, need_audio=False, detector=detector)
        track = media.faces
        assert track is not None and track.still and track.frames_with_face == 1, path.name
        crop = track.crops[0]
        assert crop.shape == (128, 128, 3)
        # A crop of the face, not the whole 398x224 frame: the frame's crop_size square
        # "given" crop (the image taken as the face) differs from it.
        given = decode_image(path, None).crops[0]
        assert not np.array_equal(crop, given)
        arrays = texture.extract(media)
        assert arrays["lpq"].shape == (256,) and arrays["phog"].shape == (168,)
        assert np.isclose(arrays["lpq"].sum(), 1.0)


def test_given_faces_take_the_whole_image_and_bad_images_are_one_line(tmp_path: Path) -> None:
    face = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    path = _write_png(tmp_path / "face.png", face)
    track = decode_image(path, None, crop_size=48)
    assert track.frames_with_face == 1
    # The centred 48x48 square of the 48x64 image, at its own size: no resampling.
    assert np.array_equal(track.crops[0], face[:, 8:56])

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ExtractionError, match="^unreadable image: OpenCV can't decode the file$"):
        decode_image(broken, HaarFaceDetector())

    blank = decode_image(
        _write_png(tmp_path / "blank.png", np.full((96, 96, 3), 90, np.uint8)), HaarFaceDetector()
    )
    assert blank.crops == [None]
    for name in ("wang_texture", "emodal_face"):
        with pytest.raises(ExtractionError, match="^no face in the image$"):
            build_extractor(name).extract(ClipMedia(faces=blank, audio=None))


# -- config and cache key -------------------------------------------------------------------


def test_faces_setting_is_checked_and_keys_the_video_extractors_only(tmp_path: Path) -> None:
    assert "image-folder" in DATASETS and DATASETS["image-folder"].yields == "clips"
    with pytest.raises(ConfigError, match=r"^dataset\.faces: 'crop' is not one of detect, given$"):
        load_config(None, ["dataset.faces=crop"])
    texture, audio = build_extractor("wang_texture"), build_extractor("emodal_audio")
    assert extractor_key(texture, "given") != extractor_key(texture, "detect")
    assert extractor_key(texture, "detect") == extractor_key(texture)  # keys as before
    assert extractor_key(audio, "given") == extractor_key(audio, "detect")
    config = load_config(
        None, ["dataset.name=image-folder", f"dataset.root={tmp_path}", "dataset.faces=given"]
    )
    source = feature_source(config, TASKS["wang"], "cnn-fused")
    assert source.keys["wang_texture"] == extractor_key(texture, "given")


def test_face_detect_width_is_checked_and_keys_the_detecting_video_extractors() -> None:
    assert IngestConfig().face_detect_width == DETECT_WIDTH
    with pytest.raises(
        ConfigError, match=r"^ingest\.face_detect_width: must be at least 24 \(the Haar"
    ):
        load_config(None, [f"ingest.face_detect_width={MIN_DETECT_WIDTH - 1}"])
    texture, audio = build_extractor("wang_texture"), build_extractor("emodal_audio")
    assert extractor_key(texture, "detect", 640) != extractor_key(texture, "detect")
    assert extractor_key(texture, "detect", DETECT_WIDTH) == extractor_key(texture)  # as before
    assert extractor_key(audio, "detect", 640) == extractor_key(audio)
    # Faces that are given are not detected: the width plays no part in them.
    assert extractor_key(texture, "given", 640) == extractor_key(texture, "given")
    config = load_config(None, ["dataset.root=/clips", "ingest.face_detect_width=640"])
    source = feature_source(config, TASKS["wang"], "cnn-fused")
    assert source.keys["wang_texture"] == extractor_key(texture, "detect", 640)


# -- ingest: bad files, and the faces setting recomputes --------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stills(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Face images from generated clips' frames, in SFEW's layout and as a grouped CSV.

    5 actors x 8 emotions, one clip each, 5 stills per clip around the expression's apex:
    200 images (175 of Wang's seven emotions). The CSV groups each still with the clip it
    comes from, so folds never split one clip's near-identical stills.
    """
    base = tmp_path_factory.mktemp("stills")
    root = base / "sfew"
    folder_of = {emotion: folder for folder, emotion in SFEW_FOLDERS.items()} | {"calm": "Calm"}
    lines = ["path,label,group"]
    for actor in range(1, 6):
        for emotion, folder in folder_of.items():
            spec = ClipSpec(emotion, "02" if emotion != "neutral" else "01", "01", "01", actor)
            for k, frame in enumerate(_face_frames(spec, (18, 21, 24, 27, 30))):
                name = f"{spec.name}_{k}.png"
                _write_png(root / folder / name, frame)
                lines.append(f"{folder}/{name},{folder},{spec.name}")
    table = root / "stills.csv"
    table.write_text("\n".join(lines) + "\n")
    return {"base": base, "root": root, "csv": table}


def _stills_config(data: dict[str, Path], name: str, root: Path, *overrides: str):
    return load_config(
        None,
        [
            f"workspace={data['base'] / name}",
            f"store.uri={data['base'] / 'store'}",
            "dataset.name=image-folder",
            f"dataset.root={root}",
            *overrides,
        ],
    )


def test_ingest_of_stills_reports_bad_files_one_line_each_and_goes_on(
    stills: dict[str, Path], tmp_path: Path, local_ray: None
) -> None:
    root = tmp_path / "mixed"
    good = sorted((stills["root"] / "Happy").glob("*.png"))[:3]
    for path in good:
        _write_png(root / "Happy" / path.name, cv2.imread(str(path)))
    _write_png(root / "Contempt" / "c_1.png", cv2.imread(str(good[0])))
    (root / "Sad").mkdir()
    (root / "Sad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _write_png(root / "Sad" / "wall.png", np.full((120, 160, 3), 90, np.uint8))
    config = _stills_config({"base": tmp_path}, "ws", root, "tasks.wang.variants=[cnn-fused]")

    summary = ingest(config, progress=False)

    assert summary.clips == 5 and summary.ok == 3 and summary.failed == 2
    failed = dict(summary.failed_clips)
    assert failed["broken"] == "unreadable image: OpenCV can't decode the file (wang_texture)"
    assert failed["wall"] == "no face in the image (wang_texture)"
    assert len(summary.rejected_files) == 1 and "Contempt" in summary.rejected_files[0][1]
    lines = summary.lines()
    assert any("Contempt/: 1 image left out" in line for line in lines)
    features, left_out = feature_source(config, TASKS["wang"], "cnn-fused").load()
    assert sorted(features.clip_ids) == sorted(path.stem for path in good)
    assert dict(left_out) == {
        "broken": "wang_texture: unreadable image: OpenCV can't decode the file",
        "wall": "wang_texture: no face in the image",
    }

    # Warm: nothing is decoded again. faces=given is another key: every image is
    # recomputed, the wall too (taken as a face it gives features); back to detect: cached.
    assert ingest(config, progress=False).computed == 0
    given = _stills_config(
        {"base": tmp_path}, "ws", root, "tasks.wang.variants=[cnn-fused]", "dataset.faces=given"
    )
    summary = ingest(given, progress=False)
    assert summary.computed == 5 and summary.ok == 4
    assert dict(summary.failed_clips) == {"broken": failed["broken"]}
    given_faces = feature_source(given, TASKS["wang"], "cnn-fused").load()[0]
    detected = dict(zip(features.clip_ids, features.columns["wang_texture.lpq"], strict=True))
    for clip_id, lpq in zip(
        given_faces.clip_ids, given_faces.columns["wang_texture.lpq"], strict=True
    ):
        if clip_id in detected:  # the whole 160x120 frame is not the detected face
            assert not np.array_equal(lpq, detected[clip_id])
    assert ingest(config, progress=False).computed == 0


def test_another_face_detect_width_recomputes_the_faces_and_keeps_both(
    stills: dict[str, Path], tmp_path: Path, local_ray: None
) -> None:
    """Rows found at one detection width are never served for another: the width is in the
    video extractors' keys, so each setting has its own rows, and both stay cached."""
    root = tmp_path / "faces"
    for path in sorted((stills["root"] / "Happy").glob("*.png"))[:3]:
        _write_png(root / "Happy" / path.name, cv2.imread(str(path)))
    wide = _stills_config({"base": tmp_path}, "ws", root, "tasks.wang.variants=[cnn-fused]")
    # The 160-pixel-wide stills shrunk to 120 before the cascade runs: it finds each face
    # in another box than at full size (the default, 320, never enlarges them).
    narrow = _stills_config(
        {"base": tmp_path},
        "ws",
        root,
        "tasks.wang.variants=[cnn-fused]",
        "ingest.face_detect_width=120",
    )
    assert ingest(wide, progress=False).computed == 3
    assert ingest(narrow, progress=False).computed == 3
    assert ingest(wide, progress=False).computed == 0
    assert ingest(narrow, progress=False).computed == 0
    at_full_size = feature_source(wide, TASKS["wang"], "cnn-fused").load()[0]
    shrunk = feature_source(narrow, TASKS["wang"], "cnn-fused")
    assert (
        shrunk.keys["wang_texture"]
        != feature_source(wide, TASKS["wang"], "cnn-fused").keys["wang_texture"]
    )
    found, left_out = shrunk.load()
    assert len(found) == 3 and not left_out
    full = dict(zip(at_full_size.clip_ids, at_full_size.columns["wang_texture.lpq"], strict=True))
    assert sorted(full) == sorted(found.clip_ids)
    for clip_id, lpq in zip(found.clip_ids, found.columns["wang_texture.lpq"], strict=True):
        assert not np.array_equal(lpq, full[clip_id]), clip_id


# -- end to end: Wang's five rows and EMODal's image row from stills --------------------------


@pytest.mark.slow
def test_wang_five_variants_sweep_from_grouped_stills(
    stills: dict[str, Path], local_ray: None
) -> None:
    variants = ",".join(TASKS["wang"].variants)
    config = _stills_config(
        stills, "ws-wang", stills["csv"], *SMALL, f"tasks.wang.variants=[{variants}]"
    )
    summary = ingest(config, progress=False)
    assert summary.clips == 200 and summary.failed == 0 and not summary.rejected_files

    features = feature_source(config, TASKS["wang"], "cnn-fused").load()[0]
    assert len(features) == 175  # calm is not one of Wang's seven emotions
    # Raw histograms in the store: the PCA is the task's, fitted on training folds only.
    assert {a.shape for a in features.columns["wang_texture.lpq"]} == {(256,)}
    assert {a.shape for a in features.columns["wang_texture.phog"]} == {(168,)}
    assert len(set(features.actors)) == 35  # grouped by the clip each still comes from

    tables = sweep(config, progress=False)
    table = tables["wang"]
    assert list(table["variant"]) == list(TASKS["wang"].variants)
    assert (table["error"] == "").all(), table[["variant", "error"]].to_string()
    assert (table["n"] == 2).all() and table["uar"].between(0, 1).all()


@pytest.mark.slow
def test_emodal_video_sweeps_from_a_folder_of_stills(
    stills: dict[str, Path], local_ray: None
) -> None:
    config = _stills_config(
        stills, "ws-emodal", stills["root"], *SMALL, "tasks.emodal.variants=[video]"
    )
    summary = ingest(config, progress=False)
    assert summary.clips == 200 and summary.failed == 0 and not summary.rejected_files
    features = feature_source(config, TASKS["emodal"], "video").load()[0]
    assert len(features) == 100  # angry, happy, sad, neutral
    assert {a.shape for a in features.columns["emodal_face.face"]} == {(128, 128)}

    table = sweep(config, progress=False)["emodal"]
    assert list(table["variant"]) == ["video"]
    assert (table["error"] == "").all(), table[["variant", "error"]].to_string()
    assert (table["n"] == 2).all() and table["uar"].between(0, 1).all()

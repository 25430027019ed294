"""Dataset adapters, the SFEW feature table and the local-or-S3 file helpers."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import openpyxl
import pyarrow.fs as pafs
import pytest

from orchestrate.datasets import (
    DATASETS,
    Clip,
    list_clips,
    read_sfew_table,
)
from orchestrate.datasets.filesystem import (
    content_hash,
    list_files,
    local_copy,
    open_input,
    read_bytes,
    resolve_filesystem,
)
from orchestrate.datasets.ravdess import parse_ravdess_name

# The moto_s3 fixture (a real S3 HTTP server on 127.0.0.1).


def touch(root: Path, *relative_paths: str) -> None:
    """Create small files: listing reads names only, never content."""
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not media: " + relative.encode())


def by_id(clips: list[Clip]) -> dict[str, Clip]:
    return {clip.clip_id: clip for clip in clips}


# -- registry --------------------------------------------------------------------------------


def test_registry_names_and_errors(tmp_path: Path) -> None:
    # Adapters are data: the stages read what each yields, never its name.
    assert {name: a.yields for name, a in DATASETS.items()} == {
        "ravdess": "clips",
        "crema-d": "clips",
        "image-folder": "clips",
        "sfew-table": "feature-table",
        "feature-table": "feature-table",
    }
    assert DATASETS["sfew-table"].stored_as.arrays == ("lpq", "phog")
    with pytest.raises(ValueError, match="unknown dataset 'iemocap'.*ravdess, crema-d"):
        list_clips("iemocap", str(tmp_path))
    with pytest.raises(ValueError, match="yields a feature-table, not clips"):
        list_clips("sfew-table", str(tmp_path))
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match="no-such-folder: no such directory"):
        list_clips("ravdess", str(missing))
    touch(tmp_path, "03-01-01-01-01-01-01.wav")
    with pytest.raises(NotADirectoryError, match="is a file"):
        list_clips("ravdess", str(tmp_path / "03-01-01-01-01-01-01.wav"))


# -- RAVDESS ---------------------------------------------------------------------------------


def test_ravdess_full_av_clip(shared_data: Path) -> None:
    listing = list_clips("ravdess", str(shared_data / "ravdess" / "av"))
    video = str(shared_data / "ravdess" / "av" / "01-01-01-01-01-01-01.mp4")
    assert listing.rejected == []
    assert listing.clips == [
        Clip("01-01-01-01-01-01-01", "ravdess", "01", "neutral", video_uri=video, audio_uri=video)
    ]


def test_ravdess_audio_only_clips(shared_data: Path) -> None:
    listing = list_clips("ravdess", str(shared_data / "ravdess" / "audio"))
    assert listing.rejected == [] and listing.skipped == {}  # the speech channel only
    assert len(listing.clips) == 240
    assert all(clip.video_uri is None and clip.audio_uri for clip in listing.clips)
    assert all(clip.audio_uri.endswith(clip.clip_id + ".wav") for clip in listing.clips)
    assert [clip.clip_id for clip in listing.clips] == sorted({c.clip_id for c in listing.clips})
    assert Counter(clip.actor for clip in listing.clips) == {
        a: 60 for a in ("01", "02", "03", "04")
    }
    # Per actor: neutral has one intensity (2 statements x 2 repetitions), others two.
    expected = {"neutral": 16} | {
        name: 32 for name in ("calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    }
    assert Counter(clip.label for clip in listing.clips) == expected
    # Each file's folder agrees with the actor read from its name.
    assert all(f"Actor_{clip.actor}/" in clip.audio_uri for clip in listing.clips)


SONG_LEFT_OUT = "files of the song channel left out (dataset.vocal_channel=speech)"


def test_ravdess_lists_one_clip_per_recording_from_its_best_source(tmp_path: Path) -> None:
    touch(
        tmp_path,
        # Recording 01-05-01-01-01-03 shipped all three ways: the full-AV file is its clip.
        "av/Actor_03/01-01-05-01-01-01-03.mp4",
        "video/Actor_03/02-01-05-01-01-01-03.mp4",
        "audio/Actor_03/03-01-05-01-01-01-03.wav",
        # Full AV and audio-only, no video-only: still the full-AV file.
        "av/Actor_05/01-01-04-01-02-01-05.mp4",
        "audio/Actor_05/03-01-04-01-02-01-05.wav",
        # Video-only + audio-only: one paired clip.
        "video/Actor_03/02-01-05-01-01-02-03.mp4",
        "audio/Actor_03/03-01-05-01-01-02-03.wav",
        # Lone video-only, lone audio-only.
        "video/Actor_10/02-01-03-02-01-02-10.mp4",
        "audio/Actor_24/03-01-08-02-02-02-24.wav",
        # Song channel: left out under the default vocal channel (speech), and counted.
        "video/Actor_10/02-02-03-02-01-02-10.mp4",
        "audio/Actor_10/03-02-03-02-01-02-10.wav",
        "README.txt",
        "Actor_03/notes.csv",
        ".hidden/03-01-01-01-01-01-01.wav",
        "._03-01-01-01-01-01-01.wav",
    )
    listing = list_clips("ravdess", str(tmp_path))
    clips = by_id(listing.clips)
    assert list(clips) == [
        "01-01-04-01-02-01-05",
        "01-01-05-01-01-01-03",
        "02+03-01-05-01-01-02-03",
        "02-01-03-02-01-02-10",
        "03-01-08-02-02-02-24",
    ]
    # One clip per recording: no take can land on both sides of a split.
    recordings = [clip_id.split("-", 1)[1] for clip_id in clips]
    assert len(set(recordings)) == len(recordings)
    full = clips["01-01-05-01-01-01-03"]
    full_uri = str(tmp_path / "av/Actor_03/01-01-05-01-01-01-03.mp4")
    assert full.video_uri == full.audio_uri == full_uri
    assert (full.actor, full.label) == ("03", "angry")
    paired = clips["02+03-01-05-01-01-02-03"]
    assert paired.video_uri == str(tmp_path / "video/Actor_03/02-01-05-01-01-02-03.mp4")
    assert paired.audio_uri == str(tmp_path / "audio/Actor_03/03-01-05-01-01-02-03.wav")
    assert (paired.actor, paired.label) == ("03", "angry")
    lone_video = clips["02-01-03-02-01-02-10"]
    assert (lone_video.actor, lone_video.label, lone_video.audio_uri) == ("10", "happy", None)
    lone_audio = clips["03-01-08-02-02-02-24"]
    assert (lone_audio.actor, lone_audio.label, lone_audio.video_uri) == ("24", "surprised", None)

    # The files a better source replaced are reported, not dropped silently.
    other_full = str(tmp_path / "av/Actor_05/01-01-04-01-02-01-05.mp4")
    assert [(r.uri, r.reason) for r in listing.rejected] == [
        (
            str(tmp_path / "audio/Actor_03/03-01-05-01-01-01-03.wav"),
            f"03-01-05-01-01-01-03.wav: recording 01-05-01-01-01-03 already listed from {full_uri}",
        ),
        (
            str(tmp_path / "audio/Actor_05/03-01-04-01-02-01-05.wav"),
            f"03-01-04-01-02-01-05.wav: recording 01-04-01-02-01-05 already listed from "
            f"{other_full}",
        ),
        (
            str(tmp_path / "video/Actor_03/02-01-05-01-01-01-03.mp4"),
            f"02-01-05-01-01-01-03.mp4: recording 01-05-01-01-01-03 already listed from {full_uri}",
        ),
    ]
    assert listing.skipped == {SONG_LEFT_OUT: 2}


def test_ravdess_vocal_channel_picks_speech_song_or_all(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "01-01-03-01-01-01-01.mp4",  # speech
        "03-01-04-01-01-01-01.wav",  # speech
        "01-02-03-01-01-01-01.mp4",  # song, same codes otherwise: another recording
        "03-02-05-02-02-02-02.wav",  # song
        "03-02-05-02-02-02-99.wav",  # song, but a bad name: rejected whatever the channel
    )
    speech = list_clips("ravdess", str(tmp_path))
    assert [clip.clip_id for clip in speech.clips] == [
        "01-01-03-01-01-01-01",
        "03-01-04-01-01-01-01",
    ]
    assert speech.skipped == {SONG_LEFT_OUT: 2}
    song = list_clips("ravdess", str(tmp_path), vocal_channel="song")
    assert [clip.clip_id for clip in song.clips] == ["01-02-03-01-01-01-01", "03-02-05-02-02-02-02"]
    assert song.skipped == {"files of the speech channel left out (dataset.vocal_channel=song)": 2}
    every = list_clips("ravdess", str(tmp_path), vocal_channel="all")
    assert [clip.clip_id for clip in every.clips] == sorted(
        clip.clip_id for clip in speech.clips + song.clips
    )
    assert every.skipped == {}
    for listing in (speech, song, every):
        assert [Path(r.uri).name for r in listing.rejected] == ["03-02-05-02-02-02-99.wav"]
    with pytest.raises(ValueError, match="vocal channel 'singing' is not one of speech, song, all"):
        list_clips("ravdess", str(tmp_path), vocal_channel="singing")


def test_crema_d_has_no_vocal_channel_to_pick(shared_data: Path) -> None:
    root = str(shared_data / "crema-d")
    speech = list_clips("crema-d", root)
    assert list_clips("crema-d", root, vocal_channel="song") == speech
    assert speech.skipped == {}


BAD_RAVDESS_NAMES = {
    "01-01-09-01-01-01-01.mp4": "01-01-09-01-01-01-01.mp4: emotion code 09 is not one of 01-08",
    "04-01-01-01-01-01-01.mp4": "modality code 04 is not one of 01-03",
    "03-03-02-01-01-01-01.wav": "vocal channel code 03 is not one of 01/02",
    "03-01-02-03-01-01-01.wav": "intensity code 03 is not one of 01/02",
    "03-01-01-02-01-01-01.wav": "neutral (emotion 01) has no strong intensity (02)",
    "03-01-02-01-00-01-01.wav": "statement code 00 is not one of 01/02",
    "03-01-02-01-01-03-01.wav": "repetition code 03 is not one of 01/02",
    "03-01-02-01-01-01-25.wav": "actor code 25 is not one of 01-24",
    "03-01-02-01-01-01-01.mp4": "modality 03 (audio-only) needs an audio file",
    "01-01-02-01-01-01-01.wav": "modality 01 (full audio-visual) needs a video container",
    "02-01-02-01-01-01-01.mp3": "modality 02 (video-only) needs a video container",
    "03-01-02-01-01-01.wav": "name is not MM-VV-EE-II-SS-RR-AA",
    "3-1-2-1-1-1-1.wav": "name is not MM-VV-EE-II-SS-RR-AA",
    "clip.mov": "name is not MM-VV-EE-II-SS-RR-AA",
}


def test_ravdess_bad_names_are_reported_not_guessed(tmp_path: Path) -> None:
    touch(tmp_path, *BAD_RAVDESS_NAMES, "03-01-02-01-01-01-01.wav", "03-01-02-01-01-01-01.txt")
    touch(tmp_path, "copy/03-01-02-01-01-01-01.wav", "03-01-02-01-01-01-01.mp3")
    listing = list_clips("ravdess", str(tmp_path))
    assert [clip.clip_id for clip in listing.clips] == ["03-01-02-01-01-01-01"]
    assert listing.clips[0].audio_uri == str(tmp_path / "03-01-02-01-01-01-01.mp3")
    assert [r.uri for r in listing.rejected] == sorted(r.uri for r in listing.rejected)
    assert all("\n" not in r.reason for r in listing.rejected)
    reasons = {Path(r.uri).relative_to(tmp_path).as_posix(): r.reason for r in listing.rejected}
    for name, reason in BAD_RAVDESS_NAMES.items():
        assert reason in reasons.pop(name), name
    # Later copies of the listed recording (another container, another folder) are reported.
    assert reasons == {
        "03-01-02-01-01-01-01.wav": "03-01-02-01-01-01-01.wav: same recording as "
        f"{listing.clips[0].audio_uri}, which is listed",
        "copy/03-01-02-01-01-01-01.wav": "03-01-02-01-01-01-01.wav: same recording as "
        f"{listing.clips[0].audio_uri}, which is listed",
    }


def test_parse_ravdess_name_joins_every_problem() -> None:
    with pytest.raises(ValueError) as raised:
        parse_ravdess_name("05-01-09-01-01-01-30.wav")
    assert str(raised.value) == (
        "05-01-09-01-01-01-30.wav: modality code 05 is not one of 01-03; "
        "emotion code 09 is not one of 01-08; actor code 30 is not one of 01-24"
    )
    parsed = parse_ravdess_name("03-02-06-02-02-01-12.WAV")
    assert (parsed.label, parsed.actor, parsed.recording_id) == (
        "fearful",
        "12",
        "02-06-02-02-01-12",
    )


# -- CREMA-D ---------------------------------------------------------------------------------


def test_crema_d_flv_clips(shared_data: Path) -> None:
    listing = list_clips("crema-d", str(shared_data / "crema-d"))
    assert listing.rejected == []
    assert [clip.label for clip in listing.clips] == [
        "angry",
        "disgust",
        "fearful",
        "happy",
        "neutral",
        "sad",
    ]
    for clip in listing.clips:
        assert clip.actor == "1001" and clip.dataset == "crema-d"
        assert (
            clip.video_uri == clip.audio_uri == str(shared_data / "crema-d" / f"{clip.clip_id}.flv")
        )


def test_crema_d_pairing_encodings_and_bad_names(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "VideoFlash/1001_DFA_ANG_XX.flv",
        "VideoMp4/1001_DFA_ANG_XX.mp4",
        "AudioWAV/1001_DFA_ANG_XX.wav",
        "AudioMP3/1001_DFA_ANG_XX.mp3",
        "VideoMp4/1091_IEO_HAP_HI.mp4",
        "AudioMP3/1045_TIE_SAD_LO.mp3",
        "AudioMP3/1092_TIE_SAD_LO.mp3",
        "AudioWAV/1002_dfa_XYZ_QQ.wav",
        "1003_DFA_NEU_XX.avi",
        "1003_DFA_NEU.wav",
        "summary.csv",
    )
    listing = list_clips("crema-d", str(tmp_path))
    clips = by_id(listing.clips)
    assert list(clips) == ["1001_DFA_ANG_XX", "1045_TIE_SAD_LO", "1091_IEO_HAP_HI"]
    assert clips["1001_DFA_ANG_XX"].video_uri == str(tmp_path / "VideoFlash/1001_DFA_ANG_XX.flv")
    assert clips["1001_DFA_ANG_XX"].audio_uri == str(tmp_path / "AudioWAV/1001_DFA_ANG_XX.wav")
    mp4 = str(tmp_path / "VideoMp4/1091_IEO_HAP_HI.mp4")
    assert (clips["1091_IEO_HAP_HI"].video_uri, clips["1091_IEO_HAP_HI"].audio_uri) == (mp4, mp4)
    assert clips["1091_IEO_HAP_HI"].label == "happy"
    assert clips["1045_TIE_SAD_LO"].video_uri is None
    assert clips["1045_TIE_SAD_LO"].actor == "1045"

    reasons = {Path(rejected.uri).name: rejected.reason for rejected in listing.rejected}
    assert set(reasons) == {
        "1001_DFA_ANG_XX.mp4",
        "1001_DFA_ANG_XX.mp3",
        "1092_TIE_SAD_LO.mp3",
        "1002_dfa_XYZ_QQ.wav",
        "1003_DFA_NEU_XX.avi",
        "1003_DFA_NEU.wav",
    }
    assert "another copy or encoding of clip 1001_DFA_ANG_XX" in reasons["1001_DFA_ANG_XX.mp4"]
    assert reasons["1092_TIE_SAD_LO.mp3"].endswith("actor 1092 is not one of 1001-1091")
    assert reasons["1002_dfa_XYZ_QQ.wav"] == (
        "1002_dfa_XYZ_QQ.wav: sentence code dfa is not three uppercase letters; emotion code "
        "XYZ is not one of ANG DIS FEA HAP NEU SAD; intensity code QQ is not one of LO MD HI XX"
    )
    assert ".avi is not a CREMA-D video (.flv .mp4) or audio" in reasons["1003_DFA_NEU_XX.avi"]
    assert "is not AAAA_SSS_EEE_II" in reasons["1003_DFA_NEU.wav"]


# -- SFEW table ------------------------------------------------------------------------------


def test_sfew_table_real_rows_and_rejections(shared_data: Path) -> None:
    uri = str(shared_data / "sfew" / "SFEW.xlsx")
    table = read_sfew_table(uri)
    assert list(table.rows.columns) == ["clip_id", "label", "group", "lpq", "phog"]
    # 675 data rows: one without PHOG values, and one image listed twice with conflicting
    # labels (fearful in row 214, surprised in row 612, identical features) rejected on both.
    assert len(table.rows) == 672
    assert [(r.uri, r.reason) for r in table.rejected] == [
        (f"{uri}#row 207", "row 207 (Hangover_001949614_00000089): missing phog_1, phog_2, "
         "phog_3, phog_4, phog_5"),
        (f"{uri}#row 214", "row 214 (HarryPotter_Deathly_Hallows_1_001610960_00000028): image "
         "also labelled in row 612 as surprised (conflicting labels)"),
        (f"{uri}#row 612", "row 612 (HarryPotter_Deathly_Hallows_1_001610960_00000028): image "
         "also labelled in row 214 as fearful (conflicting labels)"),
    ]  # fmt: skip
    assert table.rows["label"].value_counts().to_dict() == {
        "angry": 100,
        "disgust": 75,
        "fearful": 98,
        "happy": 100,
        "neutral": 100,
        "sad": 100,
        "surprised": 99,
    }
    assert table.rows["clip_id"].is_unique
    first = table.rows.iloc[0]
    assert (first["clip_id"], first["label"], first["group"]) == (
        "Airheads_000519240_00000005",
        "angry",
        "Airheads",
    )
    np.testing.assert_allclose(first["lpq"][0], -0.00081724, rtol=1e-5)
    groups = set(table.rows["group"])
    assert {"HarryPotter_Deathly_Hallows_1", "50_50", "OceansThirteen", "IAmSam"} <= groups
    lpq, phog = table.feature_matrices()
    assert lpq.shape == phog.shape == (672, 5)
    assert lpq.dtype == phog.dtype == np.float32
    assert np.isfinite(lpq).all() and np.isfinite(phog).all()


def write_sfew(path: Path, header: list[object], rows: list[list[object]]) -> str:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in [header, *rows]:
        sheet.append(row)
    workbook.save(path)
    return str(path)


SFEW_HEADER = [None, "label", "First 5 PCs of LPQ", *[None] * 4, "First 5 PCs of PHOG", *[None] * 4]


def test_sfew_table_bad_rows_are_rejected(tmp_path: Path) -> None:
    good = [0.1, 0.2, 0.3, 0.4, 0.5]
    uri = write_sfew(
        tmp_path / "table.xlsx",
        SFEW_HEADER,
        [
            ["Juno_000100_00000001.mat", 4, *good, *good],
            ["Juno_000100_00000002.mat", 9, *good, *good],
            ["Juno_000100_00000003.mat", 2, 0.1, "abc", 0.3, 0.4, 0.5, *good],
            ["Juno_000100_00000004.mat", None, *good, None, None, 0.3, 0.4, 0.5],
            [None] * 12,
            ["Juno_000100_00000001.mat", 4, *good, *good],
            ["no_movie_name.mat", 1, *good, *good],
            ["Town_000200_00000001.mat", "7", *good, *good],
        ],
    )
    table = read_sfew_table(uri)
    assert table.rows["clip_id"].to_list() == ["Juno_000100_00000001", "Town_000200_00000001"]
    assert table.rows["label"].to_list() == ["happy", "surprised"]
    assert table.rows["group"].to_list() == ["Juno", "Town"]
    assert [(r.uri.rsplit("#", 1)[1], r.reason) for r in table.rejected] == [
        ("row 3", "row 3 (Juno_000100_00000002): label code 9 is not one of 1-7"),
        ("row 4", "row 4 (Juno_000100_00000003): not a finite number: lpq_2='abc'"),
        ("row 5", "row 5 (Juno_000100_00000004): missing label; missing phog_1, phog_2"),
        ("row 7", "row 7 (Juno_000100_00000001): duplicate of row 2"),
        ("row 8", "row 8 (no_movie_name): image name no_movie_name.mat is not "
         "<Movie>_<timestamp>_<frame>"),
    ]  # fmt: skip


def test_sfew_table_wrong_layout_is_one_clear_error(tmp_path: Path) -> None:
    uri = write_sfew(tmp_path / "other.xlsx", ["name", "emotion", "x1", "x2"], [["a", 1, 2, 3]])
    with pytest.raises(ValueError) as raised:
        read_sfew_table(uri)
    message = str(raised.value)
    assert message.startswith(f"{uri}: not the SFEW.xlsx layout") and "\n" not in message
    assert "B='emotion'" in message
    not_excel = tmp_path / "SFEW.xlsx"
    not_excel.write_text("image,label\n")
    with pytest.raises(ValueError, match="SFEW.xlsx: not a readable .xlsx workbook"):
        read_sfew_table(str(not_excel))
    with pytest.raises(FileNotFoundError, match="missing.xlsx: no such file"):
        read_sfew_table(str(tmp_path / "missing.xlsx"))


# -- filesystem helpers ----------------------------------------------------------------------


def test_local_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = tmp_path / "clips" / "03-01-01-01-01-01-01.wav"
    clip.parent.mkdir()
    content = bytes(range(256)) * 5000  # > one hashing chunk
    clip.write_bytes(content)
    monkeypatch.chdir(tmp_path)
    filesystem, path = resolve_filesystem("clips")
    assert isinstance(filesystem, pafs.LocalFileSystem) and path == str(tmp_path / "clips")
    assert list_files("clips") == [str(clip)]
    assert read_bytes(str(clip)) == content
    with open_input(clip.as_uri()) as stream:
        stream.seek(256)
        assert stream.read(4) == bytes(range(4))
    with local_copy(str(clip)) as local:
        assert local == clip  # local files are used in place, never copied
    assert clip.exists()
    assert content_hash(str(clip)) == hashlib.sha256(content).hexdigest()
    with pytest.raises(FileNotFoundError, match="absent.wav: no such file"):
        content_hash(str(tmp_path / "absent.wav"))
    with pytest.raises(ValueError, match="unknown key.*access_key.*allowed: endpoint_url, region"):
        resolve_filesystem("s3://bucket/x", {"access_key": "AKIA"})
    with pytest.raises(ValueError, match="only local paths, file:// and s3://"):
        resolve_filesystem("gs://bucket/x")
    with pytest.raises(ValueError, match="needs a bucket"):
        resolve_filesystem("s3://")
    with pytest.raises(ValueError, match="endpoint_url.*is not http"):
        resolve_filesystem("s3://bucket/x", {"endpoint_url": "127.0.0.1:5000"})


def test_s3_listing_copy_and_hash(moto_s3, shared_data: Path, tmp_path: Path) -> None:
    moto_s3.client.create_bucket(Bucket="corpus")
    real_wav = shared_data / "ravdess" / "audio" / "Actor_01" / "03-01-05-02-01-01-01.wav"
    wav_uri = moto_s3.upload(real_wav, "corpus", "ravdess/Actor_01/03-01-05-02-01-01-01.wav")
    moto_s3.put("corpus", "ravdess/Actor_01/02-01-05-02-01-01-01.mp4", b"video")
    moto_s3.put("corpus", "ravdess/Actor_02/01-01-03-01-02-01-02.mp4", b"av")
    moto_s3.put("corpus", "ravdess/Actor_02/01-01-03-01-02-01-99.mp4", b"bad actor")
    moto_s3.put("corpus", "ravdess/README.md", b"readme")
    moto_s3.put("corpus", "ravdess-other/03-01-01-01-01-01-01.wav", b"outside the prefix")
    options = moto_s3.storage_options

    listing = list_clips("ravdess", "s3://corpus/ravdess", options)
    assert listing.clips == [
        Clip(
            "01-01-03-01-02-01-02",
            "ravdess",
            "02",
            "happy",
            video_uri="s3://corpus/ravdess/Actor_02/01-01-03-01-02-01-02.mp4",
            audio_uri="s3://corpus/ravdess/Actor_02/01-01-03-01-02-01-02.mp4",
        ),
        Clip(
            "02+03-01-05-02-01-01-01",
            "ravdess",
            "01",
            "angry",
            video_uri="s3://corpus/ravdess/Actor_01/02-01-05-02-01-01-01.mp4",
            audio_uri=wav_uri,
        ),
    ]
    assert [(r.uri, r.reason) for r in listing.rejected] == [
        (
            "s3://corpus/ravdess/Actor_02/01-01-03-01-02-01-99.mp4",
            "01-01-03-01-02-01-99.mp4: actor code 99 is not one of 01-24",
        )
    ]
    with pytest.raises(FileNotFoundError, match="s3://corpus/nothing-here: no such directory"):
        list_clips("ravdess", "s3://corpus/nothing-here", options)

    assert content_hash(wav_uri, options) == content_hash(str(real_wav))
    with local_copy(wav_uri, options) as local:
        assert local.suffix == ".wav" and local.parent != real_wav.parent
        assert local.read_bytes() == real_wav.read_bytes()
        assert content_hash(str(local)) == content_hash(str(real_wav))
    assert not local.exists()  # the download is removed after use
    with open_input(wav_uri, options) as stream:
        assert stream.read(4) == b"RIFF"
    with pytest.raises(FileNotFoundError, match="s3://corpus/absent.wav: no such file"):
        read_bytes("s3://corpus/absent.wav", options)

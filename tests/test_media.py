"""Decoding clips: face crops from real RAVDESS / CREMA-D videos, audio tracks, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile

from orchestrate.datasets.base import Clip
from orchestrate.extractors.base import AudioTrack, ExtractionError
from orchestrate.faces import HaarFaceDetector, crop_face
from orchestrate.media import decode_audio, decode_clip

RAVDESS_MP4 = "ravdess/av/01-01-01-01-01-01-01.mp4"
CREMA_FLV = "crema-d/1001_DFA_ANG_XX.flv"
RAVDESS_WAV = "ravdess/audio/Actor_01/03-01-05-01-01-01-01.wav"


def av_clip(path: Path | str, clip_id: str = "clip") -> Clip:
    return Clip(clip_id, "test", "01", "neutral", str(path), str(path))


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """A video-only mp4 (MPEG-4 part 2, no audio stream) of BGR ``frames``."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


class NoFaceDetector:
    """For tests about the container, not the faces: skips the cascade's cost."""

    def largest_face(self, frame_bgr: np.ndarray) -> None:
        return None


@pytest.fixture(scope="module")
def detector() -> HaarFaceDetector:
    return HaarFaceDetector()


@pytest.fixture(scope="module")
def ravdess_media(shared_data: Path, detector: HaarFaceDetector):
    return decode_clip(
        av_clip(shared_data / RAVDESS_MP4), need_video=True, need_audio=True, detector=detector
    )


def test_ravdess_mp4_gives_faces_of_most_frames_and_48k_audio(ravdess_media) -> None:
    faces, audio = ravdess_media.faces, ravdess_media.audio
    # 99 frames declared; OpenCV's demuxer yields 98 of them.
    assert 95 <= len(faces.crops) <= 99
    assert faces.frame_indices == list(range(len(faces.crops)))
    assert faces.fps == pytest.approx(29.97, abs=0.01)
    assert faces.frames_with_face >= 0.9 * len(faces.crops)
    crop = next(c for c in faces.crops if c is not None)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    assert crop.std() > 10  # a face, not a flat patch

    assert audio.sample_rate == 48000
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.seconds == pytest.approx(3.30, abs=0.05)
    assert 0 < np.abs(audio.samples).max() <= 1.0
    assert audio.samples.std() > 1e-4


def test_crema_d_flv_decodes_mp3_audio_and_faces(shared_data: Path, detector) -> None:
    media = decode_clip(
        av_clip(shared_data / CREMA_FLV), need_video=True, need_audio=True, detector=detector
    )
    assert media.audio.sample_rate == 44100
    assert media.audio.seconds == pytest.approx(2.27, abs=0.1)
    assert media.audio.samples.std() > 1e-3
    assert len(media.faces.crops) == 67
    assert media.faces.frames_with_face >= 60


def test_audio_only_wav_clip(shared_data: Path, detector) -> None:
    wav = shared_data / RAVDESS_WAV
    clip = Clip("wav", "ravdess", "01", "angry", None, str(wav))
    media = decode_clip(clip, need_video=False, need_audio=True, detector=detector)
    assert media.faces is None
    assert media.audio.sample_rate == 48000
    reference, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    np.testing.assert_allclose(media.audio.samples, reference.mean(axis=1), atol=1e-6)
    with pytest.raises(ExtractionError, match="no video stream"):
        decode_clip(clip, need_video=True, need_audio=True, detector=detector)


def test_wav_named_as_video_has_no_video_stream(shared_data: Path, detector) -> None:
    clip = av_clip(shared_data / RAVDESS_WAV)
    with pytest.raises(ExtractionError, match="^no video stream in the file$"):
        decode_clip(clip, need_video=True, need_audio=False, detector=detector)


def test_frame_stride_detects_every_nth_frame(shared_data: Path, detector) -> None:
    media = decode_clip(
        av_clip(shared_data / CREMA_FLV),
        need_video=True,
        need_audio=False,
        detector=detector,
        crop_size=48,
        frame_stride=4,
    )
    assert media.audio is None
    assert media.faces.frame_indices == list(range(0, 67, 4))
    assert media.faces.frame_stride == 4
    assert all(c is None or c.shape == (48, 48, 3) for c in media.faces.crops)


def test_stereo_is_mixed_to_mono_by_mean(tmp_path: Path) -> None:
    rate = 16000
    t = np.arange(rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], 1), rate)
    audio = decode_audio(tmp_path / "stereo.wav")
    assert audio.sample_rate == rate
    np.testing.assert_allclose(audio.samples, left / 2, atol=1e-4)


def test_at_rate_resamples_once_per_rate() -> None:
    rate = 48000
    tone = np.sin(2 * np.pi * 300 * np.arange(rate) / rate).astype(np.float32)
    audio = AudioTrack(tone, rate)
    assert audio.at_rate(rate) is audio.samples
    low = audio.at_rate(16000)
    assert low.shape == (16000,) and low.dtype == np.float32
    assert audio.at_rate(16000) is low  # cached
    # Still a 300 Hz tone: the spectrum peaks at bin 300 of a 1 s signal.
    assert np.argmax(np.abs(np.fft.rfft(low))) == 300


# --- bad input: each gives ExtractionError with a one-line reason ------------------------


def test_garbage_file_is_corrupt(tmp_path: Path, detector) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    for need_video in (True, False):
        with pytest.raises(ExtractionError, match="corrupt or unreadable") as error:
            decode_clip(
                av_clip(path), need_video=need_video, need_audio=not need_video, detector=detector
            )
        assert "\n" not in str(error.value) and str(tmp_path) not in str(error.value)


def test_truncated_mp4_is_reported(shared_data: Path, tmp_path: Path) -> None:
    detector = NoFaceDetector()
    data = (shared_data / RAVDESS_MP4).read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(ExtractionError, match=r"truncated video: decoded \d+ of the 99 frames"):
        decode_clip(av_clip(path), need_video=True, need_audio=False, detector=detector)
    with pytest.raises(ExtractionError, match="truncated audio"):
        decode_clip(av_clip(path), need_video=False, need_audio=True, detector=detector)


def test_mp4_overwritten_in_the_middle_is_corrupt(shared_data: Path, tmp_path: Path) -> None:
    detector = NoFaceDetector()
    data = bytearray((shared_data / RAVDESS_MP4).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200_000] = np.random.default_rng(1).bytes(200_000)
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(ExtractionError, match="corrupt"):
        decode_clip(av_clip(path), need_video=True, need_audio=False, detector=detector)
    with pytest.raises(ExtractionError, match="corrupt"):
        decode_clip(av_clip(path), need_video=False, need_audio=True, detector=detector)


def test_video_without_audio_stream(tmp_path: Path, detector) -> None:
    path = write_video(tmp_path / "silent_film.mp4", [np.full((120, 160, 3), 90, np.uint8)] * 10)
    media = decode_clip(av_clip(path), need_video=True, need_audio=False, detector=detector)
    assert len(media.faces.crops) == 10 and media.faces.frames_with_face == 0
    with pytest.raises(ExtractionError, match="^no audio stream in the file$"):
        decode_clip(av_clip(path), need_video=True, need_audio=True, detector=detector)


def test_missing_file_and_missing_uri(tmp_path: Path, detector) -> None:
    with pytest.raises(ExtractionError, match="^video file not found$"):
        decode_clip(
            av_clip(tmp_path / "nowhere.mp4"), need_video=True, need_audio=False, detector=detector
        )
    video_only = Clip("v", "test", "01", "neutral", str(tmp_path / "v.mp4"), None)
    with pytest.raises(ExtractionError, match="no audio stream: the clip has no audio file"):
        decode_clip(video_only, need_video=False, need_audio=True, detector=detector)


def test_silent_audio_decodes(tmp_path: Path, detector) -> None:
    # Silence is not a decode error: the audio extractors decide (see test_extractors).
    soundfile.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    clip = Clip("s", "test", "01", "neutral", None, str(tmp_path / "silence.wav"))
    media = decode_clip(clip, need_video=False, need_audio=True, detector=detector)
    assert media.audio.samples.shape == (16000,) and not media.audio.samples.any()


# --- faces ---------------------------------------------------------------------------------


def test_haar_finds_every_ravdess_actor_face(shared_data: Path, detector) -> None:
    found = 0
    for png in sorted((shared_data / "ravdess" / "faces").glob("Actor_*.png")):
        frame = cv2.imread(str(png))
        box = detector.largest_face(frame)
        if box is not None:
            found += 1
            x, y, w, h = box
            assert 0 <= x and 0 <= y and x + w <= frame.shape[1] and y + h <= frame.shape[0]
            assert w >= 0.2 * frame.shape[0]
    assert found >= 22


def test_haar_detector_on_blank_frame_and_downscaling(shared_data: Path) -> None:
    detector = HaarFaceDetector(detect_width=160)
    assert detector.largest_face(np.zeros((360, 480, 3), np.uint8)) is None
    frame = cv2.imread(str(shared_data / "ravdess" / "faces" / "Actor_01.png"))
    big = cv2.resize(frame, None, fx=3, fy=3)
    small_box = np.array(detector.largest_face(frame))
    big_box = np.array(detector.largest_face(big))
    # Detection ran on the same 160-wide copy: the box scales with the frame.
    np.testing.assert_allclose(big_box, 3 * small_box, atol=6)


def test_haar_detector_is_picklable_and_validates() -> None:
    detector = HaarFaceDetector(detect_width=240)
    assert pickle.loads(pickle.dumps(detector)) == detector
    with pytest.raises(ValueError, match="scale_factor"):
        HaarFaceDetector(scale_factor=1.0)
    with pytest.raises(ValueError, match="min_size_fraction"):
        HaarFaceDetector(min_size_fraction=1.5)


def test_crop_face_is_square_and_stays_inside_the_frame() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :, 0] = np.arange(200, dtype=np.uint8)[None, :]  # x coordinate in blue
    crop = crop_face(frame, (170, 10, 40, 40), size=32, margin=0.25)
    assert crop.shape == (32, 32, 3)
    # Near the right edge the 60-pixel square is shifted left to end at the frame's edge.
    assert crop[:, -1, 0].min() >= 195 and crop[:, 0, 0].max() <= 145
    whole = crop_face(frame, (0, 0, 200, 100), size=16)
    assert whole.shape == (16, 16, 3)  # a box larger than the frame shrinks to fit

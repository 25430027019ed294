"""The generated demo corpus: names, containers, detectable faces, determinism and design."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from orchestrate.corpus import ClipSpec, corpus_clips, synthesize_clip, synthesize_corpus
from orchestrate.corpus.faces import FRAME_HEIGHT, FRAME_WIDTH
from orchestrate.corpus.synth import FPS
from orchestrate.emotions import EMOTIONS, RAVDESS_EMOTION_CODES

RAVDESS_AV_SPEECH = re.compile(r"^01-01-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)\.mp4$")
SEED = 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two actors, one clip per emotion, made by two worker processes."""
    out = tmp_path_factory.mktemp("synth")
    return synthesize_corpus(
        out, actors=2, clips_per_emotion=1, seed=SEED, workers=2, progress=False
    )


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """The first audio stream as mono float samples, and its sample rate."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    return np.concatenate(frames, axis=1).mean(axis=0), rate


def decode_gray_frames(path: Path) -> list[np.ndarray]:
    """Every video frame, via OpenCV (as the ingest stage reads them), in grayscale."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    capture.release()
    return frames


def median_f0(samples: np.ndarray, rate: int) -> float:
    """Median pitch (Hz) of the loud 40 ms frames, by autocorrelation peak picking."""
    frame, hop = int(0.04 * rate), int(0.02 * rate)
    lag_min, lag_max = rate // 400, rate // 70
    level = np.sqrt(np.mean(samples**2))
    pitches = []
    for start in range(0, samples.size - frame, hop):
        chunk = samples[start : start + frame]
        if np.sqrt(np.mean(chunk**2)) < level:  # only the vowels' loud cores
            continue
        chunk = chunk - chunk.mean()
        autocorr = np.correlate(chunk, chunk, "full")[frame - 1 :]
        lag = lag_min + int(np.argmax(autocorr[lag_min:lag_max]))
        if autocorr[lag] > 0.5 * autocorr[0]:
            pitches.append(rate / lag)
    assert pitches, "no voiced frames found"
    return float(np.median(pitches))


def by_name(paths: list[Path]) -> dict[str, Path]:
    return {path.stem: path for path in paths}


def test_names_are_ravdess_full_av_speech_with_all_emotions(corpus: list[Path]) -> None:
    assert corpus == sorted(corpus)
    assert len(corpus) == 2 * len(EMOTIONS)
    emotions, actors = set(), set()
    for path in corpus:
        match = RAVDESS_AV_SPEECH.match(path.name)
        assert match, path.name
        emotion_code, intensity, _, _, actor = match.groups()
        assert path.parent.name == f"Actor_{actor}"
        assert not (RAVDESS_EMOTION_CODES[emotion_code] == "neutral" and intensity == "02")
        emotions.add(RAVDESS_EMOTION_CODES[emotion_code])
        actors.add(actor)
    assert emotions == set(EMOTIONS)
    assert actors == {"01", "02"}


def test_clip_variants_are_distinct_and_respect_neutral_rule() -> None:
    clips = corpus_clips(actors=1, clips_per_emotion=8)
    names = [clip.name for clip in clips]
    assert len(names) == len(set(names))
    per_emotion = {emotion: [c for c in clips if c.emotion == emotion] for emotion in EMOTIONS}
    assert len(per_emotion["neutral"]) == 4  # RAVDESS has no strong neutral
    assert {c.intensity for c in per_emotion["neutral"]} == {"01"}
    for emotion in EMOTIONS[1:]:
        assert len(per_emotion[emotion]) == 8
    # Two clips per emotion already cover both intensities and both statements.
    two = [c for c in corpus_clips(actors=1, clips_per_emotion=2) if c.emotion == "angry"]
    assert {c.intensity for c in two} == {"01", "02"}
    assert {c.statement for c in two} == {"01", "02"}
    assert ClipSpec.from_name(names[5] + ".mp4") == clips[5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actors": 0}, "actors must be 1..24"),
        ({"actors": 25}, "actors must be 1..24"),
        ({"clips_per_emotion": 0}, "clips_per_emotion must be 1..8"),
        ({"clips_per_emotion": 9}, "clips_per_emotion must be 1..8"),
        ({"workers": 0}, "workers must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    out = tmp_path / "corpus"
    with pytest.raises(ValueError, match=message):
        synthesize_corpus(out, progress=False, **kwargs)
    assert not out.exists()


@pytest.mark.parametrize(
    "name",
    [
        "03-01-05-01-01-01-01",  # audio-only modality
        "01-01-09-01-01-01-01",  # no emotion 09
        "01-01-01-02-01-01-01",  # strong neutral does not exist
        "01-01-05-01-01-01-25",  # actor out of range
        "kids-talking.mp4",
    ],
)
def test_bad_clip_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="RAVDESS|actor"):
        synthesize_clip(tmp_path, name)


def test_each_clip_is_h264_and_aac_48k_with_matching_durations(corpus: list[Path]) -> None:
    for path in corpus:
        with av.open(str(path)) as container:
            (video,) = container.streams.video
            (audio,) = container.streams.audio
            assert video.codec_context.name == "h264"
            assert (video.width, video.height) == (FRAME_WIDTH, FRAME_HEIGHT)
            assert audio.codec_context.name == "aac"
            assert audio.rate == 48_000
            n_frames = sum(1 for _ in container.decode(video=0))
        samples, rate = decode_audio(path)
        assert rate == 48_000
        assert len(decode_gray_frames(path)) == n_frames  # OpenCV reads it too
        video_s, audio_s = n_frames / FPS, samples.size / rate
        assert abs(video_s - audio_s) <= 1.0 / FPS, (path.name, video_s, audio_s)
        assert np.sqrt(np.mean(samples**2)) > 1e-3, f"{path.name}: silent audio"


def test_haar_cascade_finds_a_face_in_at_least_95_percent_of_frames(corpus: list[Path]) -> None:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = total = 0
    for path in corpus:
        for gray in decode_gray_frames(path):
            found += len(cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)) > 0
            total += 1
    assert total == len(corpus) * 48
    assert found / total >= 0.95, f"faces found in {found}/{total} frames"


def test_same_seed_same_bytes_whatever_the_process(corpus: list[Path], tmp_path: Path) -> None:
    made_in_pool = by_name(corpus)
    for name in ("01-01-05-01-01-01-01", "01-01-04-01-01-01-02"):
        again = synthesize_clip(tmp_path / "same", name, seed=SEED)
        assert again.read_bytes() == made_in_pool[name].read_bytes()
        other = synthesize_clip(tmp_path / "other", name, seed=SEED + 1)
        assert other.read_bytes() != made_in_pool[name].read_bytes()


@pytest.mark.parametrize("perturb", ["85", "170"])
def test_same_bytes_whatever_the_heap(corpus: list[Path], tmp_path: Path, perturb: str) -> None:
    """glibc fills fresh allocations with MALLOC_PERTURB_'s byte: an encoder reading memory
    it never wrote would give other bytes (x264's CRF macroblock tree once did)."""
    name = "01-01-05-01-01-01-01"
    script = (
        "import sys; from orchestrate.corpus import synthesize_clip; "
        f"synthesize_clip(sys.argv[1], {name!r}, seed={SEED})"
    )
    env = {**os.environ, "MALLOC_PERTURB_": perturb}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, check=True)
    again = tmp_path / "Actor_01" / f"{name}.mp4"
    assert again.read_bytes() == by_name(corpus)[name].read_bytes()


def speech_level_db(samples: np.ndarray, rate: int) -> float:
    """Level (dBFS) of the loudest quarter of 20 ms frames: the speech, not the pauses."""
    hop = int(0.02 * rate)
    frames = samples[: samples.size // hop * hop].reshape(-1, hop)
    power = np.sort(np.mean(frames**2, axis=1))[::-1]
    return float(10 * np.log10(np.mean(power[: power.size // 4])))


def test_angry_voice_is_louder_and_higher_than_sad(corpus: list[Path]) -> None:
    clips = by_name(corpus)
    for actor in ("01", "02"):
        angry, rate = decode_audio(clips[f"01-01-05-01-01-01-{actor}"])
        sad, _ = decode_audio(clips[f"01-01-04-01-01-01-{actor}"])
        # Designed: about 9 dB and 5 semitones apart at normal intensity, give or take the
        # actor's expressiveness and the take's own variation.
        assert speech_level_db(angry, rate) > speech_level_db(sad, rate) + 3.0, actor
        assert median_f0(angry, rate) > median_f0(sad, rate) * 2 ** (2 / 12), actor


def test_male_actor_speaks_lower_than_female_actor(corpus: list[Path]) -> None:
    clips = by_name(corpus)
    semitones = []
    for path in corpus:
        if path.stem.endswith("-01"):  # odd actor: male; the same clip by actor 02 is female
            male, rate = decode_audio(path)
            female, _ = decode_audio(clips[path.stem[:-2] + "02"])
            semitones.append(12 * np.log2(median_f0(female, rate) / median_f0(male, rate)))
    assert len(semitones) == len(EMOTIONS)
    assert np.mean(semitones) > 3.0, semitones  # base pitches are at least 4.5 st apart


@pytest.mark.slow
def test_each_modality_confuses_its_designed_pairs_and_fusion_beats_both(tmp_path: Path) -> None:
    """Actor-disjoint logistic regression on simple features: audio stats vs face HOG."""
    from pyAudioAnalysis import ShortTermFeatures
    from scipy.signal import resample_poly
    from skimage.feature import hog
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    paths = synthesize_corpus(tmp_path, actors=8, clips_per_emotion=4, seed=3, progress=False)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    audio_rows, face_rows, labels, actors = [], [], [], []
    for path in paths:
        samples, rate = decode_audio(path)
        features, _ = ShortTermFeatures.feature_extraction(
            resample_poly(samples, 1, 3), 16_000, 800, 400, deltas=False
        )
        audio_rows.append(np.concatenate([features.mean(1), features.std(1)]))
        frames = decode_gray_frames(path)
        crops = []
        for gray in frames[len(frames) // 2 - 2 : len(frames) // 2 + 3]:  # around the apex
            boxes = cascade.detectMultiScale(gray, 1.1, 5)
            if len(boxes):
                x, y, w, h = max(boxes, key=lambda box: box[2] * box[3])
                crops.append(cv2.resize(gray[y : y + h, x : x + w], (48, 48)))
        face_rows.append(hog(np.mean(crops, axis=0), pixels_per_cell=(8, 8)))
        spec = ClipSpec.from_name(path.name)
        labels.append(EMOTIONS.index(spec.emotion))
        actors.append(spec.actor)
    audio, labels, actors = np.array(audio_rows), np.array(labels), np.array(actors)
    face = PCA(30, random_state=0).fit_transform(StandardScaler().fit_transform(face_rows))

    def accuracy(features: np.ndarray, classes: list[str]) -> float:
        keep = np.isin(labels, [EMOTIONS.index(c) for c in classes])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
        predicted = cross_val_predict(
            model, features[keep], labels[keep], groups=actors[keep], cv=GroupKFold(4)
        )
        return float(np.mean(predicted == labels[keep]))

    fused = np.hstack([audio, face])
    for classes in (list(EMOTIONS), ["angry", "happy", "sad", "neutral"]):
        a, v, f = accuracy(audio, classes), accuracy(face, classes), accuracy(fused, classes)
        assert f > max(a, v) + 0.05, (classes, a, v, f)
    # The voice confuses happy/angry and sad/disgust, the face does not; and the face
    # confuses neutral/calm and fearful/surprised, the voice does not. (32 clips per class
    # here: the margins allow for that few.)
    for pair in (["happy", "angry"], ["sad", "disgust"]):
        a, v = accuracy(audio, pair), accuracy(face, pair)
        assert a < 0.8 and v > a + 0.15, (pair, a, v)
    for pair in (["neutral", "calm"], ["fearful", "surprised"]):
        a, v = accuracy(audio, pair), accuracy(face, pair)
        assert v < 0.8 and a > v + 0.15, (pair, a, v)

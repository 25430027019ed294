"""The generated demo corpus: RAVDESS-named audio-visual clips of drawn faces and synthetic voices.

``synthesize_corpus`` writes ``Actor_AA/01-01-EE-II-SS-RR-AA.mp4`` clips (H.264 video, AAC
48 kHz mono audio) for the eight RAVDESS emotions. Each clip is a drawn face (see
:mod:`orchestrate.corpus.faces`) whose expression rises from neutral to an apex and back over
the clip, and a source-filter voice (see :mod:`orchestrate.corpus.voices`) speaking one of
the two RAVDESS statements with the emotion's prosody. Actors keep their identity (face
geometry, skin tone, hair, voice pitch and timbre, expressiveness) across their clips.

Confusions by design, so that fusion beats either modality alone:

* The face confuses **neutral ≈ calm** (almost the same face), **fearful ≈ surprised**
  (raised brows, wide eyes, open mouth in both) and, partly, **sad ≈ neutral/calm** (sad is
  a subtle face, clear only at strong intensity). The voice separates them: calm is lower,
  slower, softer and darker than neutral; sad lower, slower and softer still, breathy and
  trembling; fearful is high, fast, breathy and trembling where surprised is clear, with a
  wide, rising pitch.
* The voice confuses **happy ≈ angry** (high, loud, fast, bright) and **sad ≈ disgust**
  (low, slow, soft, dark, breathy). The face separates them: a smile against lowered,
  furrowed brows; raised inner brows against a wrinkled nose and raised upper lip.

Each task's class subset keeps confusions in both modalities: 8 classes (all of the above);
angry/happy/sad/neutral (face: sad vs neutral; voice: happy vs angry); the 7 without neutral
(face: fearful vs surprised, sad vs calm; voice: happy vs angry, sad vs disgust); the 7
without calm (face: fearful vs surprised, sad vs neutral; voice: both voice pairs).

``tests/test_synth.py`` (slow) checks the design with an actor-disjoint logistic regression
on simple per-clip features: audio statistics, face-crop HOG around the apex, and both.

Clips are 3.2 s of 160x120 video at 15 fps (48 frames). With K clips per emotion, the K
(intensity, statement, repetition) variants are taken in a fixed order; neutral has no strong
intensity, so it gets at most 4, as in RAVDESS (K is 1..8).

The lip movement while talking is deliberately not synchronised with the voice (a random
syllable rhythm over a random window): a mouth that moved with the syllables would carry the
speaking rate, and so the voice's cues, into the video.

Determinism: an actor's identity comes from a generator seeded by ``(seed, actor)`` and
everything else in a clip from one seeded by ``(seed, clip name)``, so clips can be made in
any order, in parallel, with byte-identical results (single-threaded encoders).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import av
import cv2
import numpy as np

from orchestrate.console import progress_bar
from orchestrate.corpus.faces import (
    FRAME_HEIGHT,
    FRAME_WIDTH,
    SUPERSAMPLE,
    Expression,
    FaceIdentity,
    FaceRenderer,
    Pose,
    draw_identity,
)
from orchestrate.corpus.voices import (
    SAMPLE_RATE,
    Prosody,
    VoiceIdentity,
    draw_voice,
    room_and_noise,
    synthesize_speech,
)
from orchestrate.emotions import EMOTIONS, RAVDESS_EMOTION_CODES

FPS = 15
CLIP_SECONDS = 3.2  # 48 frames; 153 600 samples = exactly 150 AAC frames
MAX_ACTORS = 24  # RAVDESS names have two-digit actor numbers; RAVDESS itself has 24
MAX_CLIPS_PER_EMOTION = 8  # 2 intensities x 2 statements x 2 repetitions
NEUTRAL_CLIPS_MAX = 4  # neutral has no strong intensity: 2 statements x 2 repetitions

_NAME = re.compile(r"^01-01-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)$")

# How strongly each emotion shows at its apex, per intensity (01 normal, 02 strong).
_INTENSITY_WEIGHT = {"01": 0.7, "02": 1.1}

# The face at the apex of each emotion, at full weight.
FACE_APEX: dict[str, Expression] = {
    "neutral": Expression(),
    "calm": Expression(smile=0.06, eye_open=-0.1),
    "happy": Expression(
        smile=0.9, mouth_open=0.3, cheek_raise=0.7, eye_open=-0.2, mouth_stretch=0.15
    ),
    "sad": Expression(smile=-0.3, brow_inner=0.35, eye_open=-0.2),
    "angry": Expression(
        brow_raise=-0.5,
        brow_inner=-0.9,
        eye_open=-0.1,
        smile=-0.25,
        mouth_open=0.2,
        mouth_stretch=0.1,
    ),
    "fearful": Expression(
        brow_raise=0.85,
        brow_inner=0.5,
        eye_open=0.9,
        mouth_open=0.55,
        mouth_stretch=0.05,
        smile=-0.05,
    ),
    "surprised": Expression(
        brow_raise=0.9, brow_inner=0.4, eye_open=0.95, mouth_open=0.6, mouth_stretch=-0.05
    ),
    "disgust": Expression(
        nose_wrinkle=0.9,
        lip_raise=0.8,
        brow_raise=-0.3,
        brow_inner=-0.3,
        eye_open=-0.45,
        smile=-0.3,
        mouth_open=0.1,
    ),
}

# How each emotion is spoken, at full weight (intensity scales the difference from neutral).
PROSODY: dict[str, Prosody] = {
    # level st, range st, contour st, rate syl/s, loudness dB, tilt, breathiness, tremor st
    "neutral": Prosody(0.0, 2.0, -2.0, 4.6, 0.0, 0.0, 0.08, 0.0),
    "calm": Prosody(-1.5, 1.0, -1.5, 3.5, -5.0, -0.55, 0.08, 0.0),
    "happy": Prosody(4.0, 5.0, -1.0, 5.3, 6.0, 0.7, 0.04, 0.0),
    "angry": Prosody(4.3, 4.6, -1.5, 5.4, 6.5, 0.75, 0.04, 0.0),
    "sad": Prosody(-3.0, 1.0, -3.0, 3.0, -7.0, -1.0, 0.45, 0.3),
    "disgust": Prosody(-2.7, 1.2, -2.8, 3.1, -6.5, -0.95, 0.42, 0.3),
    "fearful": Prosody(7.0, 2.5, 0.0, 6.0, 2.0, 0.0, 0.5, 1.0),
    "surprised": Prosody(5.0, 7.0, 6.0, 4.2, 4.0, 0.5, 0.05, 0.0),
}

# (intensity, statement, repetition) in the order clips are taken for K clips per emotion:
# the first two already cover both intensities and both statements.
_VARIANTS = (
    ("01", "01", "01"),
    ("02", "02", "01"),
    ("01", "02", "01"),
    ("02", "01", "01"),
    ("01", "01", "02"),
    ("02", "02", "02"),
    ("01", "02", "02"),
    ("02", "01", "02"),
)
_NEUTRAL_VARIANTS = (
    ("01", "01", "01"),
    ("01", "02", "01"),
    ("01", "01", "02"),
    ("01", "02", "02"),
)


@dataclass(frozen=True)
class ClipSpec:
    """What a clip's RAVDESS name says: emotion, intensity, statement, repetition, actor."""

    emotion: str
    intensity: str
    statement: str
    repetition: str
    actor: int

    @property
    def name(self) -> str:
        """The RAVDESS file stem, ``01-01-EE-II-SS-RR-AA`` (full AV, speech)."""
        code = f"{EMOTIONS.index(self.emotion) + 1:02d}"
        return f"01-01-{code}-{self.intensity}-{self.statement}-{self.repetition}-{self.actor:02d}"

    @property
    def female(self) -> bool:
        """RAVDESS convention: odd actors are male, even actors female."""
        return self.actor % 2 == 0

    @classmethod
    def from_name(cls, name: str) -> ClipSpec:
        """Parse a full-AV speech RAVDESS stem (a ``.mp4`` suffix is allowed)."""
        stem = name.removesuffix(".mp4")
        match = _NAME.match(stem)
        if not match:
            raise ValueError(f"not a full-AV RAVDESS speech clip name: {name!r}")
        emotion_code, intensity, statement, repetition, actor = match.groups()
        emotion = RAVDESS_EMOTION_CODES[emotion_code]
        if emotion == "neutral" and intensity == "02":
            raise ValueError(f"neutral has no strong intensity in RAVDESS: {name!r}")
        if not 1 <= int(actor) <= MAX_ACTORS:
            raise ValueError(f"actor must be 01..{MAX_ACTORS}: {name!r}")
        return cls(emotion, intensity, statement, repetition, int(actor))


def _check_counts(actors: int, clips_per_emotion: int) -> None:
    if not 1 <= actors <= MAX_ACTORS:
        raise ValueError(
            f"actors must be 1..{MAX_ACTORS} (two-digit RAVDESS actor ids), got {actors}"
        )
    if not 1 <= clips_per_emotion <= MAX_CLIPS_PER_EMOTION:
        raise ValueError(
            f"clips_per_emotion must be 1..{MAX_CLIPS_PER_EMOTION} "
            f"(2 intensities x 2 statements x 2 repetitions), got {clips_per_emotion}"
        )


def corpus_clips(actors: int, clips_per_emotion: int) -> list[ClipSpec]:
    """The clips of a corpus, actor by actor, emotion by emotion.

    Each emotion gets ``clips_per_emotion`` distinct (intensity, statement, repetition)
    variants, except neutral, which has no strong intensity and so at most 4, as in RAVDESS.
    """
    _check_counts(actors, clips_per_emotion)
    clips = []
    for actor in range(1, actors + 1):
        for emotion in EMOTIONS:
            variants = _NEUTRAL_VARIANTS if emotion == "neutral" else _VARIANTS
            for intensity, statement, repetition in variants[:clips_per_emotion]:
                clips.append(ClipSpec(emotion, intensity, statement, repetition, actor))
    return clips


def _generator(seed: int, *key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a key, stable across processes and platforms."""
    digest = hashlib.sha256(repr((int(seed), *key)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


@dataclass(frozen=True)
class Actor:
    """An actor's identity: face, voice, and how strongly they express emotion."""

    face: FaceIdentity
    voice: VoiceIdentity
    expressiveness: float


def draw_actor(seed: int, actor: int) -> Actor:
    """The identity of actor number ``actor`` in the corpus made with ``seed``."""
    rng = _generator(seed, "actor", f"{actor:02d}")
    female = actor % 2 == 0
    face = draw_identity(rng, female)
    voice = draw_voice(rng, female)
    return Actor(face, voice, expressiveness=float(rng.uniform(0.85, 1.15)))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def expression_track(spec: ClipSpec, actor: Actor, rng: np.random.Generator) -> list[Expression]:
    """The face's expression in every frame: neutral → apex → neutral, blinks and talking."""
    n_frames = int(round(CLIP_SECONDS * FPS))
    t = (np.arange(n_frames) + 0.5) / FPS
    weight = _INTENSITY_WEIGHT[spec.intensity] * actor.expressiveness * rng.uniform(0.85, 1.15)
    apex = FACE_APEX[spec.emotion].scaled(weight)
    # Per-clip idiosyncrasy of the apex: every action a little off the prototype.
    actions = [f.name for f in fields(Expression)]
    offsets = rng.normal(0.0, 0.04, len(actions)).tolist()
    apex = apex.plus(Expression(**dict(zip(actions, offsets, strict=True))))

    apex_centre = CLIP_SECONDS / 2.0 + rng.normal(0.0, 0.15)
    hold, rise, fall = rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7)
    hold_start, hold_end = apex_centre - hold / 2.0, apex_centre + hold / 2.0
    envelope = _smoothstep((t - (hold_start - rise)) / rise) * (
        1.0 - _smoothstep((t - hold_end) / fall)
    )

    # Talking: the jaw opens and closes at a syllable rhythm unrelated to the voice's rate.
    talk_start = rng.uniform(0.3, 0.8)
    talk_end = talk_start + rng.uniform(1.4, 2.2)
    talk_hz = rng.uniform(3.5, 5.0)
    talking = (t > talk_start) & (t < talk_end)
    jaw = 0.12 * np.maximum(0.0, np.sin(2 * np.pi * talk_hz * t + rng.uniform(0, 2 * np.pi)))
    jaw *= talking

    # Blinks: about one per clip, three frames each.
    blink = np.zeros(n_frames)
    for start in rng.integers(0, n_frames - 3, rng.poisson(1.0)):
        blink[start : start + 3] = np.maximum(blink[start : start + 3], [0.5, 1.0, 0.5])

    return [
        apex.scaled(float(envelope[i])).plus(
            Expression(mouth_open=float(jaw[i]), eye_open=-1.6 * float(blink[i]))
        )
        for i in range(n_frames)
    ]


def pose_track(rng: np.random.Generator) -> list[Pose]:
    """Head placement per frame: a per-clip offset, scale and roll, and slow sway."""
    n_frames = int(round(CLIP_SECONDS * FPS))
    t = np.arange(n_frames) / FPS
    x0 = FRAME_WIDTH / 2.0 + np.clip(rng.normal(0.0, 5.0), -10, 10)
    y0 = FRAME_HEIGHT / 2.0 + 4.0 + np.clip(rng.normal(0.0, 3.0), -6, 6)
    scale0 = rng.uniform(0.92, 1.08)
    roll0 = rng.normal(0.0, 2.0)

    def sway(amplitude: float) -> np.ndarray:
        return amplitude * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t + rng.uniform(0, 2 * np.pi))

    xs, ys, scales, rolls = (
        x0 + sway(2.5),
        y0 + sway(1.5),
        scale0 * (1 + sway(0.02)),
        roll0 + sway(2.0),
    )
    return [
        Pose(float(x), float(y), float(s), float(r))
        for x, y, s, r in zip(xs, ys, scales, rolls, strict=True)
    ]


def draw_background(rng: np.random.Generator) -> np.ndarray:
    """A supersampled backdrop: a coloured, graded wall with blotches, sometimes a door frame."""
    height, width = FRAME_HEIGHT * SUPERSAMPLE, FRAME_WIDTH * SUPERSAMPLE
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # A grey level with a moderate tint: walls are rarely saturated colours.
    base = np.clip(rng.uniform(35.0, 220.0) + rng.normal(0.0, 22.0, 3), 10.0, 245.0)
    base = base.astype(np.float32)
    grade = (
        1.0
        + rng.uniform(-0.35, 0.35) * (xs / width - 0.5)
        + rng.uniform(-0.35, 0.35) * (ys / height - 0.5)
    )
    wall = base * grade[..., None]
    blotches = rng.normal(0.0, rng.uniform(4.0, 18.0), (height // 16, width // 16, 3))
    wall += cv2.resize(blotches.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:  # a door frame or shelf edge at one side
        edge = int(rng.uniform(0.05, 0.22) * width)
        colour = np.clip(rng.uniform(20.0, 230.0) + rng.normal(0.0, 25.0, 3), 0.0, 255.0)
        if rng.random() < 0.5:
            wall[:, :edge] = colour
        else:
            wall[:, width - edge :] = colour
    return np.clip(wall, 0.0, 255.0).astype(np.float32)


def render_video(spec: ClipSpec, actor: Actor, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The clip's frames as uint8 RGB arrays (FRAME_HEIGHT, FRAME_WIDTH, 3)."""
    renderer = FaceRenderer(actor.face)
    expressions = expression_track(spec, actor, rng)
    poses = pose_track(rng)
    background = draw_background(rng)
    # Lighting from one side and a camera's exposure, fixed per clip; sensor noise per frame.
    side_light = 1.0 + rng.uniform(-0.25, 0.25) * (np.arange(FRAME_WIDTH) / FRAME_WIDTH - 0.5)
    exposure = rng.uniform(0.85, 1.1)
    light = (exposure * side_light)[None, :, None].astype(np.float32)
    noise_sigma = rng.uniform(2.0, 5.0)
    for expression, pose in zip(expressions, poses, strict=True):
        frame = renderer.render(background, expression, pose) * light
        frame *= rng.normal(1.0, 0.01)  # exposure flicker
        frame += rng.normal(0.0, noise_sigma, frame.shape).astype(np.float32)
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def render_audio(spec: ClipSpec, actor: Actor, rng: np.random.Generator) -> np.ndarray:
    """The clip's audio: the statement spoken with the emotion's prosody, in a noisy room."""
    neutral = PROSODY["neutral"]
    weight = _INTENSITY_WEIGHT[spec.intensity] * actor.expressiveness
    prosody = PROSODY[spec.emotion].toward(neutral, weight)
    # Per-clip variation: nobody says the same line the same way twice.
    prosody = Prosody(
        f0_level_st=prosody.f0_level_st + rng.normal(0.0, 0.7),
        f0_range_st=prosody.f0_range_st * rng.uniform(0.8, 1.2),
        f0_contour_st=prosody.f0_contour_st + rng.normal(0.0, 0.7),
        rate_syl_s=prosody.rate_syl_s * rng.normal(1.0, 0.05),
        loudness_db=prosody.loudness_db + rng.normal(0.0, 1.0),
        tilt=prosody.tilt + rng.normal(0.0, 0.1),
        breathiness=prosody.breathiness * rng.uniform(0.8, 1.2),
        tremor_st=prosody.tremor_st * rng.uniform(0.8, 1.2),
    )
    speech = synthesize_speech(actor.voice, prosody, spec.statement, CLIP_SECONDS, rng)
    return room_and_noise(speech, rng)


def write_clip(path: Path, frames: Iterator[np.ndarray], audio: np.ndarray) -> None:
    """Mux RGB frames (H.264, yuv420p) and mono float audio (AAC, 48 kHz) into one mp4."""
    # bitexact: no encoder version strings or timestamps that would differ between runs.
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = FRAME_WIDTH, FRAME_HEIGHT, "yuv420p"
        video.codec_context.thread_count = 1  # single-threaded x264 is deterministic
        # A constant quantiser, not CRF: CRF's macroblock-tree rate control reads memory
        # x264 never initialised here, so the same frames gave different bytes from one
        # process (or heap state) to the next (reproduced with MALLOC_PERTURB_).
        video.options = {"qp": "20", "preset": "medium"}
        sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        sound.codec_context.thread_count = 1

        chunk = SAMPLE_RATE // FPS  # audio samples per video frame
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            container.mux(video.encode(frame))
            samples = audio[index * chunk : (index + 1) * chunk]
            if samples.size:
                piece = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
                piece.sample_rate = SAMPLE_RATE
                piece.pts = index * chunk
                piece.time_base = Fraction(1, SAMPLE_RATE)
                container.mux(sound.encode(piece))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))


def synthesize_clip(out_dir: str | Path, name: str, seed: int = 0) -> Path:
    """Generate one clip, ``out_dir/Actor_AA/<name>.mp4``, and return its path.

    The clip depends only on ``seed`` and its name, never on which other clips are made.
    """
    spec = ClipSpec.from_name(name)
    path = Path(out_dir) / f"Actor_{spec.actor:02d}" / f"{spec.name}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    actor = draw_actor(seed, spec.actor)
    rng = _generator(seed, "clip", spec.name)
    audio = render_audio(spec, actor, rng)
    frames = render_video(spec, actor, rng)
    # Written under a temporary name and renamed, so an interrupted run leaves no
    # half-written clip that looks finished.
    partial = path.with_name(f".{path.stem}.partial.mp4")
    try:
        write_clip(partial, frames, audio)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def synthesize_corpus(
    out_dir: str | Path,
    actors: int = 8,
    clips_per_emotion: int = 2,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Generate the demo corpus under ``out_dir`` and return the clip paths, sorted.

    ``actors`` (1..24) actors each speak ``clips_per_emotion`` (1..8) clips per emotion
    (neutral at most 4, as RAVDESS has no strong neutral). The same ``seed`` gives
    byte-identical files whatever ``workers`` is (default: every available core).
    """
    _check_counts(actors, clips_per_emotion)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    clips = corpus_clips(actors, clips_per_emotion)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_workers = min(workers or _available_cores(), len(clips))
    bar = progress_bar(len(clips), "clips generated", "clip", enabled=progress)
    paths: list[Path] = []
    try:
        if n_workers == 1:
            for clip in clips:
                paths.append(synthesize_clip(out, clip.name, seed))
                bar.update()
        else:
            # spawn, not fork: the caller may hold threads (Ray, MLflow) that fork would copy.
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(synthesize_clip, out, clip.name, seed) for clip in clips]
                for future in as_completed(futures):
                    paths.append(future.result())
                    bar.update()
    finally:
        bar.close()
    return sorted(paths)

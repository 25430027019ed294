"""Source-filter synthetic speech for the demo corpus.

A voice is a glottal pulse train (Rosenberg pulses at an f0 contour, with jitter, and
aspiration noise gated by the glottal flow) passed through a cascade of four formant
resonators that glide through the vowels of the spoken statement, plus frication noise for
its consonants. Per actor: base pitch (male lower), vocal-tract length (formant scaling),
loudness, breathiness and jitter. Per emotion (:class:`Prosody`): pitch level, range and
final contour, speaking rate, loudness, spectral tilt, breathiness and tremor. Each clip then
gets a short room reverberation and background noise.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import signal

SAMPLE_RATE = 48_000
_BLOCK = 240  # 5 ms control blocks: formants, f0 and amplitudes change at this rate
_BLOCK_S = _BLOCK / SAMPLE_RATE
_BANDWIDTHS_HZ = np.array([80.0, 100.0, 160.0, 250.0])

# Adult male vowel formants F1-F3 in Hz (Peterson & Barney 1952); F4 is fixed per speaker.
_VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "ih": (390.0, 1990.0, 2550.0),  # kids, sitting
    "aa": (730.0, 1090.0, 2440.0),  # are, the start of "by"
    "ao": (570.0, 840.0, 2410.0),  # talking, dogs, door
    "ax": (500.0, 1500.0, 2500.0),  # the
}
_F4_HZ = 3500.0


@dataclass(frozen=True)
class Syllable:
    """One syllable: its onset consonant class, vowel start/end (a diphthong glides) and stress."""

    onset: str | None  # "stop", "voiced_stop", "fricative", "voiced_fricative" or None
    vowel: str
    vowel_end: str
    stressed: bool


# The two RAVDESS statements, syllable by syllable.
STATEMENTS: dict[str, tuple[Syllable, ...]] = {
    # "Kids are talking by the door"
    "01": (
        Syllable("stop", "ih", "ih", True),
        Syllable(None, "aa", "aa", False),
        Syllable("stop", "ao", "ao", True),
        Syllable("stop", "ih", "ih", False),
        Syllable("voiced_stop", "aa", "ih", True),
        Syllable("voiced_fricative", "ax", "ax", False),
        Syllable("voiced_stop", "ao", "ao", True),
    ),
    # "Dogs are sitting by the door"
    "02": (
        Syllable("voiced_stop", "ao", "ao", True),
        Syllable(None, "aa", "aa", False),
        Syllable("fricative", "ih", "ih", True),
        Syllable("stop", "ih", "ih", False),
        Syllable("voiced_stop", "aa", "ih", True),
        Syllable("voiced_fricative", "ax", "ax", False),
        Syllable("voiced_stop", "ao", "ao", True),
    ),
}

# Voicing and frication levels while the onset consonant is held (before the vowel).
_ONSET_VOICING = {"stop": 0.0, "voiced_stop": 0.15, "fricative": 0.0, "voiced_fricative": 0.3}
_ONSET_FRICATION = {"stop": 0.0, "voiced_stop": 0.0, "fricative": 0.35, "voiced_fricative": 0.1}
_BURST = {"stop": 0.6, "voiced_stop": 0.3}  # release burst at the end of a stop closure


@dataclass(frozen=True)
class VoiceIdentity:
    """One actor's voice, fixed across all of their clips."""

    base_f0_hz: float
    formant_scale: float  # shorter vocal tract → higher formants
    loudness_db: float  # the actor's habitual level, relative to the corpus reference
    breathiness: float  # added to the emotion's breathiness
    jitter_st: float  # cycle-to-cycle f0 perturbation, semitones
    tilt: float  # added to the emotion's spectral tilt
    rate_factor: float  # the actor's own speaking tempo


@dataclass(frozen=True)
class Prosody:
    """How an emotion is spoken: the parameters the corpus's emotions differ in."""

    f0_level_st: float  # mean pitch shift from the actor's base, semitones
    f0_range_st: float  # pitch-accent excursion on stressed syllables, semitones
    f0_contour_st: float  # pitch change from the first to the last syllable (+ rising)
    rate_syl_s: float  # speaking rate, syllables per second
    loudness_db: float  # level relative to neutral speech
    tilt: float  # spectral tilt, -1 (soft, dark) .. +1 (pressed, bright)
    breathiness: float  # aspiration noise relative to the voiced source
    tremor_st: float  # slow (~6 Hz) f0 tremor depth, semitones

    def toward(self, reference: Prosody, weight: float) -> Prosody:
        """``reference`` moved ``weight`` of the way to this prosody (1 = this prosody)."""
        return Prosody(
            **{
                f.name: getattr(reference, f.name)
                + weight * (getattr(self, f.name) - getattr(reference, f.name))
                for f in fields(self)
            }
        )


def draw_voice(rng: np.random.Generator, female: bool) -> VoiceIdentity:
    """A random actor voice; female voices are higher and have a shorter vocal tract."""
    return VoiceIdentity(
        base_f0_hz=rng.uniform(175.0, 235.0) if female else rng.uniform(95.0, 135.0),
        formant_scale=rng.uniform(1.12, 1.22) if female else rng.uniform(0.94, 1.04),
        loudness_db=rng.normal(0.0, 1.5),
        breathiness=rng.uniform(0.02, 0.12) + (0.04 if female else 0.0),
        jitter_st=rng.uniform(0.05, 0.12),
        tilt=rng.normal(0.0, 0.15),
        rate_factor=rng.uniform(0.92, 1.08),
    )


def _syllable_timing(
    syllables: tuple[Syllable, ...], rate: float, duration_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end times (s) of each syllable: stressed ones longer, the whole centred."""
    weights = np.array([1.3 if s.stressed else 0.8 for s in syllables])
    weights = weights * rng.uniform(0.85, 1.15, len(syllables))
    speech_s = min(len(syllables) / rate, duration_s - 0.3)
    lengths = weights / weights.sum() * speech_s
    onset = (duration_s - speech_s) / 2.0 + rng.normal(0.0, 0.06)
    onset = float(np.clip(onset, 0.12, duration_s - speech_s - 0.12))
    ends = onset + np.cumsum(lengths)
    return ends - lengths, ends


def synthesize_speech(
    voice: VoiceIdentity,
    prosody: Prosody,
    statement: str,
    duration_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One spoken statement, ``duration_s`` long, as float32 mono samples at SAMPLE_RATE.

    The level is absolute (not normalised per clip): loudness is part of the prosody.
    """
    if statement not in STATEMENTS:
        raise ValueError(f"unknown statement {statement!r}: expected one of {sorted(STATEMENTS)}")
    syllables = STATEMENTS[statement]
    n_samples = int(round(duration_s * SAMPLE_RATE))
    n_blocks = -(-n_samples // _BLOCK)
    block_t = (np.arange(n_blocks) + 0.5) * _BLOCK_S
    starts, ends = _syllable_timing(
        syllables, prosody.rate_syl_s * voice.rate_factor, duration_s, rng
    )

    voicing = np.zeros(n_blocks)
    frication = np.zeros(n_blocks)
    formants = np.tile(np.array(_VOWEL_FORMANTS["ax"]), (n_blocks, 1))
    accent_st = np.zeros(n_blocks)
    for syllable, start, end in zip(syllables, starts, ends, strict=True):
        length = end - start
        onset_end = start + (min(0.3 * length, 0.07) if syllable.onset else 0.0)
        vowel_end = end - 0.2 * length  # a short gap to the next syllable
        in_onset = (block_t >= start) & (block_t < onset_end)
        in_vowel = (block_t >= onset_end) & (block_t < vowel_end)
        if syllable.onset:
            voicing[in_onset] = _ONSET_VOICING[syllable.onset]
            frication[in_onset] = _ONSET_FRICATION[syllable.onset]
            burst = (block_t >= onset_end - 0.012) & (block_t < onset_end)
            frication[burst] = np.maximum(frication[burst], _BURST.get(syllable.onset, 0.0))
        # Vowel amplitude: raised-cosine ramps in and out, stressed syllables louder.
        vowel_len = vowel_end - onset_end
        phase = (block_t[in_vowel] - onset_end) / vowel_len
        ramp = np.minimum(1.0, np.minimum(phase, 1.0 - phase) / 0.2)
        stress_gain = 1.0 if syllable.stressed else 0.7
        voicing[in_vowel] = stress_gain * (0.5 - 0.5 * np.cos(np.pi * ramp))
        first = np.array(_VOWEL_FORMANTS[syllable.vowel])
        last = np.array(_VOWEL_FORMANTS[syllable.vowel_end])
        formants[in_vowel] = first + phase[:, None] * (last - first)
        # Pitch accent: a bump at the vowel's middle, large on stressed syllables.
        height = prosody.f0_range_st * (rng.uniform(0.6, 1.0) if syllable.stressed else 0.25)
        centre = (onset_end + vowel_end) / 2.0
        accent_st += height * np.exp(-0.5 * ((block_t - centre) / (0.35 * length)) ** 2)

    # Coarticulation: formants glide between segments instead of jumping.
    smooth = np.hanning(9) / np.hanning(9).sum()
    formants = np.stack(
        [np.convolve(np.pad(f, 4, mode="edge"), smooth, mode="valid") for f in formants.T], 1
    )
    formants = np.hstack([formants, np.full((n_blocks, 1), _F4_HZ)]) * voice.formant_scale

    # f0 contour in semitones over the actor's base: level, declination or final rise,
    # accents, tremor, slow drift and cycle-level jitter.
    progress = np.clip((block_t - starts[0]) / (ends[-1] - starts[0]), 0.0, 1.0)
    drift = np.cumsum(rng.normal(0.0, 0.05, n_blocks))
    drift -= drift.mean()
    tremor_hz = rng.uniform(5.0, 7.0)
    f0_st = (
        prosody.f0_level_st
        + prosody.f0_contour_st * (progress - 0.5)
        + accent_st
        + prosody.tremor_st * np.sin(2 * np.pi * tremor_hz * block_t + rng.uniform(0, 2 * np.pi))
        + drift
        + rng.normal(0.0, voice.jitter_st, n_blocks)
    )
    f0_hz = voice.base_f0_hz * 2.0 ** (f0_st / 12.0)

    sample_t = (np.arange(n_samples) + 0.5) / SAMPLE_RATE
    f0 = np.interp(sample_t, block_t, f0_hz)
    voicing_s = np.interp(sample_t, block_t, voicing)
    frication_s = np.interp(sample_t, block_t, frication)

    tilt = float(np.clip(prosody.tilt + voice.tilt, -1.2, 1.2))
    flow = _rosenberg_flow(np.cumsum(f0) / SAMPLE_RATE, open_quotient=0.6 - 0.15 * tilt)
    source = np.diff(flow, prepend=0.0) * SAMPLE_RATE / f0  # ≈ pitch-independent amplitude
    breath = max(0.0, prosody.breathiness + voice.breathiness)
    # Aspiration: turbulence at the glottis, strongest while it is open (Klatt); it is shaped
    # by the same resonators as the voiced source.
    aspiration = rng.standard_normal(n_samples) * (0.3 + flow) * breath * 8.0
    excitation = (source + aspiration) * voicing_s
    voiced = _formant_cascade(excitation, formants)
    voiced = _spectral_tilt(voiced, tilt)

    # Vowels set the reference level; consonant noise is placed relative to them, so that
    # a pressed or breathy voice does not change how loud its fricatives are.
    active = voicing_s > 0.3
    voiced /= float(np.sqrt(np.mean(voiced[active] ** 2))) if active.any() else 1.0
    fric_noise = signal.sosfilt(
        signal.butter(2, [2500.0, 8000.0], "bandpass", fs=SAMPLE_RATE, output="sos"),
        rng.standard_normal(n_samples),
    )
    speech = voiced + frication_s * 0.9 * fric_noise / np.std(fric_noise)

    # Absolute level: neutral vowels sit at -26 dBFS RMS; loudness is part of the prosody.
    level_db = -26.0 + prosody.loudness_db + voice.loudness_db
    return (speech * 10.0 ** (level_db / 20.0)).astype(np.float32)


def _rosenberg_flow(phase: np.ndarray, open_quotient: float) -> np.ndarray:
    """Glottal flow of Rosenberg pulses (opening 2/3, closing 1/3 of the open phase)."""
    oq = float(np.clip(open_quotient, 0.35, 0.85))
    opening, closing = oq * 2.0 / 3.0, oq / 3.0
    tau = phase % 1.0
    flow = np.zeros_like(tau)
    rising = tau < opening
    flow[rising] = 0.5 * (1.0 - np.cos(np.pi * tau[rising] / opening))
    falling = (tau >= opening) & (tau < opening + closing)
    flow[falling] = np.cos(0.5 * np.pi * (tau[falling] - opening) / closing)
    return flow


def _formant_cascade(excitation: np.ndarray, formants_hz: np.ndarray) -> np.ndarray:
    """A cascade of four two-pole resonators whose frequencies change every control block."""
    n_blocks = formants_hz.shape[0]
    radius = np.exp(-np.pi * _BANDWIDTHS_HZ / SAMPLE_RATE)
    theta = 2.0 * np.pi * np.minimum(formants_hz, 0.45 * SAMPLE_RATE) / SAMPLE_RATE
    a1 = -2.0 * radius * np.cos(theta)  # (blocks, 4)
    a2 = np.broadcast_to(radius**2, a1.shape)
    gain = 1.0 + a1 + a2  # unity gain at DC, as in Klatt's cascade synthesiser
    sos = np.zeros((n_blocks, 4, 6))
    sos[:, :, 0] = gain
    sos[:, :, 3] = 1.0
    sos[:, :, 4] = a1
    sos[:, :, 5] = a2
    out = np.empty_like(excitation)
    state = np.zeros((4, 2))
    for block in range(n_blocks):
        segment = slice(block * _BLOCK, (block + 1) * _BLOCK)
        out[segment], state = signal.sosfilt(sos[block], excitation[segment], zi=state)
    return out


def _spectral_tilt(x: np.ndarray, tilt: float) -> np.ndarray:
    """A high shelf above ~1 kHz: +12 dB at tilt +1 (pressed voice), -12 dB at tilt -1."""
    b, a = signal.butter(1, 1000.0, fs=SAMPLE_RATE)
    low = signal.lfilter(b, a, x)
    return low + 10.0 ** (12.0 * tilt / 20.0) * (x - low)


def room_and_noise(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip's acoustics: a short reverberant tail, room noise and mains hum."""
    n = speech.size
    rt60 = rng.uniform(0.12, 0.35)
    tail_n = int(rt60 * SAMPLE_RATE)
    tail_t = np.arange(tail_n) / SAMPLE_RATE
    impulse = rng.standard_normal(tail_n) * np.exp(-6.9 * tail_t / rt60)
    impulse *= rng.uniform(0.1, 0.3) / np.sqrt(np.sum(impulse**2))
    impulse[0] = 1.0
    wet = signal.fftconvolve(speech, impulse)[:n]
    # Pink (1/f) noise: white noise through Kellet's economy pinking filter.
    pink = signal.lfilter(
        [0.049922035, -0.095993537, 0.050612699, -0.004408786],
        [1.0, -2.494956002, 2.017265875, -0.522189400],
        rng.standard_normal(n + 2000),
    )[2000:]
    # Room noise is darker than pink (ventilation, traffic): another -6 dB/octave above 200 Hz.
    room = signal.lfilter(*signal.butter(1, 200.0, fs=SAMPLE_RATE), pink)
    room *= 10.0 ** (rng.uniform(-62.0, -48.0) / 20.0) / np.sqrt(np.mean(room**2))
    t = np.arange(n) / SAMPLE_RATE
    mains = rng.choice([50.0, 60.0])
    hum = sum(
        np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3)
    ) * 10.0 ** (rng.uniform(-70.0, -52.0) / 20.0)
    return np.clip(wet + room + hum, -1.0, 1.0).astype(np.float32)

"""RAVDESS adapter: clips, labels and actors from ``MM-VV-EE-II-SS-RR-AA.ext`` file names.

The seven two-digit codes are modality (01 full audio-visual, 02 video-only, 03
audio-only), vocal channel (01 speech, 02 song), emotion (01-08, see
``orchestrate.emotions``), intensity (01 normal, 02 strong; neutral has no strong),
statement (01/02), repetition (01/02) and actor (01-24). The release ships each recording
three ways; how they become clips:

- ``01-…`` (full AV, a video container): one clip, ``video_uri == audio_uri`` = the file,
  ``clip_id`` = the file's stem.
- ``02-…`` (video-only) and ``03-…`` (audio-only) with the same remaining six codes: one
  clip, video from the 02 file and audio from the 03 file, ``clip_id`` =
  ``"02+03-" + VV-EE-II-SS-RR-AA`` (stable, and distinct from the 01 clip of the same
  recording, which stays a separate clip).
- a 02 file without its 03 partner: a video-only clip (``audio_uri`` None), ``clip_id`` = stem.
- a 03 file without its 02 partner: an audio-only clip (``video_uri`` None), ``clip_id`` = stem.

Labels and actors come from the name only. A media file (see ``MEDIA_EXTENSIONS``) whose
name does not parse, whose extension does not suit its modality, or which repeats a
recording already listed (same name in another folder, or another container) is reported
in ``ClipListing.rejected`` with a one-line reason, never guessed. Files with other
extensions (README, CSV, images) are not clips and are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrate.datasets.base import (
    AUDIO_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Clip,
    ClipListing,
    RejectedFile,
    split_file_name,
)
from orchestrate.datasets.filesystem import list_files
from orchestrate.emotions import RAVDESS_EMOTION_CODES

DATASET = "ravdess"
FULL_AV, VIDEO_ONLY, AUDIO_ONLY = "01", "02", "03"
MODALITY_NAMES = {FULL_AV: "full audio-visual", VIDEO_ONLY: "video-only", AUDIO_ONLY: "audio-only"}
PAIRED_PREFIX = "02+03-"

_TWO_DIGITS = re.compile(r"\d\d")


@dataclass(frozen=True)
class RavdessName:
    """The seven codes of a RAVDESS file name, each a two-digit string."""

    modality: str
    vocal_channel: str
    emotion: str
    intensity: str
    statement: str
    repetition: str
    actor: str

    @property
    def recording_id(self) -> str:
        """``VV-EE-II-SS-RR-AA``: the codes shared by the three modalities of a recording."""
        return "-".join(
            (
                self.vocal_channel,
                self.emotion,
                self.intensity,
                self.statement,
                self.repetition,
                self.actor,
            )
        )

    @property
    def label(self) -> str:
        """The canonical emotion name (``orchestrate.emotions.EMOTIONS``)."""
        return RAVDESS_EMOTION_CODES[self.emotion]


def _code_problem(field: str, code: str, allowed: tuple[str, ...], shown: str) -> list[str]:
    return [] if code in allowed else [f"{field} code {code} is not one of {shown}"]


def parse_ravdess_name(name: str) -> RavdessName:
    """Parse a RAVDESS file name (``03-01-05-02-01-01-04.wav``), checking every code.

    Raises ValueError with a one-line reason that starts with the file name, e.g.
    ``01-01-09-01-01-01-01.mp4: emotion code 09 is not one of 01-08``; several problems
    are joined with ``; ``.
    """
    _, stem, extension = split_file_name(name)
    codes = stem.split("-")
    if len(codes) != 7 or not all(_TWO_DIGITS.fullmatch(code) for code in codes):
        raise ValueError(f"{name}: name is not MM-VV-EE-II-SS-RR-AA (seven two-digit codes)")
    parsed = RavdessName(*codes)
    problems = [
        *_code_problem("modality", parsed.modality, tuple(MODALITY_NAMES), "01-03"),
        *_code_problem("vocal channel", parsed.vocal_channel, ("01", "02"), "01/02"),
        *_code_problem("emotion", parsed.emotion, tuple(RAVDESS_EMOTION_CODES), "01-08"),
        *_code_problem("intensity", parsed.intensity, ("01", "02"), "01/02"),
        *_code_problem("statement", parsed.statement, ("01", "02"), "01/02"),
        *_code_problem("repetition", parsed.repetition, ("01", "02"), "01/02"),
        *_code_problem("actor", parsed.actor, tuple(f"{i:02d}" for i in range(1, 25)), "01-24"),
    ]
    if parsed.emotion == "01" and parsed.intensity == "02":
        problems.append("neutral (emotion 01) has no strong intensity (02)")
    if parsed.modality in (FULL_AV, VIDEO_ONLY) and extension not in VIDEO_EXTENSIONS:
        problems.append(
            f"modality {parsed.modality} ({MODALITY_NAMES[parsed.modality]}) needs a video "
            f"container ({' '.join(VIDEO_EXTENSIONS)}), not {extension or 'no extension'}"
        )
    if parsed.modality == AUDIO_ONLY and extension not in AUDIO_EXTENSIONS:
        problems.append(
            f"modality 03 (audio-only) needs an audio file ({' '.join(AUDIO_EXTENSIONS)}), "
            f"not {extension or 'no extension'}"
        )
    if problems:
        raise ValueError(f"{name}: {'; '.join(problems)}")
    return parsed


def _clip(clip_id: str, name: RavdessName, video_uri: str | None, audio_uri: str | None) -> Clip:
    return Clip(
        clip_id=clip_id,
        dataset=DATASET,
        actor=name.actor,
        label=name.label,
        video_uri=video_uri,
        audio_uri=audio_uri,
    )


def list_ravdess(root: str, storage_options: Mapping[str, str] | None = None) -> ClipListing:
    """List the RAVDESS clips under ``root`` (a local folder or ``s3://bucket/prefix``).

    Clips come back sorted by ``clip_id``, rejected files sorted by URI. Raises
    FileNotFoundError when ``root`` does not exist.
    """
    listing = ClipListing(dataset=DATASET)
    # (modality, recording id) -> (uri, parsed name); files arrive sorted, so the first
    # copy of a recording wins deterministically and later copies are reported.
    recordings: dict[tuple[str, str], tuple[str, RavdessName]] = {}
    for uri in list_files(root, storage_options):
        file_name, _, extension = split_file_name(uri)
        if extension not in MEDIA_EXTENSIONS:
            continue
        try:
            parsed = parse_ravdess_name(file_name)
        except ValueError as error:
            listing.rejected.append(RejectedFile(uri=uri, reason=str(error)))
            continue
        key = (parsed.modality, parsed.recording_id)
        if key in recordings:
            first_uri = recordings[key][0]
            listing.rejected.append(
                RejectedFile(
                    uri=uri,
                    reason=f"{file_name}: same recording as {first_uri}, which is listed",
                )
            )
            continue
        recordings[key] = (uri, parsed)

    for (modality, recording_id), (uri, parsed) in recordings.items():
        stem = split_file_name(uri)[1]
        if modality == FULL_AV:
            listing.clips.append(_clip(stem, parsed, uri, uri))
        elif modality == VIDEO_ONLY:
            partner = recordings.get((AUDIO_ONLY, recording_id))
            if partner is None:
                listing.clips.append(_clip(stem, parsed, uri, None))
            else:
                listing.clips.append(_clip(PAIRED_PREFIX + recording_id, parsed, uri, partner[0]))
        elif (VIDEO_ONLY, recording_id) not in recordings:
            # An audio-only file with a video-only partner was consumed by the pair above.
            listing.clips.append(_clip(stem, parsed, None, uri))

    listing.clips.sort(key=lambda clip: clip.clip_id)
    listing.rejected.sort(key=lambda rejected: rejected.uri)
    return listing

"""RAVDESS adapter: clips, labels and actors from ``MM-VV-EE-II-SS-RR-AA.ext`` file names.

The seven two-digit codes are modality (01 full audio-visual, 02 video-only, 03
audio-only), vocal channel (01 speech, 02 song), emotion (01-08, see
``orchestrate.emotions``), intensity (01 normal, 02 strong; neutral has no strong),
statement (01/02), repetition (01/02) and actor (01-24). The release ships each recording
three ways; a recording (``recording_id``, the six codes after the modality) becomes one
clip, from the best source present, so one take can never land on both sides of a split:

- a ``01-…`` file (full AV, a video container): ``video_uri == audio_uri`` = the file,
  ``clip_id`` = the file's stem;
- else a ``02-…`` (video-only) and a ``03-…`` (audio-only) file: video from the 02 file and
  audio from the 03 file, ``clip_id`` = ``"02+03-" + VV-EE-II-SS-RR-AA``;
- else a lone 02 file: a video-only clip (``audio_uri`` None), ``clip_id`` = stem;
- else a lone 03 file: an audio-only clip (``video_uri`` None), ``clip_id`` = stem.

The 02 and 03 files of a recording listed from its 01 file are reported in
``ClipListing.rejected`` ("recording … already listed from …"), never dropped silently.

``vocal_channel`` (``dataset.vocal_channel``) picks the channel: ``speech`` (the papers'
choice, the default), ``song`` or ``all``. Files of the other channel are not clips: they
are left out of the listing and counted in ``ClipListing.skipped``.

Labels and actors come from the name only. A media file (see ``MEDIA_EXTENSIONS``) whose
name does not parse, whose extension does not suit its modality, or which repeats a
file already listed (same name in another folder, or another container) is reported
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
    DatasetAdapter,
    RejectedFile,
    split_file_name,
)
from orchestrate.datasets.filesystem import list_files
from orchestrate.emotions import RAVDESS_EMOTION_CODES

DATASET = "ravdess"
FULL_AV, VIDEO_ONLY, AUDIO_ONLY = "01", "02", "03"
MODALITY_NAMES = {FULL_AV: "full audio-visual", VIDEO_ONLY: "video-only", AUDIO_ONLY: "audio-only"}
PAIRED_PREFIX = "02+03-"
# dataset.vocal_channel -> the vocal channel codes it keeps.
VOCAL_CHANNELS: dict[str, tuple[str, ...]] = {
    "speech": ("01",),
    "song": ("02",),
    "all": ("01", "02"),
}
VOCAL_CHANNEL_NAMES = {"01": "speech", "02": "song"}

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


def list_ravdess(
    root: str,
    storage_options: Mapping[str, str] | None = None,
    vocal_channel: str = "speech",
) -> ClipListing:
    """List the RAVDESS clips under ``root`` (a local folder or ``s3://bucket/prefix``).

    One clip per recording of ``vocal_channel`` (``speech``, ``song`` or ``all``; see the
    module docstring). Clips come back sorted by ``clip_id``, rejected files sorted by URI.
    Raises ValueError for an unknown ``vocal_channel`` and FileNotFoundError when ``root``
    does not exist.
    """
    if vocal_channel not in VOCAL_CHANNELS:
        raise ValueError(
            f"vocal channel {vocal_channel!r} is not one of {', '.join(VOCAL_CHANNELS)}"
        )
    listing = ClipListing(dataset=DATASET)
    # recording id -> modality -> [(uri, parsed name)]; files arrive sorted, so the first
    # copy of each modality wins deterministically and later copies are reported.
    recordings: dict[str, dict[str, list[tuple[str, RavdessName]]]] = {}
    for uri in list_files(root, storage_options):
        file_name, _, extension = split_file_name(uri)
        if extension not in MEDIA_EXTENSIONS:
            continue
        try:
            parsed = parse_ravdess_name(file_name)
        except ValueError as error:
            listing.rejected.append(RejectedFile(uri=uri, reason=str(error)))
            continue
        if parsed.vocal_channel not in VOCAL_CHANNELS[vocal_channel]:
            channel = VOCAL_CHANNEL_NAMES[parsed.vocal_channel]
            reason = (
                f"files of the {channel} channel left out (dataset.vocal_channel={vocal_channel})"
            )
            listing.skipped[reason] = listing.skipped.get(reason, 0) + 1
            continue
        by_modality = recordings.setdefault(parsed.recording_id, {})
        by_modality.setdefault(parsed.modality, []).append((uri, parsed))

    for recording_id, by_modality in recordings.items():
        clip = _recording_clip(recording_id, by_modality)
        listing.clips.append(clip)
        listed = {clip.video_uri, clip.audio_uri} - {None}
        for files in by_modality.values():
            first_uri = files[0][0]
            for uri, _ in files:
                if uri in listed:
                    continue
                file_name = split_file_name(uri)[0]
                if first_uri in listed:
                    # Another copy of a file that is listed (another folder or container).
                    reason = f"{file_name}: same recording as {first_uri}, which is listed"
                else:
                    # Only a full-AV file supersedes other modalities: it is the clip's one URI.
                    reason = (
                        f"{file_name}: recording {recording_id} already listed from "
                        f"{clip.video_uri}"
                    )
                listing.rejected.append(RejectedFile(uri=uri, reason=reason))

    listing.clips.sort(key=lambda clip: clip.clip_id)
    listing.rejected.sort(key=lambda rejected: rejected.uri)
    return listing


def _recording_clip(
    recording_id: str, by_modality: dict[str, list[tuple[str, RavdessName]]]
) -> Clip:
    """The one clip of a recording: full AV, else video-only + audio-only, else either alone."""
    full, video, audio = (by_modality.get(m, [None])[0] for m in (FULL_AV, VIDEO_ONLY, AUDIO_ONLY))
    if full is not None:
        uri, parsed = full
        return _clip(split_file_name(uri)[1], parsed, uri, uri)
    if video is not None and audio is not None:
        return _clip(PAIRED_PREFIX + recording_id, video[1], video[0], audio[0])
    if video is not None:
        return _clip(split_file_name(video[0])[1], video[1], video[0], None)
    assert audio is not None  # a recording has at least one file
    return _clip(split_file_name(audio[0])[1], audio[1], None, audio[0])


ADAPTER = DatasetAdapter(
    name="ravdess",
    yields="clips",
    description="RAVDESS: Actor_NN/ folders of MM-VV-EE-II-SS-RR-AA clips (video, audio or both)",
    list_clips=list_ravdess,
)

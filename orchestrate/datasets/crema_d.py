"""CREMA-D adapter: clips, labels and actors from ``AAAA_SSS_EEE_II.ext`` file names.

``AAAA`` is the actor (1001-1091), ``SSS`` the sentence (three uppercase letters), ``EEE``
the emotion (ANG DIS FEA HAP NEU SAD) and ``II`` the intensity (LO MD HI, XX unspecified).
The release ships each clip as video (``.flv``, ``.mp4``: picture and sound) and as audio
(``.wav``, ``.mp3``), in separate folders; files are matched by stem across the whole root:

- a video with an audio file of the same stem: one clip, ``video_uri`` = the video,
  ``audio_uri`` = the audio file;
- a video alone: its own container provides the sound (``audio_uri`` = the video file);
- an audio file alone: an audio-only clip (``video_uri`` None).

``clip_id`` is the stem. When a clip comes in several encodings, ``.flv`` is used over
``.mp4`` (the release's original video encoding) and ``.wav`` over ``.mp3`` (lossless); the
others, and repeated copies of one file, are reported in ``ClipListing.rejected`` so that
nothing disappears silently. Media files (``MEDIA_EXTENSIONS``) whose names do not parse or
whose extension CREMA-D does not use are rejected with a one-line reason; files with other
extensions are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrate.datasets.base import (
    MEDIA_EXTENSIONS,
    Clip,
    ClipListing,
    DatasetAdapter,
    RejectedFile,
    split_file_name,
)
from orchestrate.datasets.filesystem import list_files

DATASET = "crema-d"
# In order of preference (see the module docstring).
CREMA_D_VIDEO_EXTENSIONS = (".flv", ".mp4")
CREMA_D_AUDIO_EXTENSIONS = (".wav", ".mp3")
CREMA_D_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
CREMA_D_INTENSITIES = ("LO", "MD", "HI", "XX")
FIRST_ACTOR, LAST_ACTOR = 1001, 1091


@dataclass(frozen=True)
class CremaDName:
    """The four fields of a CREMA-D file name."""

    actor: str
    sentence: str
    emotion: str
    intensity: str

    @property
    def label(self) -> str:
        """The canonical emotion name (``orchestrate.emotions.EMOTIONS``)."""
        return CREMA_D_EMOTIONS[self.emotion]


def parse_crema_d_name(name: str) -> CremaDName:
    """Parse a CREMA-D file name (``1001_DFA_ANG_XX.flv``), checking every field.

    Raises ValueError with a one-line reason starting with the file name; several problems
    are joined with ``; ``.
    """
    _, stem, extension = split_file_name(name)
    fields = stem.split("_")
    if len(fields) != 4:
        raise ValueError(f"{name}: name is not AAAA_SSS_EEE_II (actor_sentence_emotion_intensity)")
    parsed = CremaDName(*fields)
    problems = []
    actor_ok = re.fullmatch(r"\d{4}", parsed.actor) is not None
    if not (actor_ok and FIRST_ACTOR <= int(parsed.actor) <= LAST_ACTOR):
        problems.append(f"actor {parsed.actor} is not one of {FIRST_ACTOR}-{LAST_ACTOR}")
    if not re.fullmatch(r"[A-Z]{3}", parsed.sentence):
        problems.append(f"sentence code {parsed.sentence} is not three uppercase letters")
    if parsed.emotion not in CREMA_D_EMOTIONS:
        problems.append(f"emotion code {parsed.emotion} is not one of {' '.join(CREMA_D_EMOTIONS)}")
    if parsed.intensity not in CREMA_D_INTENSITIES:
        problems.append(
            f"intensity code {parsed.intensity} is not one of {' '.join(CREMA_D_INTENSITIES)}"
        )
    if extension not in CREMA_D_VIDEO_EXTENSIONS + CREMA_D_AUDIO_EXTENSIONS:
        videos, audios = " ".join(CREMA_D_VIDEO_EXTENSIONS), " ".join(CREMA_D_AUDIO_EXTENSIONS)
        problems.append(
            f"{extension or 'no extension'} is not a CREMA-D video ({videos}) or audio ({audios})"
        )
    if problems:
        raise ValueError(f"{name}: {'; '.join(problems)}")
    return parsed


def _preferred(uris: list[str], extensions: tuple[str, ...]) -> list[str]:
    """``uris`` best first: by extension preference, then by URI (deterministic)."""
    return sorted(uris, key=lambda uri: (extensions.index(split_file_name(uri)[2]), uri))


def list_crema_d(
    root: str,
    storage_options: Mapping[str, str] | None = None,
    vocal_channel: str = "speech",
) -> ClipListing:
    """List the CREMA-D clips under ``root`` (a local folder or ``s3://bucket/prefix``).

    ``vocal_channel`` is not used: CREMA-D has no vocal channel (it is taken so that every
    adapter has the registry's one signature). Clips come back sorted by ``clip_id``,
    rejected files sorted by URI. Raises FileNotFoundError when ``root`` does not exist.
    """
    listing = ClipListing(dataset=DATASET)
    names: dict[str, CremaDName] = {}
    videos: dict[str, list[str]] = {}
    audios: dict[str, list[str]] = {}
    for uri in list_files(root, storage_options):
        file_name, stem, extension = split_file_name(uri)
        if extension not in MEDIA_EXTENSIONS:
            continue
        try:
            names[stem] = parse_crema_d_name(file_name)
        except ValueError as error:
            listing.rejected.append(RejectedFile(uri=uri, reason=str(error)))
            continue
        found = videos if extension in CREMA_D_VIDEO_EXTENSIONS else audios
        found.setdefault(stem, []).append(uri)

    for stem, parsed in names.items():
        video_uris = _preferred(videos.get(stem, []), CREMA_D_VIDEO_EXTENSIONS)
        audio_uris = _preferred(audios.get(stem, []), CREMA_D_AUDIO_EXTENSIONS)
        video_uri = video_uris[0] if video_uris else None
        # A video without a separate audio file carries its own sound track.
        audio_uri = audio_uris[0] if audio_uris else video_uri
        listing.clips.append(
            Clip(
                clip_id=stem,
                dataset=DATASET,
                actor=parsed.actor,
                label=parsed.label,
                video_uri=video_uri,
                audio_uri=audio_uri,
            )
        )
        for used, unused in ((video_uri, video_uris[1:]), (audio_uri, audio_uris[1:])):
            for uri in unused:
                listing.rejected.append(
                    RejectedFile(
                        uri=uri,
                        reason=f"{split_file_name(uri)[0]}: another copy or encoding of clip "
                        f"{stem}, which uses {used}",
                    )
                )

    listing.clips.sort(key=lambda clip: clip.clip_id)
    listing.rejected.sort(key=lambda rejected: rejected.uri)
    return listing


ADAPTER = DatasetAdapter(
    name="crema-d",
    yields="clips",
    description="CREMA-D: AAAA_SSS_EEE_II clips (VideoFlash/ and AudioWAV/)",
    list_clips=list_crema_d,
)

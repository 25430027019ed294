"""The emotion vocabulary shared by every dataset adapter, extractor and task."""

# Canonical emotion names, in RAVDESS code order (code 01 = neutral ... 08 = surprised).
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)

RAVDESS_EMOTION_CODES: dict[str, str] = {f"{i + 1:02d}": name for i, name in enumerate(EMOTIONS)}

# Names datasets give the emotions (SFEW's folders Angry/ ... Surprise/, FER-2013's and
# AffectNet's class names, CREMA-D's codes), lowercased, to the canonical names above.
EMOTION_SYNONYMS: dict[str, str] = {
    **{name: name for name in EMOTIONS},
    "neu": "neutral",
    "happiness": "happy",
    "hap": "happy",
    "joy": "happy",
    "sadness": "sad",
    "anger": "angry",
    "ang": "angry",
    "fear": "fearful",
    "fea": "fearful",
    "afraid": "fearful",
    "disgusted": "disgust",
    "dis": "disgust",
    "surprise": "surprised",
    "sur": "surprised",
}


def emotion_named(name: str) -> str | None:
    """The canonical emotion a dataset's name for it means (case-insensitive), or None."""
    return EMOTION_SYNONYMS.get(name.strip().lower())

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

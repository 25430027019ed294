"""Feature table: per-clip features computed elsewhere (OpenFace, openSMILE, a lab's own).

``dataset.root`` is one ``.csv`` or ``.parquet`` file (never a pickle), local or
``s3://``, one row per clip:

- a clip-id column (``dataset.clip_id_column``, default ``clip_id``);
- the label and the actor as columns (``dataset.label_column``, ``dataset.actor_column``;
  a label is an emotion name in any case, or a usual synonym: ``anger``, ``happiness``,
  ``fear``, ``surprise``, ...) or parsed from the clip id with a dataset's naming
  (``dataset.naming``: ``ravdess`` or ``crema-d``, the adapters' own parsers; an id
  without a media extension is read as that dataset's file). A column wins over the
  naming; with neither an actor column nor a naming, each clip is its own actor (folds
  are then k-fold over clips);
- feature columns, grouped into named modalities by ``dataset.modalities``: modality →
  a glob pattern (``"mfcc_*"``) or a list of patterns (an exact column name matches
  itself), matched case-sensitively against the columns other than id, label and actor.
  A column may belong to several modalities (``lpq`` and ``video`` both holding
  ``lpq_*``, say).

Each modality becomes one float32 array per clip, stored under the extractor key
``feature_table`` (``StoredAs.arrays`` = the modality names) through the store's one row
schema; tasks read ``feature_table.<modality>``, and ``orchestrate.features`` serves any
task column ``<extractor>.<modality>`` or ``modality.<modality>`` from it. The key's
parameter hash covers the mapping and the column settings; every row's content hash
covers the table file's bytes, so a changed table or mapping is never served stale.

Bad input. A missing clip-id, label or actor column, a modality pattern that matches no
column, or a file that is not CSV/Parquet stops the ingest with one line. A row with a
missing or non-numeric feature value, an unknown label, a clip id the naming does not
parse, or a repeated clip id is rejected with a one-line reason (``<table>#row <n>``, the
header being row 1) and left out: nothing is imputed. A clip id listed twice with
different labels is rejected on every row (which label is right cannot be told); a
repeat with the same label is rejected as a repeat of the first row.
"""

from __future__ import annotations

import fnmatch
import io
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrate.config import ConfigError, DatasetConfig
from orchestrate.datasets import crema_d, ravdess
from orchestrate.datasets.base import (
    MEDIA_EXTENSIONS,
    DatasetAdapter,
    FeatureTable,
    RejectedFile,
    StoredAs,
    split_file_name,
)
from orchestrate.datasets.filesystem import read_bytes
from orchestrate.emotions import EMOTIONS, emotion_named
from orchestrate.errors import InputError
from orchestrate.extractors.base import param_hash

NAME = "feature-table"
EXTRACTOR = "feature_table"
VERSION = "1"
TABLE_FORMATS = (".csv", ".parquet", ".pq")
NAMINGS = (ravdess.DATASET, crema_d.DATASET)
# Row fields of the table's rows and of the store's row schema: no modality may take them.
RESERVED = frozenset(
    {"clip_id", "label", "group", "dataset", "actor", "source_uri", "content_hash", "extractor"}
    | {"version", "param_hash", "status", "reason", "source_identity"}
)
_MODALITY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The DatasetConfig keys only this adapter reads, with their defaults.
TABLE_KEYS: dict[str, Any] = {
    "clip_id_column": "clip_id",
    "label_column": None,
    "actor_column": None,
    "naming": None,
    "modalities": {},
}


def check_table_config(dataset: DatasetConfig) -> None:
    """The ``dataset.*`` keys of a feature table, checked before any work (ConfigError)."""
    if dataset.name != NAME:
        for key, default in TABLE_KEYS.items():
            if getattr(dataset, key) != default:
                raise ConfigError(
                    f"dataset.{key}: only the {NAME} dataset reads it (dataset.name is "
                    f"{dataset.name})"
                )
        return
    if not dataset.modalities:
        raise ConfigError(
            "dataset.modalities: give the table's modalities, e.g. "
            "dataset.modalities.audio='mfcc_*' (a glob pattern or a list of them)"
        )
    for name, patterns in dataset.modalities.items():
        if not _MODALITY_NAME.fullmatch(str(name)) or name in RESERVED:
            raise ConfigError(
                f"dataset.modalities.{name}: a modality name is letters, digits and _, "
                f"and not one of the row fields ({', '.join(sorted(RESERVED))})"
            )
        listed = [patterns] if isinstance(patterns, str) else patterns
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(p, str) and p.strip() for p in listed)
        ):
            raise ConfigError(
                f"dataset.modalities.{name}: must be a glob pattern or a list of column "
                f"names/patterns, got {patterns!r}"
            )
    if not dataset.clip_id_column:
        raise ConfigError("dataset.clip_id_column: must name the table's clip-id column")
    if dataset.naming is not None and dataset.naming not in NAMINGS:
        raise ConfigError(f"dataset.naming: {dataset.naming!r} is not one of {', '.join(NAMINGS)}")
    if dataset.label_column is None and dataset.naming is None:
        raise ConfigError(
            "dataset.label_column: give the table's label column, or dataset.naming "
            f"({', '.join(NAMINGS)}) to parse labels from the clip ids"
        )
    if dataset.root is not None and split_file_name(dataset.root)[2] not in TABLE_FORMATS:
        raise ConfigError(
            f"dataset.root: a feature table is a .csv or .parquet file (never a pickle), "
            f"got {dataset.root}"
        )


def modality_patterns(dataset: DatasetConfig) -> dict[str, list[str]]:
    """``dataset.modalities`` with every value as a list of patterns, in the config's order."""
    return {
        str(name): [patterns] if isinstance(patterns, str) else [str(p) for p in patterns]
        for name, patterns in dataset.modalities.items()
    }


def table_stored_as(dataset: DatasetConfig) -> StoredAs:
    """The key the table's rows are stored under: one array per modality, hashed mapping."""
    settings = {
        "clip_id_column": dataset.clip_id_column,
        "modalities": modality_patterns(dataset),
    }
    return StoredAs(EXTRACTOR, VERSION, param_hash(settings), tuple(modality_patterns(dataset)))


def _shown(columns: list[str], limit: int = 12) -> str:
    more = f", ... ({len(columns)} in all)" if len(columns) > limit else ""
    return ", ".join(columns[:limit]) + more


def _read_frame(uri: str, storage_options: Mapping[str, str] | None) -> pd.DataFrame:
    """The table as text cells (CSV) or as stored (Parquet); one-line InputError otherwise."""
    extension = split_file_name(uri)[2]
    if extension not in TABLE_FORMATS:
        raise InputError(
            f"{uri}: a feature table is .csv or .parquet (never a pickle), "
            f"not {extension or 'a file without extension'}"
        )
    content = read_bytes(uri, storage_options)
    try:
        if extension == ".csv":
            # Text first: ids such as "01" stay as written; features are parsed per column.
            return pd.read_csv(io.BytesIO(content), dtype=str, skipinitialspace=True)
        return pq.read_table(io.BytesIO(content)).to_pandas()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException) as error:
        message = " ".join(str(error).split())
        raise InputError(f"{uri}: not a readable {extension[1:]} table ({message})") from None


def modality_columns(
    uri: str, candidates: list[str], modalities: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Each modality's columns in table order; a pattern matching nothing is an InputError."""
    groups: dict[str, list[str]] = {}
    for name, patterns in modalities.items():
        matched: list[str] = []
        for pattern in patterns:
            hits = [column for column in candidates if fnmatch.fnmatchcase(column, pattern)]
            if not hits:
                raise InputError(
                    f"dataset.modalities.{name}: {pattern!r} matches no column of {uri} "
                    f"(feature columns: {_shown(candidates)})"
                )
            matched += [column for column in hits if column not in matched]
        groups[name] = [column for column in candidates if column in matched]
    return groups


def _text(value: Any) -> str:
    """A cell as stripped text ("" for a missing one)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if value is pd.NA or value is pd.NaT:
        return ""
    return str(value).strip()


def _media_name(clip_id: str, naming: str) -> str:
    """The clip id as the file name its dataset's parser reads (an extension added if none)."""
    if split_file_name(clip_id)[2] in MEDIA_EXTENSIONS:
        return clip_id
    if naming == ravdess.DATASET:
        return clip_id + (".wav" if clip_id.startswith(f"{ravdess.AUDIO_ONLY}-") else ".mp4")
    return clip_id + crema_d.CREMA_D_VIDEO_EXTENSIONS[0]


def parse_clip_id(clip_id: str, naming: str) -> tuple[str, str]:
    """``(label, actor)`` from a clip id in ``naming``; ValueError (one line) otherwise."""
    name = _media_name(clip_id, naming)
    try:
        if naming == ravdess.DATASET:
            parsed_ravdess = ravdess.parse_ravdess_name(name)
            return parsed_ravdess.label, parsed_ravdess.actor
        parsed_crema = crema_d.parse_crema_d_name(name)
        return parsed_crema.label, parsed_crema.actor
    except ValueError as error:
        raise ValueError(str(error).replace(name, clip_id, 1)) from None


def read_feature_table(
    dataset: DatasetConfig, storage_options: Mapping[str, str] | None = None
) -> FeatureTable:
    """Read the feature table ``dataset.root`` under ``dataset``'s column settings.

    Raises MissingInput when the file is missing and InputError (one line) for a file that
    is not a CSV/Parquet table, a missing clip-id, label or actor column, or a modality
    pattern that matches no column. Bad rows are listed in ``FeatureTable.rejected``.
    """
    uri = dataset.root
    if uri is None:
        raise InputError("dataset.root: give the feature table's .csv or .parquet file")
    frame = _read_frame(uri, storage_options)
    frame.columns = [str(column) for column in frame.columns]
    columns = list(frame.columns)
    named = {
        "clip_id_column": ("clip-id", dataset.clip_id_column),
        "label_column": ("label", dataset.label_column),
        "actor_column": ("actor", dataset.actor_column),
    }
    for key, (what, column) in named.items():
        if column is not None and column not in columns:
            raise InputError(
                f"{uri}: no {what} column {column!r} (dataset.{key}); columns: {_shown(columns)}"
            )
    reserved = {column for _, column in named.values() if column is not None}
    candidates = [column for column in columns if column not in reserved]
    groups = modality_columns(uri, candidates, modality_patterns(dataset))

    used = list(dict.fromkeys(column for group in groups.values() for column in group))
    values: dict[str, np.ndarray] = {}
    blank: dict[str, np.ndarray] = {}
    for column in used:
        cells = frame[column]
        text = cells.astype("string").str.strip()
        blank[column] = (cells.isna() | (text == "")).to_numpy(dtype=bool)
        values[column] = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)

    rejected: list[RejectedFile] = []
    accepted: list[tuple[int, dict[str, Any]]] = []
    for index in range(len(frame)):
        row_number = index + 2  # the header is row 1
        clip_id = _text(frame[dataset.clip_id_column].iloc[index])
        problems: list[str] = []
        label: str | None = None
        actor: str | None = None
        if not clip_id:
            problems.append("missing clip id")
        elif dataset.naming is not None:
            try:
                label, actor = parse_clip_id(clip_id, dataset.naming)
            except ValueError as error:
                problems.append(str(error))
        if dataset.label_column is not None:
            cell = _text(frame[dataset.label_column].iloc[index])
            label = emotion_named(cell)
            if not cell:
                problems.append("missing label")
            elif label is None:
                problems.append(f"unknown label {cell!r} (known: {', '.join(EMOTIONS)})")
        if dataset.actor_column is not None:
            actor = _text(frame[dataset.actor_column].iloc[index])
            if not actor:
                problems.append("missing actor")
        elif dataset.naming is None:
            actor = clip_id
        arrays: dict[str, np.ndarray] = {}
        for modality, group in groups.items():
            missing = [column for column in group if blank[column][index]]
            bad = [
                f"{column}={_text(frame[column].iloc[index])!r}"
                for column in group
                if not blank[column][index] and not math.isfinite(values[column][index])
            ]
            if missing:
                problems.append(f"missing {modality} value(s): {_shown(missing, 5)}")
            if bad:
                problems.append(f"not a finite number ({modality}): {_shown(bad, 5)}")
            arrays[modality] = np.array([values[c][index] for c in group], dtype=np.float32)
        if problems:
            rejected.append(_rejected_row(uri, row_number, clip_id, problems))
            continue
        accepted.append(
            (row_number, {"clip_id": clip_id, "label": label, "group": actor, **arrays})
        )
    rows = []
    for row_number, row, problem in _without_repeats(accepted):
        if problem:
            rejected.append(_rejected_row(uri, row_number, row["clip_id"], [problem]))
        else:
            rows.append(row)
    rejected.sort(key=lambda entry: int(entry.uri.rsplit(" ", 1)[1]))
    frame_columns = ["clip_id", "label", "group", *groups]
    return FeatureTable(uri=uri, rows=pd.DataFrame(rows, columns=frame_columns), rejected=rejected)


def _rejected_row(uri: str, row_number: int, clip_id: str, problems: list[str]) -> RejectedFile:
    shown = clip_id or "no clip id"
    return RejectedFile(
        f"{uri}#row {row_number}", f"row {row_number} ({shown}): {'; '.join(problems)}"
    )


def _without_repeats(
    accepted: list[tuple[int, dict[str, Any]]],
) -> list[tuple[int, dict[str, Any], str | None]]:
    """Each usable row with the reason to reject it for repeating a clip id, if any."""
    rows_of: dict[str, list[tuple[int, str]]] = {}
    for row_number, row in accepted:
        rows_of.setdefault(row["clip_id"], []).append((row_number, row["label"]))
    decided: list[tuple[int, dict[str, Any], str | None]] = []
    for row_number, row in accepted:
        listed = rows_of[row["clip_id"]]
        if len({label for _, label in listed}) > 1:
            others = ", ".join(f"row {n} as {label}" for n, label in listed if n != row_number)
            decided.append(
                (row_number, row, f"clip also labelled in {others} (conflicting labels)")
            )
        elif listed[0][0] != row_number:
            decided.append((row_number, row, f"clip id repeats row {listed[0][0]}"))
        else:
            decided.append((row_number, row, None))
    return decided


ADAPTER = DatasetAdapter(
    name=NAME,
    yields="feature-table",
    description="per-clip features computed elsewhere (CSV/Parquet), grouped into modalities",
    read_table=read_feature_table,
    stored_as_for=table_stored_as,
)

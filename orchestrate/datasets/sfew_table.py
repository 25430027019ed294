"""SFEW feature table: LPQ and PHOG principal components per image, as in ``SFEW.xlsx``.

Layout (first sheet): a header row with ``label`` in column B, a heading naming LPQ in
column C and one naming PHOG in column H; then one row per image: A the image name
(``<Movie>_<timestamp>_<frame>.mat``), B the label code (1 angry, 2 disgust, 3 fearful,
4 happy, 5 neutral, 6 sad, 7 surprised), C-G five LPQ components, H-L five PHOG
components. Blank rows are skipped.

``clip_id`` is the image name without its ``.mat`` suffix (the per-image feature file the
table was built from); ``group`` is the movie the image was taken from, so that folds can
keep a movie's images together. A row with a missing or non-numeric value, an unknown
label code or an image name without the ``<Movie>_<timestamp>_<frame>`` shape is reported
in ``SfewTable.rejected`` (uri ``<table uri>#row <n>``, with spreadsheet row numbers, the
header being row 1), never repaired. An image name listed twice with different labels is
rejected on every row (which label is right cannot be told); a repeat with the same label
is rejected as a duplicate of the first row.
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
import openpyxl
import pandas as pd
from openpyxl.utils.exceptions import InvalidFileException

from orchestrate.datasets.base import DatasetAdapter, FeatureTable, RejectedFile, StoredAs
from orchestrate.datasets.filesystem import read_bytes
from orchestrate.errors import InputError

if TYPE_CHECKING:
    from orchestrate.config import DatasetConfig

SFEW_LABELS: dict[int, str] = {
    1: "angry",
    2: "disgust",
    3: "fearful",
    4: "happy",
    5: "neutral",
    6: "sad",
    7: "surprised",
}
LPQ_COLUMNS = tuple(f"lpq_{i}" for i in range(1, 6))
PHOG_COLUMNS = tuple(f"phog_{i}" for i in range(1, 6))
ROW_COLUMNS = ("clip_id", "label", "group", "lpq", "phog")

# Movie names may hold underscores ("HarryPotter_Deathly_Hallows_1", "50_50"); the real
# table also writes the separators as "-" or "__" in a few names.
_IMAGE_NAME = re.compile(r"(?P<movie>.+?)[_-]+(?P<timestamp>\d+)_+(?P<frame>\d+)")


@dataclass
class SfewTable(FeatureTable):
    """The usable rows of an SFEW feature table and the rows that were rejected.

    ``rows`` has the columns ``clip_id``, ``label`` (canonical emotion name), ``group``
    (movie), ``lpq`` and ``phog`` (each a float32 array of 5 components), in file order.
    """

    def feature_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lpq, phog)``: two float32 matrices of shape (rows, 5), in row order."""
        if self.rows.empty:
            empty = np.zeros((0, len(LPQ_COLUMNS)), dtype=np.float32)
            return empty, empty.copy()
        return np.stack(self.rows["lpq"].to_list()), np.stack(self.rows["phog"].to_list())


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else "(empty)"


def _check_header(uri: str, header: Sequence[Any]) -> None:
    cells = [_one_line(cell).lower() if cell is not None else "" for cell in header]
    cells += [""] * (12 - len(cells))
    if cells[1] != "label" or "lpq" not in cells[2] or "phog" not in cells[7]:
        found = ", ".join(
            f"{chr(ord('A') + i)}={_one_line(cell)[:40]!r}" for i, cell in enumerate(header[:12])
        )
        raise InputError(
            f"{uri}: not the SFEW.xlsx layout (header row needs 'label' in B, an LPQ heading "
            f"in C and a PHOG heading in H, then 12 columns: image, label, 5 LPQ, 5 PHOG); "
            f"found {found}"
        )


# Spellings of "no value" in spreadsheets; the real SFEW.xlsx writes the missing PHOG cells
# of one row as the text "NaN".
_MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "#n/a", "null", "none"})


def _is_blank(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and value.strip().lower() in _MISSING_TEXT)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _read_sheet(uri: str, storage_options: Mapping[str, str] | None) -> list[tuple[Any, ...]]:
    content = read_bytes(uri, storage_options)
    with warnings.catch_warnings():
        # SFEW.xlsx carries an Excel extension openpyxl does not read; it holds no data.
        warnings.filterwarnings("ignore", message="Unknown extension", category=UserWarning)
        try:
            workbook = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
        except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as error:
            message = _one_line(error)
            raise InputError(f"{uri}: not a readable .xlsx workbook ({message})") from None
        try:
            return list(workbook.worksheets[0].iter_rows(values_only=True))
        finally:
            workbook.close()


def read_sfew_table(uri: str, storage_options: Mapping[str, str] | None = None) -> SfewTable:
    """Read an SFEW feature table (``SFEW.xlsx`` layout) from a local path or ``s3://`` URI.

    Raises FileNotFoundError when the file is missing and ValueError (one line, naming the
    file) when it is not a workbook or its header is not the expected layout. Bad rows do
    not raise: they are listed in ``SfewTable.rejected``.
    """
    sheet = _read_sheet(uri, storage_options)
    if not sheet:
        raise InputError(f"{uri}: the first sheet is empty, expected the SFEW.xlsx layout")
    _check_header(uri, sheet[0])

    accepted: list[tuple[int, dict[str, Any]]] = []
    rejected: list[RejectedFile] = []
    for row_number, cells in enumerate(sheet[1:], start=2):
        cells = tuple(cells) + (None,) * (12 - len(cells))
        if all(_is_blank(cell) for cell in cells):
            continue
        row, problems = _parse_row(cells)
        if problems:
            rejected.append(_rejected_row(uri, row_number, row["clip_id"], problems))
        else:
            accepted.append((row_number, row))

    rows: list[dict[str, Any]] = []
    for row_number, row, problem in _without_repeats(accepted):
        if problem:
            rejected.append(_rejected_row(uri, row_number, row["clip_id"], [problem]))
        else:
            rows.append(row)
    rejected.sort(key=lambda entry: int(entry.uri.rsplit(" ", 1)[1]))
    return SfewTable(uri=uri, rows=pd.DataFrame(rows, columns=list(ROW_COLUMNS)), rejected=rejected)


def _parse_row(cells: Sequence[Any]) -> tuple[dict[str, Any], list[str]]:
    """One data row as a ``rows`` record, and what is wrong with it (empty when usable)."""
    problems: list[str] = []
    image_name = "" if _is_blank(cells[0]) else str(cells[0]).strip()
    clip_id = re.sub(r"\.mat$", "", image_name, flags=re.IGNORECASE)
    movie = _IMAGE_NAME.fullmatch(clip_id)
    if not image_name:
        problems.append("missing image name")
    elif movie is None:
        problems.append(f"image name {image_name} is not <Movie>_<timestamp>_<frame>")

    label = None
    if _is_blank(cells[1]):
        problems.append("missing label")
    else:
        code = _number(cells[1])
        if code is None or not code.is_integer() or int(code) not in SFEW_LABELS:
            problems.append(f"label code {_one_line(cells[1])} is not one of 1-7")
        else:
            label = SFEW_LABELS[int(code)]

    missing: list[str] = []
    non_numeric: list[str] = []
    values: list[float] = []
    for column, cell in zip(LPQ_COLUMNS + PHOG_COLUMNS, cells[2:12], strict=True):
        number = None if _is_blank(cell) else _number(cell)
        if _is_blank(cell):
            missing.append(column)
        elif number is None:
            non_numeric.append(f"{column}={_one_line(cell)!r}")
        else:
            values.append(number)
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if non_numeric:
        problems.append(f"not a finite number: {', '.join(non_numeric)}")

    record: dict[str, Any] = {"clip_id": clip_id, "label": label, "group": None}
    if not problems:
        record["group"] = movie.group("movie") if movie else None
        record["lpq"] = np.asarray(values[:5], dtype=np.float32)
        record["phog"] = np.asarray(values[5:], dtype=np.float32)
    return record, problems


def _without_repeats(
    accepted: list[tuple[int, dict[str, Any]]],
) -> list[tuple[int, dict[str, Any], str | None]]:
    """Each accepted row with the reason to reject it for repeating an image, if any."""
    rows_of: dict[str, list[tuple[int, str]]] = {}
    for row_number, row in accepted:
        rows_of.setdefault(row["clip_id"], []).append((row_number, row["label"]))
    decided: list[tuple[int, dict[str, Any], str | None]] = []
    for row_number, row in accepted:
        listed = rows_of[row["clip_id"]]
        others = [(number, label) for number, label in listed if number != row_number]
        if len({label for _, label in listed}) > 1:
            shown = ", ".join(f"row {number} as {label}" for number, label in others)
            reason = f"image also labelled in {shown} (conflicting labels)"
            decided.append((row_number, row, reason))
        elif listed[0][0] != row_number:
            decided.append((row_number, row, f"duplicate of row {listed[0][0]}"))
        else:
            decided.append((row_number, row, None))
    return decided


def _rejected_row(uri: str, row_number: int, clip_id: str, problems: list[str]) -> RejectedFile:
    name = clip_id or "no image name"
    return RejectedFile(
        uri=f"{uri}#row {row_number}", reason=f"row {row_number} ({name}): {'; '.join(problems)}"
    )


def read_configured_sfew_table(
    dataset: DatasetConfig, storage_options: Mapping[str, str] | None = None
) -> SfewTable:
    """``read_sfew_table`` of the run's ``dataset.root`` (the adapter's ``read_table``)."""
    assert dataset.root is not None
    return read_sfew_table(dataset.root, storage_options)


ADAPTER = DatasetAdapter(
    name="sfew-table",
    yields="feature-table",
    description="SFEW.xlsx: Wang et al.'s 5 LPQ + 5 PHOG principal components per still",
    read_table=read_configured_sfew_table,
    # Stands in for the wang_texture extractor's lpq/phog columns, under its own version.
    stored_as=StoredAs("wang_texture", "sfew-table-1", "published-pca", ("lpq", "phog")),
)

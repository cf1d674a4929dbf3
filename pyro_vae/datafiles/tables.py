"""A CSV table of numeric columns, read by pandas, with the label column taken out.

The fast path is pandas' C parser into floats; only when that finds something amiss (a
non-numeric cell, a missing one) is the file read again, to name what is wrong: a row with
another number of fields (counted by the standard ``csv`` module, since pandas fills a short
row with NaN), the non-numeric columns, or else NaN or inf (counted by the caller).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pyro_vae.datafiles.errors import DataFileError

__all__ = ["read_csv"]

_NUMERIC_KINDS = "iufb"
_MISSING_TEXT = {"", "nan", "na", "n/a", "null", "none", "inf", "-inf", "+inf", "infinity"}


def read_csv(
    path: Path, label_column=None, label_optional: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """The values (N, D) and labels (N,) of a CSV file, with or without a header line.

    A first line with a cell that is not a number is the header.

    Parameters
    ----------
    path : Path
        The file.
    label_column : str or int, optional
        The column of labels: a header name, or a 0-based number for a file without a header.
    label_optional : bool
        A file without that column is read without labels (a run's column, on new data).

    Returns
    -------
    x : numpy.ndarray of shape (N, D)
        The other columns, float.
    y : numpy.ndarray of shape (N,) or None
        The label column as read (checked as integers by the caller).

    Raises
    ------
    DataFileError
        An unreadable or empty file, rows of unequal length, non-numeric columns (named), a
        missing label column.
    """
    import pandas as pd  # a second or more to import: only when a table is read

    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        header = 0 if any(not _is_number(c) for c in first.iloc[0]) else None
        table = pd.read_csv(path, header=header)
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{path} holds no data (an empty file)") from None
    except pd.errors.ParserError as err:
        raise DataFileError(f"{path}: rows of unequal length ({_parser_reason(err)})") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataFileError(f"cannot read {path} as .csv: {' '.join(str(err).split())}") from None
    if table.shape[0] == 0:
        raise DataFileError(f"{path} holds no data (a header and no rows)")
    y = None
    if label_optional and label_column is not None and _find(table, label_column) is None:
        label_column = None
    if label_column is not None:
        name = _column(path, table, label_column)
        y = table.pop(name).to_numpy()
        if y.dtype.kind not in _NUMERIC_KINDS:
            raise DataFileError(
                f"{path}: label column {label_column!r} is not integer (it holds {y[0]!r}, ...)"
            )
    if not all(t.kind in _NUMERIC_KINDS for t in table.dtypes) or table.isna().to_numpy().any():
        _diagnose(path, header, label_column)
    return table.to_numpy(dtype=np.float32), y


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in _MISSING_TEXT
    return True


def _parser_reason(err) -> str:
    """pandas' "Expected 3 fields in line 5, saw 4", without its prefix."""
    text = " ".join(str(err).split())
    return text.split("C error: ")[-1]


def _find(table, label_column):
    """The name of the label column in ``table``, or None."""
    names = list(table.columns)
    if label_column in names:
        return label_column
    if isinstance(label_column, str) and label_column.isdigit() and int(label_column) in names:
        return int(label_column)  # a file without a header: columns are numbered
    return None


def _column(path: Path, table, label_column):
    """The name of the label column in ``table``, or a one-line refusal listing the columns."""
    name = _find(table, label_column)
    if name is not None:
        return name
    names = list(table.columns)
    shown = ", ".join(map(str, names[:10])) + (", ..." if len(names) > 10 else "")
    raise DataFileError(f"{path} has no label column {label_column!r} (columns: {shown})")


def _diagnose(path: Path, header, label_column) -> None:
    """Read the file as text and raise what is wrong: short rows or non-numeric columns.

    Cells that are missing or spell NaN/inf are left for the caller's count of them.
    """
    import pandas as pd

    with open(path, newline="") as f:  # pandas fills a short row with NaN: count the fields
        lengths = [len(row) for row in csv.reader(f) if row]
    short = [i for i, n in enumerate(lengths) if n != lengths[0]]
    if short:
        line = short[0] + 1
        raise DataFileError(
            f"{path}: rows of unequal length (line {line} has {lengths[short[0]]} values, the "
            f"first has {lengths[0]})"
        )
    text = pd.read_csv(path, header=header, dtype=str, keep_default_na=False)
    if label_column is not None:
        text = text.drop(columns=[_column(path, text, label_column)])
    bad = []
    for name in text.columns:
        cells = text[name].str.strip()
        numeric = pd.to_numeric(cells, errors="coerce")
        if (numeric.isna() & ~cells.str.lower().isin(_MISSING_TEXT)).any():
            bad.append(str(name))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataFileError(
            f"{path}: non-numeric columns {shown}; drop them (or pass the labels as "
            "--label-column NAME)"
        )

"""Dataset items (a list of dicts): from users' own files (JSONL / JSON / CSV / Parquet), from a
``datasets.Dataset`` / ``DatasetDict`` already in memory, or from any sequence of mappings; and
the column view of a batch of items that reward functions receive.

A task names the columns it needs (``source``, ``reference``, ...); ``column_map`` says which
of the user's columns holds each one, e.g. ``{"source": "article"}``. Nothing here downloads.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from magrpo.errors import DataError

#: File extensions :func:`load_items` reads, lower-case.
ACCEPTED_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet")


def as_items(dataset: Any, what: str) -> list[dict[str, Any]]:
    """A dataset given to the trainer (a sequence of mappings, a ``datasets.Dataset``, or None)
    as a list of plain dicts; :class:`DataError` names ``what`` and the offending index."""
    if dataset is None:
        return []
    if isinstance(dataset, Mapping):
        raise DataError(f"{what} must be a sequence of items (dicts) or a datasets.Dataset, not a single mapping")
    items = []
    for index, item in enumerate(dataset):
        if not isinstance(item, Mapping):
            raise DataError(f"{what}[{index}] is {type(item).__name__}; each item must be a mapping of column -> value")
        items.append(dict(item))
    return items


def columns_of(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Dataset items -> one keyword list per column, as reward functions receive them."""
    keys: list[str] = []
    for item in items:
        for key in item:
            if key not in keys:
                keys.append(key)
    return {key: [item.get(key) for item in items] for key in keys}


class ItemOrder:
    """The order a run takes its training items in: a seeded shuffle of their indices, taken from
    the end and reshuffled at every epoch; its state goes into checkpoints (exact resume)."""

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items = num_items
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> int:
        if not self.order:
            self.order = list(range(self.num_items))
            self.rng.shuffle(self.order)
        return self.order.pop()

    def state(self) -> dict[str, Any]:
        version, state, gauss = self.rng.getstate()
        return {"order": list(self.order), "order_rng": [version, list(state), gauss]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.order = [int(i) for i in state["order"]]
        version, rng_state, gauss = state["order_rng"]
        self.rng.setstate((version, tuple(rng_state), gauss))


def parse_column_map(text: str) -> dict[str, str]:
    """``"source=article,reference=summary"`` -> ``{"source": "article", "reference": "summary"}``.

    Keys are the task's column names, values the user's. An empty string gives ``{}``.
    """
    mapping: dict[str, str] = {}
    if not text.strip():
        return mapping
    for entry in text.split(","):
        task_col, sep, user_col = entry.partition("=")
        task_col, user_col = task_col.strip(), user_col.strip()
        if not sep or not task_col or not user_col:
            raise DataError(
                f"malformed column mapping entry {entry.strip()!r} in {text!r}; "
                "expected TASK_COLUMN=YOUR_COLUMN entries separated by commas, e.g. source=article,reference=summary"
            )
        if task_col in mapping:
            raise DataError(f"column {task_col!r} is mapped twice in {text!r}")
        mapping[task_col] = user_col
    return mapping


def load_items(
    source: Any,
    *,
    column_map: Mapping[str, str] | None = None,
    required: Sequence[str] = (),
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Read rows from ``source`` and return them with the task's column names.

    ``source``: a path to a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or to a folder
    written by ``datasets``' ``save_to_disk``, or a ``datasets.Dataset`` / ``DatasetDict``. ``split`` picks
    one split of a ``DatasetDict`` or of
    a JSON object of the form ``{"train": [...], "test": [...]}``; a source with a single table
    ignores it. ``column_map`` maps task column -> user column; mapped user columns are renamed,
    other columns are kept as they are. ``required`` lists the task columns every row must have.
    Raises :class:`DataError` with the missing name and the available ones.
    """
    if isinstance(source, (str, os.PathLike)):
        rows = _read_file(Path(source), split)
        origin = str(source)
    else:
        rows = _read_dataset(source, split)
        origin = type(source).__name__
    if not rows:
        raise DataError(f"no rows in {origin}")
    return _rename(rows, dict(column_map or {}), required, origin)


def split_items(
    items: Sequence[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, held_out)``: a seeded shuffle of ``items`` with ``round(fraction * n)`` items (at
    least one) held out, each part in the file's order; :class:`DataError` when nothing would be
    left to train on."""
    import random

    held = max(1, round(fraction * len(items)))
    if held >= len(items):
        raise DataError(
            f"eval_fraction={fraction} of {len(items)} items holds out {held}, leaving nothing to train on; "
            "give more items or a smaller fraction"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:held])
    return ([x for i, x in enumerate(items) if i not in held_out], [x for i, x in enumerate(items) if i in held_out])


def _read_file(path: Path, split: str | None) -> list[dict[str, Any]]:
    if path.is_dir():  # a datasets folder written by save_to_disk (a Dataset or a DatasetDict)
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is part of the `writing` extra
            raise DataError(
                f"{str(path)!r} is a folder; reading a datasets folder needs: pip install datasets"
            ) from None
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise DataError(
                f"{str(path)!r} is a folder but not a datasets folder (save_to_disk); give a file "
                f"({', '.join(ACCEPTED_EXTENSIONS)}) or such a folder"
            ) from None
        return _read_dataset(loaded, split)
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_EXTENSIONS:
        raise DataError(
            f"cannot read {str(path)!r}: unknown file extension {suffix or '(none)'!r}; "
            f"accepted: {', '.join(ACCEPTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {str(path)!r}")
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path, split)
    if suffix == ".csv":
        # utf-8-sig: spreadsheets often prepend a byte-order mark that would corrupt the first header
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [dict(row) for row in csv.DictReader(f)]
    import pyarrow.parquet as pq  # installed with `datasets`; imported late to keep start-up fast

    return pq.read_table(path).to_pylist()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{str(path)!r} line {number} is not valid JSON: {e.msg}") from None
            rows.append(_as_row(row, f"{str(path)!r} line {number}"))
    return rows


def _read_json(path: Path, split: str | None) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{str(path)!r} is not valid JSON: {e.msg} (line {e.lineno})") from None
    if isinstance(data, dict):  # {"train": [...], "test": [...]}
        data = data[_pick_split(list(data), split, str(path))]
    if not isinstance(data, list):
        raise DataError(f"{str(path)!r} must hold a list of objects or an object of split -> list")
    return [_as_row(row, f"{str(path)!r} row {i}") for i, row in enumerate(data)]


def _read_dataset(source: Any, split: str | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is part of the `writing` extra
        datasets = None
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        source = source[_pick_split(list(source), split, "DatasetDict")]
    if datasets is None or not isinstance(source, datasets.Dataset):
        raise DataError(
            f"cannot load items from a {type(source).__name__}; pass a file path "
            f"({', '.join(ACCEPTED_EXTENSIONS)}) or a datasets.Dataset / DatasetDict"
        )
    return source.to_list()


def _pick_split(available: list[str], split: str | None, origin: str) -> str:
    if split is None and len(available) == 1:
        return available[0]
    if split is None:
        raise DataError(f"{origin} has several splits ({', '.join(available)}); choose one with split=")
    if split not in available:
        raise DataError(f"{origin} has no split {split!r}; available splits: {', '.join(available) or '(none)'}")
    return split


def _as_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where} is a {type(row).__name__}, expected a JSON object")
    return row


def _rename(
    rows: list[dict[str, Any]], column_map: dict[str, str], required: Sequence[str], origin: str
) -> list[dict[str, Any]]:
    mapped_user_cols = set(column_map.values())
    out = []
    for index, row in enumerate(rows):
        for task_col, user_col in column_map.items():
            if user_col not in row:
                raise DataError(
                    f"{origin} row {index} has no column {user_col!r} (mapped to {task_col!r}); "
                    f"available columns: {', '.join(row) or '(none)'}"
                )
        # Built from the original row so that swaps ({"a": "b", "b": "a"}) work.
        new = {k: v for k, v in row.items() if k not in mapped_user_cols}
        new.update({task_col: row[user_col] for task_col, user_col in column_map.items()})
        missing = [c for c in required if c not in new]
        if missing:
            raise DataError(
                f"{origin} row {index} is missing column {', '.join(map(repr, missing))}; "
                f"available columns: {', '.join(row) or '(none)'}; "
                f"map one of yours to it, e.g. {missing[0]}=YOUR_COLUMN"
            )
        out.append(new)
    return out

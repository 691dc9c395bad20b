"""Loading users' own items from files and `datasets` objects, with column mapping."""

from __future__ import annotations

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from magrpo.data import ACCEPTED_EXTENSIONS, DataError, load_items, parse_column_map, split_items

ROWS = [
    {"article": "first article", "summary": "first summary", "id": "1"},
    {"article": "second article", "summary": "second summary", "id": "2"},
]
MAP = {"source": "article", "reference": "summary"}
EXPECTED = [
    {"id": "1", "source": "first article", "reference": "first summary"},
    {"id": "2", "source": "second article", "reference": "second summary"},
]


def write(path, fmt: str, rows=ROWS):
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_file_format_with_column_map(tmp_path, fmt):
    path = write(tmp_path / f"data.{fmt}", fmt)
    items = load_items(path, column_map=MAP, required=("source", "reference"))
    assert items == EXPECTED
    assert list(items[0]) == ["id", "source", "reference"]  # mapped user columns are renamed
    assert load_items(str(path)) == ROWS  # str paths work; no map keeps the user's names


def test_upper_case_extension(tmp_path):
    assert load_items(write(tmp_path / "DATA.JSONL", "jsonl")) == ROWS


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("\ufeffarticle,summary\nx,y\n", encoding="utf-8")
    assert load_items(path, column_map=MAP) == [{"source": "x", "reference": "y"}]


def test_json_with_splits(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"train": ROWS[:1], "test": ROWS[1:]}), encoding="utf-8")
    assert load_items(path, column_map=MAP, split="test") == EXPECTED[1:]
    with pytest.raises(DataError, match=r"several splits \(train, test\)"):
        load_items(path)
    with pytest.raises(DataError, match=r"no split 'eval'; available splits: train, test"):
        load_items(path, split="eval")


def test_split_is_ignored_by_single_table_files(tmp_path):
    assert load_items(write(tmp_path / "d.jsonl", "jsonl"), split="train") == ROWS


def test_datasets_objects():
    ds = datasets.Dataset.from_list(ROWS)
    assert load_items(ds, column_map=MAP, required=("source",)) == EXPECTED
    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([1])})
    assert load_items(dd, column_map=MAP, split="validation") == EXPECTED[1:]
    assert load_items(datasets.DatasetDict({"train": ds})) == ROWS  # one split: no need to name it
    with pytest.raises(DataError, match="several splits"):
        load_items(dd)
    with pytest.raises(DataError, match="no split 'test'; available splits: train, validation"):
        load_items(dd, split="test")


def test_a_datasets_folder_written_by_save_to_disk(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert load_items(tmp_path / "dd", column_map=MAP, split="test") == EXPECTED[1:]
    with pytest.raises(DataError, match=r"several splits \(train, test\)"):
        load_items(tmp_path / "dd")
    ds.save_to_disk(str(tmp_path / "one"))
    assert load_items(str(tmp_path / "one"), column_map=MAP) == EXPECTED
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is a folder but not a datasets folder"):
        load_items(tmp_path / "plain")


def test_a_held_out_fraction_is_a_seeded_split_in_file_order():
    items = [{"i": i} for i in range(10)]
    train, held = split_items(items, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7
    assert sorted(x["i"] for x in train + held) == list(range(10))  # a partition
    assert [x["i"] for x in held] == sorted(x["i"] for x in held)  # in the file's order
    assert split_items(items, 0.3, seed=0) == (train, held)  # seeded
    assert split_items(items, 0.3, seed=1) != (train, held)
    assert len(split_items(items, 0.01, seed=0)[1]) == 1  # at least one held out
    with pytest.raises(DataError, match="eval_fraction=0.5 of 1 items holds out 1, leaving nothing to train on"):
        split_items(items[:1], 0.5, seed=0)


def test_eval_fraction_is_checked_with_the_data_it_splits():
    from magrpo import ConfigError, MAGRPOConfig

    assert MAGRPOConfig(train_data="d.jsonl", eval_fraction=0.2).eval_fraction == 0.2
    for bad in (0, 1, 1.5, "x"):
        with pytest.raises(ConfigError, match=f"eval_fraction={bad!r} is not valid"):
            MAGRPOConfig(train_data="d.jsonl", eval_fraction=bad)
    with pytest.raises(ConfigError, match="holds out part of your own train_data: give train_data and no eval_data"):
        MAGRPOConfig(eval_fraction=0.2)
    with pytest.raises(ConfigError, match="holds out part of your own train_data"):
        MAGRPOConfig(train_data="d.jsonl", eval_data="e.jsonl", eval_fraction=0.2)


def test_swapped_and_shared_mappings(tmp_path):
    rows = [{"a": 1, "b": 2}]
    assert load_items(datasets.Dataset.from_list(rows), column_map={"a": "b", "b": "a"}) == [{"a": 2, "b": 1}]
    assert load_items(datasets.Dataset.from_list(rows), column_map={"x": "a", "y": "a"}) == [{"b": 2, "x": 1, "y": 1}]


def test_missing_required_column_names_it_and_the_available_ones(tmp_path):
    path = write(tmp_path / "d.jsonl", "jsonl")
    with pytest.raises(DataError) as err:
        load_items(path, required=("source", "reference"))
    message = str(err.value)
    assert "missing column 'source', 'reference'" in message
    assert "available columns: article, summary, id" in message
    assert "source=YOUR_COLUMN" in message


def test_mapped_column_absent_names_both(tmp_path):
    path = write(tmp_path / "d.csv", "csv")
    with pytest.raises(
        DataError, match=r"no column 'text' \(mapped to 'source'\); available columns: article, summary, id"
    ):
        load_items(path, column_map={"source": "text"})


def test_missing_column_in_a_later_row(tmp_path):
    path = write(tmp_path / "d.jsonl", "jsonl", rows=[ROWS[0], {"article": "only"}])
    with pytest.raises(DataError, match=r"row 1 has no column 'summary'"):
        load_items(path, column_map=MAP)


def test_unknown_extension_lists_accepted(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(DataError) as err:
        load_items(path)
    assert "'.txt'" in str(err.value) and "accepted: .jsonl, .json, .csv, .parquet" in str(err.value)
    assert ACCEPTED_EXTENSIONS == (".jsonl", ".json", ".csv", ".parquet")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="data file not found") as err:
        load_items(path)
    assert str(path) in str(err.value)


def test_bad_contents(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_items(bad)
    scalar = tmp_path / "scalar.jsonl"
    scalar.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="line 1 is a list, expected a JSON object"):
        load_items(scalar)
    empty = tmp_path / "empty.csv"
    empty.write_text("article,summary\n")
    with pytest.raises(DataError, match="no rows"):
        load_items(empty)
    with pytest.raises(DataError, match="cannot load items from a list"):
        load_items(ROWS)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_parse_column_map():
    assert parse_column_map("source=article,reference=summary") == MAP
    assert parse_column_map(" source = article , reference=summary ") == MAP
    assert parse_column_map("") == {} and parse_column_map("  ") == {}


@pytest.mark.parametrize("bad", ["source", "source=", "=article", "source=article,,reference=summary", "a=b,"])
def test_parse_column_map_malformed(bad):
    with pytest.raises(DataError, match="malformed column mapping entry .*TASK_COLUMN=YOUR_COLUMN"):
        parse_column_map(bad)


def test_parse_column_map_duplicate():
    with pytest.raises(DataError, match="'source' is mapped twice"):
        parse_column_map("source=a,source=b")

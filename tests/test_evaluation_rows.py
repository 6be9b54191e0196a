"""Data files that do not parse are refused with the file and the real 1-based line, not JSON's "line 1"."""

import json

import pytest

from evaluation.benchmarks import read_public_layout, read_rows
from evaluation.rows import read_located_rows


def test_a_bad_json_line_names_the_file_and_its_line(tmp_path):
    data = tmp_path / "pope.jsonl"
    good = json.dumps({"image": "0.png", "object": "cat", "label": "yes"})
    data.write_text("\n".join([good, "", good, '{"image": "1.png", "label": yes}', good]) + "\n")
    with pytest.raises(ValueError, match=r"pope\.jsonl, line 4: not valid JSON") as error:
        read_rows(data)
    assert str(data) in str(error.value)


def test_line_numbers_count_blank_lines_and_ignore_unicode_line_separators(tmp_path):
    data = tmp_path / "rows.jsonl"
    lines = [json.dumps({"text": "one\u2028two"}, ensure_ascii=False), "", json.dumps({"text": "three"}), "[1, 2]"]
    data.write_text("\r\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 4: expected a JSON object, got list"):
        read_rows(data)
    data.write_text("\n".join(lines[:3]), encoding="utf-8")
    assert [(row.line, row.fields["text"]) for row in read_located_rows(data)] == [(1, "one\u2028two"), (3, "three")]


def test_a_json_list_names_the_line_of_its_error_and_the_item_of_a_non_object(tmp_path):
    data = tmp_path / "list.json"
    data.write_text('[\n  {"image": "0.png"},\n  {"image": "1.png"},\n  {"image": 2.png}\n]\n')
    with pytest.raises(ValueError, match=r"list\.json, line 4: not valid JSON"):
        read_rows(data)
    data.write_text('[{"image": "0.png"}, "1.png"]')
    with pytest.raises(ValueError, match=r"list\.json, item 2: expected a JSON object, got str"):
        read_rows(data)
    data.write_text('[{"image": "0.png"},\n {"image": "1.png"}]')
    assert read_located_rows(data)[1].where == f"{data}, item 2"


def test_csv_rows_know_their_lines_and_mmvp_names_a_bad_index(tmp_path):
    (tmp_path / "Questions.csv").write_text(
        'Index,Question,Options,Correct Answer\n1,Is it red?,"(a) Yes (b) No",(a)\nx,Is it red?,"(a) Yes (b) No",(b)\n')
    assert [row.line for row in read_located_rows(tmp_path / "Questions.csv")] == [2, 3]
    with pytest.raises(ValueError, match=r"Questions\.csv, line 3: Index 'x' is not a question number"):
        read_public_layout("mmvp", tmp_path)
    (tmp_path / "Questions.csv").write_text("Index,Question\n1,Is it red?\n")
    with pytest.raises(ValueError, match=r"Questions\.csv, line 2: no Options, Correct Answer column"):
        read_public_layout("mmvp", tmp_path)

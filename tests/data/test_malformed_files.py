"""Malformed data files: a bad line is a counted skip, never the loss of the file; errors are one line naming it."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from lnpo.data import load_preferences, load_sft
from lnpo.errors import DataError, InputNotFound

GOOD = b'{"prompt":"a","chosen":"b","rejected":"c"}'


def _write(path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def test_invalid_utf8_line_is_skipped_and_the_valid_rows_kept(tmp_path, cache_dir):
    # the reproduction: printf '{...}\n{"prompt":"\xff",...}\n' > y.jsonl
    path = _write(tmp_path / "y.jsonl", [GOOD, b'{"prompt":"\xff","chosen":"b","rejected":"c"}'])
    ds, report = load_preferences(path, cache_dir=cache_dir)
    assert report.kept == 1 and report.skipped == {"undecodable_text": 1}
    assert ds[0]["prompt"] == [{"role": "user", "content": "a"}]


def test_mixed_text_and_message_columns_with_non_json_and_blank_lines(tmp_path, cache_dir):
    messages = json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": "b", "rejected": "c"}).encode()
    path = _write(tmp_path / "m.jsonl", [GOOD, messages, b"   ", b"not json", b"\t", GOOD.replace(b'"a"', b'"z"')])
    ds, report = load_preferences(path, cache_dir=cache_dir)
    assert report.kept == 3 and report.skipped == {"blank_line": 2, "malformed_json": 1}
    assert [r["prompt"][0]["content"] for r in ds] == ["a", "q", "z"]
    assert ds["source_row"][:] == [0, 1, 5]  # 0-based line index: line source_row + 1


def test_json_nested_deeper_than_the_parser_allows_is_a_counted_skip(tmp_path, cache_dir):
    deep = b'{"prompt":' + b"[" * 5000 + b"]" * 5000 + b',"chosen":"b","rejected":"c"}'
    shallow_extra = b'{"prompt":"a","chosen":"b","rejected":"d","extra":' + b"[" * 200 + b"]" * 200 + b"}"
    path = _write(tmp_path / "d.jsonl", [GOOD, deep, shallow_extra])
    ds, report = load_preferences(path, cache_dir=cache_dir)
    assert report.kept == 2 and report.skipped == {"malformed_json": 1}
    with pytest.raises(DataError, match=r"d\.jsonl line 2: line is JSON nested too deeply"):
        load_preferences(path, cache_dir=cache_dir, strict=True)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n"])
def test_empty_file_is_one_line_error_naming_it(tmp_path, cache_dir, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    if content:  # only blank lines: every line is counted, none kept
        _, report = load_preferences(str(path), cache_dir=cache_dir)
        assert report.kept == 0 and report.skipped == {"blank_line": content.count(b"\n")}
        return
    with pytest.raises(DataError, match=r"^.*empty\.jsonl: the file is empty \(no rows\)$"):
        load_preferences(str(path), cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        load_sft(str(path), cache_dir=cache_dir)


def test_strict_mode_names_the_editor_line_counting_blank_lines(tmp_path, cache_dir):
    path = _write(tmp_path / "s.jsonl", [GOOD, b"", GOOD, b'{"prompt":"a","chosen":"b"}'])
    with pytest.raises(DataError) as e:
        load_preferences(path, cache_dir=cache_dir, strict=True)
    assert str(e.value) == f"{path} line 2: line is blank"
    path = _write(tmp_path / "t.jsonl", [GOOD, GOOD, b'{"prompt":"a","chosen":"b"}'])
    with pytest.raises(DataError) as e:
        load_preferences(path, cache_dir=cache_dir, strict=True)
    assert str(e.value) == f"{path} line 3: missing field 'rejected'"


def test_tokenizer_strict_error_names_the_json_lines_line(tmp_path, cache_dir, tokenizer):
    from lnpo.data import tokenize_preferences

    long = json.dumps({"prompt": "q " * 200, "chosen": "b", "rejected": "c"}).encode()
    path = _write(tmp_path / "long.jsonl", [GOOD, b"", long])
    ds, _ = load_preferences(path, cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"long\.jsonl line 3: prompt has \d+ tokens > max_prompt_len 8$"):
        tokenize_preferences(ds, tokenizer, max_len=16, max_prompt_len=8, truncation="drop", strict=True,
                             source=path)


def test_detection_error_names_the_file_and_the_fields(tmp_path, cache_dir):
    path = _write(tmp_path / "odd.jsonl", [b'{"question":"q","answer_a":"a","answer_b":"b"}'])
    with pytest.raises(DataError, match=r"^.*odd\.jsonl: cannot detect the preference schema .*data\.columns"):
        load_preferences(path, cache_dir=cache_dir)
    ds, report = load_preferences(path, cache_dir=cache_dir, prompt="question", chosen="answer_a",
                                  rejected="answer_b")
    assert len(ds) == 1 and report.schema == "generic"


def test_report_summary_says_which_schema_auto_detected(tmp_path, cache_dir):
    path = _write(tmp_path / "g.jsonl", [GOOD])
    _, report = load_preferences(path, cache_dir=cache_dir)
    assert report.summary() == f"{path}: schema 'generic' (auto-detected); kept 1 of 1 rows; skipped 0"
    _, report = load_preferences(path, cache_dir=cache_dir, schema="generic")
    assert report.summary() == f"{path}: schema 'generic'; kept 1 of 1 rows; skipped 0"


def test_compressed_json_lines_with_a_bad_line_keep_their_valid_rows(tmp_path, cache_dir):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD + b"\n{broken\n" + GOOD + b"\n"))
    ds, report = load_preferences(str(path), cache_dir=cache_dir)
    assert report.kept == 2 and report.skipped == {"malformed_json": 1}


def test_directory_holding_one_json_lines_file_reads_it_line_by_line(tmp_path, cache_dir):
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "train.jsonl", [GOOD, b"\xff", GOOD])
    ds, report = load_preferences(str(folder), cache_dir=cache_dir)
    assert report.kept == 2 and report.skipped == {"undecodable_text": 1}
    assert report.source == str(folder / "train.jsonl")


def test_json_array_mixing_text_and_messages_keeps_every_valid_row(tmp_path, cache_dir):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"},
            {"prompt": [{"role": "user", "content": "q"}], "chosen": "b", "rejected": "c"}, 7]
    path = tmp_path / "array.json"
    path.write_text(json.dumps(rows))
    ds, report = load_preferences(str(path), cache_dir=cache_dir)
    assert report.kept == 2 and report.skipped == {"malformed_json": 1}
    path.write_text(json.dumps(rows)[:-5])
    with pytest.raises(DataError, match=r"array\.json line 1 column \d+: not a valid JSON array"):
        load_preferences(str(path), cache_dir=cache_dir)


def test_missing_local_path_is_not_looked_up_on_the_hub(tmp_path, cache_dir):
    with pytest.raises(InputNotFound, match=r"nope\.jsonl: no such data file or directory$"):
        load_preferences(str(tmp_path / "nope.jsonl"), cache_dir=cache_dir)


def test_hub_name_while_offline_is_one_quick_line(cache_dir, monkeypatch):
    """HF_DATASETS_OFFLINE is set (tests/data/conftest.py): the datasets cache only, then one line."""
    with pytest.raises(DataError) as e:
        load_preferences("some-org/some-dataset", cache_dir=cache_dir)
    text = str(e.value)
    assert "\n" not in text and "'some-org/some-dataset'" in text and "pass a path" in text


def test_hub_name_with_the_hub_unreachable_fails_before_any_retry(cache_dir, monkeypatch):
    from huggingface_hub import constants

    from lnpo.data import files

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(files, "_hub_offline", lambda: False)
    monkeypatch.setattr(files, "_hub_endpoint", lambda: "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setattr(files.datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was tried"))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_preferences("some-org/some-dataset", cache_dir=cache_dir)
    assert time.perf_counter() - t0 < files.HUB_PROBE_TIMEOUT_S + 2
    text = str(e.value)
    assert "\n" not in text and "Hugging Face Hub (http://127.0.0.1:9) is unreachable" in text
    assert "pass a path" in text and "HF_DATASETS_OFFLINE=1" in text

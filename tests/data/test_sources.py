"""Loading and schema adaptation: every schema's fixture file gives its known kept/skipped counts."""

from __future__ import annotations

import json
import os
import re

import datasets
import pytest

from lnpo.data import LoadReport, load_preferences, load_sft, validate_preferences
from lnpo.data.adapters import parse_hh_transcript
from lnpo.data.sources import detect_preference_schema
from lnpo.data.validate import REASONS, RowIssue


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def _check(ds, report, fixture):
    assert report.kept == fixture.kept == len(ds)
    assert report.skipped == fixture.skipped
    assert set(report.skipped) <= set(REASONS)
    assert report.total == fixture.kept + sum(fixture.skipped.values())
    assert report.source == fixture.path


def _is_canonical_pair(row):
    assert set(row) == {"prompt", "chosen", "rejected", "source_row"}
    for key in ("prompt", "chosen", "rejected"):
        assert row[key] and all(set(m) == {"role", "content"} for m in row[key])
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]


@pytest.mark.parametrize("name,schema", [
    ("generic", "generic"), ("conversational", "conversational"), ("hh_rlhf", "hh_rlhf"),
    ("pku_saferlhf", "pku_saferlhf"), ("ultrafeedback", "ultrafeedback"), ("undecodable", "generic"),
    ("parquet_mapped", "generic"),
])
def test_preference_fixture_counts(fixtures, cache_dir, name, schema, caplog):
    fx = fixtures[name]
    with caplog.at_level("INFO", logger="lnpo.data.sources"):
        ds, report = load_preferences(fx.path, cache_dir=cache_dir, **fx.kwargs)
    _check(ds, report, fx)
    assert f"schema {schema!r}" in caplog.text  # auto-detection picked the right adapter
    assert report.summary() in caplog.text  # the summary is logged when loading
    for row in ds:
        _is_canonical_pair(row)
    # the explicit schema gives the same result as auto-detection
    ds2, report2 = load_preferences(fx.path, cache_dir=cache_dir, schema=schema, **fx.kwargs)
    assert report2 == report and ds2.to_list() == ds.to_list()


def test_generic_rows_content(fixtures, cache_dir):
    fx = fixtures["generic"]
    ds, _ = load_preferences(fx.path, cache_dir=cache_dir)
    expected = [{"prompt": [user(r["prompt"])], "chosen": [assistant(r["chosen"])],
                 "rejected": [assistant(r["rejected"])]} for r in fx.valid]
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ds] == expected
    # valid row i sits at line 2*i + 1 of the file (a bad row before each)
    assert ds["source_row"][:] == [2 * i + 1 for i in range(len(fx.valid))]


def test_conversational_implicit_prompt(fixtures, cache_dir):
    fx = fixtures["conversational"]
    ds, _ = load_preferences(fx.path, cache_dir=cache_dir)
    assert len(ds) == len(fx.valid)
    for row, src in zip(ds, fx.valid):
        k = len(row["prompt"])
        assert row["prompt"] + row["chosen"] == src["chosen"]
        assert row["prompt"] + row["rejected"] == src["rejected"]
        assert src["chosen"][k] != src["rejected"][k]
    multi = ds[2]
    assert multi["prompt"] == [user("hello"), assistant("hi"), user("Tell me a joke.")]
    assert multi["chosen"] == [assistant("Why did the chicken cross the road?")]
    assert ds[3]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_hh_rlhf_transcripts(fixtures, cache_dir):
    fx = fixtures["hh_rlhf"]
    ds, _ = load_preferences(fx.path, cache_dir=cache_dir)
    assert ds[0] == {"prompt": [user("hello")], "chosen": [assistant("hi there")],
                     "rejected": [assistant("go away")], "source_row": 0}
    multi = ds[2]
    assert multi["prompt"] == [user("hello"), assistant("hi"), user("Tell me a joke.")]
    assert multi["chosen"] == [assistant("Why did the chicken cross the road?")]
    assert multi["rejected"] == [assistant("No.")]
    assert len(ds) == len(fx.valid)


def test_parse_hh_transcript_edge_cases():
    assert parse_hh_transcript("Human: hi\n\nAssistant: yo") == [user("hi"), assistant("yo")]
    assert parse_hh_transcript("\n\nHuman: a\n\nHuman: b\n\nAssistant:") == [user("a"), user("b"), assistant("")]
    for bad in ("", "hi\n\nHuman: a\n\nAssistant: b", "\n\nAssistant: b", "\n\nHuman: a"):
        with pytest.raises(RowIssue) as e:
            parse_hh_transcript(bad)
        assert e.value.reason == "malformed_transcript"


@pytest.mark.parametrize("preference,column", [("better", 3), ("safer", 4)])
def test_pku_preference_choice(fixtures, cache_dir, preference, column):
    fx = fixtures["pku_saferlhf"]
    ds, report = load_preferences(fx.path, cache_dir=cache_dir, pku_preference=preference)
    expected = []
    for prompt, r0, r1, *labels in fx.rows:
        label = labels[column - 3]
        if label not in (0, 1) or r1 is None or r0 == r1:
            continue
        responses = (r0, r1)
        expected.append((prompt, responses[label], responses[1 - label]))
    got = [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in ds]
    assert got == expected
    if preference == "better":
        assert report.skipped == fx.skipped
    else:  # row 4's safer label is valid
        assert report.skipped == {"missing_field": 1, "identical_responses": 1}
    with pytest.raises(ValueError, match="pku_preference"):
        load_preferences(fx.path, cache_dir=cache_dir, pku_preference="nicer")


def test_ultrafeedback_strips_prompt(fixtures, cache_dir):
    ds, _ = load_preferences(fixtures["ultrafeedback"].path, cache_dir=cache_dir)
    assert ds[0]["prompt"] == [user("What is the capital of France?")]
    assert ds[0]["chosen"] == [assistant("Paris.")]
    assert ds[0]["rejected"] == [assistant("Lyon.")]


def test_column_mapping_and_binary_text(fixtures, cache_dir):
    fx = fixtures["parquet_mapped"]
    ds, _ = load_preferences(fx.path, cache_dir=cache_dir, **fx.kwargs)
    # the mapped "question" (binary, decoded as UTF-8) wins over the file's own "prompt" column
    assert ds[0]["prompt"] == [user("What is the capital of France?")]
    assert ds["source_row"][:] == [0, 1, 3]
    with pytest.raises(ValueError, match="'nope'"):
        load_preferences(fx.path, cache_dir=cache_dir, prompt="nope", chosen="good", rejected="bad")
    with pytest.raises(TypeError, match="unknown column mapping"):
        load_preferences(fx.path, cache_dir=cache_dir, promt="question")


def test_explicit_prompt_with_messages_and_system(tmp_path, cache_dir):
    rows = [
        # completions that repeat the prompt are stripped
        {"prompt": [user("hello")], "chosen": [user("hello"), assistant("hi")], "rejected": [assistant("go")],
         "system": "Be brief."},
        {"prompt": "hello", "chosen": [assistant("hi")], "rejected": [user("hi"), assistant("go")],
         "system": ""},
    ]
    path = tmp_path / "explicit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, report = load_preferences(str(path), cache_dir=cache_dir)
    assert ds[0]["prompt"] == [{"role": "system", "content": "Be brief."}, user("hello")]
    assert ds[0]["chosen"] == [assistant("hi")]
    # a completion starting with a user turn (not a copy of the prompt) is invalid
    assert report.skipped == {"invalid_role": 1}


def test_strict_mode_names_line_of_json_lines_and_row_of_others(fixtures, cache_dir):
    expected = {  # JSON Lines: the 1-based line an editor shows; parquet: the 0-based row
        "generic": r"line 1: missing field 'rejected'",
        "conversational": r"line 3: chosen and rejected first differ at message 0",
        "hh_rlhf": r"line 2: chosen has text before the first",
        "undecodable": r"line 2: prompt is not valid UTF-8",
        "pku_saferlhf": r"row 4: better_response_id must be 0 or 1, got 2",
        "sft_messages": r"line 3: messages ends with a 'user' message",
    }
    for name, message in expected.items():
        fx = fixtures[name]
        load = load_sft if name.startswith("sft") else load_preferences
        with pytest.raises(ValueError) as e:
            load(fx.path, cache_dir=cache_dir, strict=True, **fx.kwargs)
        text = str(e.value)
        assert "\n" not in text
        assert re.match(re.escape(fx.path) + " " + message, text), text
    # strict mode on clean data returns the same as non-strict
    clean = load_preferences(fixtures["generic"].path, cache_dir=cache_dir, split="train[1:2]", strict=True)[0]
    assert len(clean) == 1


def test_identical_is_reported_like_the_issue(tmp_path):
    ds = datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}] * 17
                                    + [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(ValueError, match=r"^data row 17: chosen is identical to rejected$"):
        validate_preferences(ds, strict=True, source="data")


@pytest.mark.parametrize("name", ["sft_messages", "sft_prompt_completion"])
def test_sft_fixture_counts(fixtures, cache_dir, name):
    fx = fixtures[name]
    ds, report = load_sft(fx.path, cache_dir=cache_dir)
    _check(ds, report, fx)
    for row in ds:
        assert set(row) == {"prompt", "completion", "source_row"}
        assert row["prompt"] and row["completion"][0]["role"] == "assistant"


def test_sft_messages_split(fixtures, cache_dir):
    fx = fixtures["sft_messages"]
    ds, _ = load_sft(fx.path, cache_dir=cache_dir)
    assert len(ds) == len(fx.valid)
    for row, src in zip(ds, fx.valid):
        assert row["prompt"] + row["completion"] == src["messages"]
        assert len(row["completion"]) == 1


def test_local_formats_and_splits(fixtures, tmp_path, cache_dir):
    rows = [{"prompt": [user(r["prompt"])], "chosen": [assistant(r["chosen"])],
             "rejected": [assistant(r["rejected"])]} for r in fixtures["generic"].valid]
    base = datasets.Dataset.from_list(rows)
    # save_to_disk directory (DatasetDict with splits)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": base.select(range(4)), "test": base.select(range(4, 6))}).save_to_disk(str(saved))
    ds, report = load_preferences(str(saved), split="test")
    assert report.kept == 2 and ds[0]["chosen"] == rows[4]["chosen"]
    ds, report = load_preferences(str(saved), split="train[1:3]")
    assert report.kept == 2 and ds[0]["chosen"] == rows[1]["chosen"]
    # an .arrow file (as written by save_to_disk)
    single = tmp_path / "single"
    base.save_to_disk(str(single))
    arrow_files = [f for f in os.listdir(single) if f.endswith(".arrow")]
    ds, report = load_preferences(str(single / arrow_files[0]), cache_dir=cache_dir)
    assert report.kept == 6 and ds.to_list() == validate_preferences(base)[0].to_list()
    ds, _ = load_preferences(str(single), cache_dir=cache_dir)  # the save_to_disk directory itself
    assert len(ds) == 6
    # a directory of data files: splits inferred from the file names
    files = tmp_path / "files"
    files.mkdir()
    base.select(range(5)).to_json(str(files / "train.jsonl"))
    base.select(range(5, 6)).to_json(str(files / "test.jsonl"))
    ds, report = load_preferences(str(files), split="test", cache_dir=cache_dir)
    assert report.kept == 1 and ds[0]["prompt"] == rows[5]["prompt"]
    ds, _ = load_preferences(str(files), split="train", cache_dir=cache_dir)
    assert len(ds) == 5
    # a JSON array file, a split slice, a builder name with data_files, a Dataset object
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows))
    assert len(load_preferences(str(array), cache_dir=cache_dir)[0]) == 6
    assert load_preferences(str(array), split="train[2:5]", cache_dir=cache_dir)[0]["source_row"][:] == [0, 1, 2]
    assert len(load_preferences("json", data_files=[str(files / "train.jsonl")], cache_dir=cache_dir)[0]) == 5
    assert len(load_preferences(base)[0]) == 6


def test_auto_detection_errors(tmp_path, cache_dir):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match="cannot detect the preference schema"):
        load_preferences(str(path), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="cannot detect the SFT schema"):
        load_sft(str(path), cache_dir=cache_dir)
    assert len(load_sft(str(path), cache_dir=cache_dir, prompt="question", completion="answer")[0]) == 1
    with pytest.raises(ValueError, match="needs column"):
        load_preferences(str(path), schema="hh_rlhf", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="unknown preference schema"):
        load_preferences(str(path), schema="nope", cache_dir=cache_dir)
    assert detect_preference_schema({"chosen", "rejected"}, [{"chosen": "x"}], {"chosen": "chosen"}) == "hh_rlhf"
    assert detect_preference_schema({"chosen", "rejected"}, [{"chosen": []}], {"chosen": "chosen"}) == "conversational"


def test_report_summary_is_one_line():
    report = LoadReport(kept=95, skipped={"missing_field": 3, "identical_responses": 2}, source="prefs.jsonl",
                        adjusted={"truncated_prompt": 4})
    assert report.summary() == ("prefs.jsonl: kept 95 of 100 rows; skipped 5 (identical_responses=2, "
                                "missing_field=3); truncated_prompt=4")
    assert LoadReport(kept=3, skipped={}, source="x").summary() == "x: kept 3 of 3 rows; skipped 0"

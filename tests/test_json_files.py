"""lnpo.json_files.read_json: a missing file and a file that is not JSON are each one line naming the file,
raised as the caller's error types."""

from __future__ import annotations

import pytest

from lnpo.errors import CheckpointError, InputNotFound
from lnpo.json_files import read_json


def test_read_json_returns_the_content(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    assert read_json(str(tmp_path / "a.json"), missing=InputNotFound, invalid=CheckpointError, needed_by="x") == {
        "x": [1, 2]}


def test_a_missing_file_is_the_missing_type_naming_the_file_and_what_needs_it(tmp_path):
    path = str(tmp_path / "run.json")
    with pytest.raises(InputNotFound, match=rf"^{path}: missing \(a trained workdir has run.json\)$"):
        read_json(path, missing=InputNotFound, invalid=CheckpointError, needed_by="a trained workdir has run.json")


def test_invalid_json_is_the_invalid_type_in_one_line(tmp_path):
    (tmp_path / "bad.json").write_text('{"x": ')
    with pytest.raises(CheckpointError, match=r"bad.json: invalid JSON \(Expecting value: line 1") as info:
        read_json(str(tmp_path / "bad.json"), missing=InputNotFound, invalid=CheckpointError, needed_by="x")
    assert "\n" not in str(info.value) and info.value.__cause__ is None

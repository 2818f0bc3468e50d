"""Opening a data source as a raw ``datasets.Dataset``: local files, directories, builders, the Hub.

:func:`open_source` is the one entry point; :mod:`lnpo.data.sources` adapts what it returns.

JSON files are read here, line by line, with Python's ``json`` module, never with the
Arrow JSON reader (which rejects a whole file for one bad line, or for a column that
mixes text and message lists):

- JSON Lines (``.jsonl``, or a ``.json`` file that does not start with ``[``; optionally
  compressed ``.gz`` / ``.bz2`` / ``.xz`` / ``.zst``): one raw row per line of the file,
  ``{RAW: the line's bytes, LINE: its 1-based line number}``, blank lines included, so
  every line is accounted for (kept, or skipped with a reason) and an error names the
  line as an editor shows it. Nothing is decoded here: a line that is not UTF-8, not
  JSON, not an object, nested too deeply or blank is skipped with its reason by the
  adapter pass (:func:`parse_line`).
- a JSON array (``.json`` starting with ``[``): one raw row per element (``RAW`` only).

Other files (``.parquet``, ``.arrow``, ``.csv``) go through their ``datasets`` builder;
such a file that cannot be read as a whole is a :class:`~lnpo.errors.DataError` naming it.
A name that is not a local path is a Hub dataset: when the Hub is unreachable (or the
process is offline and the dataset is not in the ``datasets`` cache) that is one
:class:`~lnpo.errors.DataError` line, at once, instead of retries and a traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

import datasets
import pyarrow as pa

from lnpo.data.validate import RowIssue
from lnpo.errors import DataError, InputNotFound

RAW = "_lnpo_raw"  # one undecoded JSON value (a JSON Lines line, or an element of a list / JSON array)
LINE = "_lnpo_line"  # the 1-based line number of RAW in its JSON Lines file

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
DATA_SUFFIXES = tuple(FILE_BUILDERS) + tuple(f"{e}{c}" for e in FILE_BUILDERS for c in COMPRESSIONS)
HUB_PROBE_TIMEOUT_S = 3.0

_RAW_FEATURES = datasets.Features({RAW: datasets.Value("binary")})
_LINE_FEATURES = datasets.Features({RAW: datasets.Value("binary"), LINE: datasets.Value("int64")})


# ----------------------------------------------------------------------------- JSON


def parse_line(raw: bytes) -> dict:
    """One JSON Lines line (or JSON value) -> its object; raises :class:`RowIssue` for anything else.

    Reasons: ``blank_line`` (empty or whitespace only), ``undecodable_text`` (not UTF-8),
    ``malformed_json`` (not JSON, nested too deeply for the parser, or not an object).
    """
    raw = bytes(raw)
    if not raw.strip():
        raise RowIssue("blank_line", "line is blank")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowIssue("undecodable_text", f"line is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RowIssue("malformed_json", "line is JSON nested too deeply to parse") from None
    except ValueError as e:
        raise RowIssue("malformed_json", f"line is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RowIssue("malformed_json", f"line is a JSON {type(obj).__name__}, not an object")
    return obj


def _open_binary(path: str):
    """``path`` opened for reading bytes, decompressed by its suffix (``.gz``, ``.bz2``, ``.xz``, ``.zst``)."""
    import fsspec

    try:
        return fsspec.open(path, "rb", compression="infer").open()
    except (ImportError, RuntimeError, ValueError) as e:  # e.g. .zst without the zstandard package
        raise DataError(f"{path}: cannot decompress ({e})") from None


def _json_lines(files):
    """Generator for :meth:`datasets.Dataset.from_generator`: one raw row per line, blank lines included.

    ``files`` is a list of ``(path, mtime_ns, size, inode)``; the last three are there only so
    that the generator's cache fingerprint changes when the file does.
    """
    for path, *_ in files:
        with _open_binary(path) as f:
            for number, line in enumerate(f, start=1):
                yield {RAW: line.rstrip(b"\r\n"), LINE: number}


def _is_json_array(path: str) -> bool:
    with _open_binary(path) as f:
        head = f.read(4096)
    return head.lstrip().startswith(b"[")


def _read_json_lines(path: str, cache_dir) -> datasets.Dataset:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    try:
        return datasets.Dataset.from_generator(_json_lines, features=_LINE_FEATURES, gen_kwargs={"files": [key]},
                                               cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e
        if isinstance(cause, DataError):
            raise cause from None
        if isinstance(cause, (OSError, EOFError)):  # a truncated or corrupt compressed file
            raise DataError(f"{path}: cannot read ({type(cause).__name__}: {cause})") from None
        raise


def rows_are_lines(source) -> bool:
    """Whether ``source`` names a JSON Lines file, whose rows' ``source_row`` is their 0-based line index."""
    if not isinstance(source, (str, os.PathLike)) or not os.path.isfile(source):
        return False
    stem, ext = os.path.splitext(os.fspath(source).lower())
    if ext in COMPRESSIONS:
        ext = os.path.splitext(stem)[1]
    try:
        return FILE_BUILDERS.get(ext) == "json" and os.path.getsize(source) > 0 and not _is_json_array(source)
    except DataError:
        return False


def _read_json_array(path: str) -> datasets.Dataset:
    with _open_binary(path) as f:
        data = f.read()
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: a JSON array file that is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to parse") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} column {e.colno}: not a valid JSON array ({e.msg}); "
                        "a file of one JSON object per line is read line by line when it does not start with "
                        "'['") from None
    if not isinstance(values, list):
        raise DataError(f"{path}: expected a JSON array of row objects, got a JSON {type(values).__name__}")
    return raw_rows(values)


def raw_rows(values) -> datasets.Dataset:
    """A raw dataset of JSON values (each parsed again, and checked, by the adapter pass)."""
    lines = [json.dumps(v, ensure_ascii=False).encode("utf-8") for v in values]
    return datasets.Dataset.from_dict({RAW: lines}, features=_RAW_FEATURES)


# ----------------------------------------------------------------------------- files and splits


def split_base(split: str) -> str:
    return re.split(r"[\[+]", split, maxsplit=1)[0].strip() or "train"


def apply_slice(ds: datasets.Dataset, split: str, what: str) -> datasets.Dataset:
    """``ds`` sliced as ``split`` says (``"train[:100]"``, ``"test[10%:20%]"``); as is without a slice."""
    base = split_base(split)
    if split.strip() == base:
        return ds
    spans = datasets.ReadInstruction.from_spec(split).to_absolute({base: len(ds)})
    if len(spans) != 1:
        raise DataError(f"{what}: split {split!r} is not a single slice of one split")
    return ds.select(range(spans[0].from_, spans[0].to))


def _pick_split(ds, split: str, what: str) -> datasets.Dataset:
    if isinstance(ds, datasets.DatasetDict):
        base = split_base(split)
        if base not in ds:
            raise DataError(f"{what}: split {base!r} not found (splits: {', '.join(ds)})")
        ds = ds[base]
    return apply_slice(ds, split, what)


def _open_file(path: str, *, split: str, cache_dir, num_proc) -> datasets.Dataset:
    stem, ext = os.path.splitext(path.lower())
    if ext in COMPRESSIONS:
        ext = os.path.splitext(stem)[1]
    if ext not in FILE_BUILDERS:
        raise DataError(f"{path}: unsupported file type {ext!r}; expected one of {', '.join(FILE_BUILDERS)}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: the file is empty (no rows)")
    if FILE_BUILDERS[ext] == "json":
        ds = _read_json_array(path) if _is_json_array(path) else _read_json_lines(path, cache_dir)
        return apply_slice(ds, split, path)
    try:
        return datasets.load_dataset(FILE_BUILDERS[ext], data_files={split_base(split): [path]}, split=split,
                                     cache_dir=cache_dir, num_proc=num_proc)
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise DataError(f"{path}: cannot read this {ext} file ({type(cause).__name__}: "
                        f"{str(cause).splitlines()[0] if str(cause) else ''})") from None


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def _single_split_file(directory: str, split: str) -> str | None:
    """The one data file that holds ``split`` of ``directory`` as ``datasets`` infers splits, else None."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(directory), base_path=directory)
    except (FileNotFoundError, ValueError):
        raise DataError(f"{directory}: no data files (.jsonl, .json, .parquet, .csv, .arrow) in this directory"
                        ) from None
    found = files.get(split_base(split), [])
    return str(found[0]) if len(found) == 1 and os.path.isfile(str(found[0])) else None


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path (not a Hub dataset name): it starts with ``/``, ``.``
    or ``~``, or ends with a data file suffix."""
    return name.startswith(("/", ".", "~")) or name.lower().endswith(DATA_SUFFIXES)


# ----------------------------------------------------------------------------- the Hub


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_unreachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str:
    """``""`` when a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds, else why not."""
    url = urllib.parse.urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return ""


def _local_path_hint(name: str) -> str:
    return (f"to use local data, pass a path instead of {name!r} (a .jsonl/.json/.parquet/.csv/.arrow file, a "
            "directory of them, or a Dataset.save_to_disk directory)")


def _open_hub(name: str, config_name, *, data_files, split, revision, cache_dir, num_proc) -> datasets.Dataset:
    is_builder = data_files is not None
    if not is_builder:
        offline = _hub_offline()
        problem = "" if offline else hub_unreachable(_hub_endpoint())
        if problem:
            raise DataError(f"{name!r} is not a local file or directory and the Hugging Face Hub "
                            f"({_hub_endpoint()}) is unreachable ({problem}); {_local_path_hint(name)}, or set "
                            "HF_DATASETS_OFFLINE=1 to use a copy in the datasets cache")
    try:
        ds = datasets.load_dataset(name, config_name, data_files=data_files, split=split, revision=revision,
                                   cache_dir=cache_dir, num_proc=num_proc)
    except (ConnectionError, FileNotFoundError) as e:
        if is_builder:
            raise DataError(f"{name} data_files {data_files!r}: {str(e).splitlines()[0]}") from None
        raise DataError(f"{name!r}: not a local file or directory, and not loadable from the Hub"
                        f"{' in offline mode' if _hub_offline() else ''} ({str(e).splitlines()[0]}); "
                        f"{_local_path_hint(name)}") from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{name}: expected a map-style Dataset for split {split!r}, got {type(ds).__name__}")
    return ds


# ----------------------------------------------------------------------------- the entry point


def open_source(source: Any, *, split: str = "train", name: str | None = None, data_files=None,
                revision: str | None = None, cache_dir: str | None = None,
                num_proc: int | None = None) -> tuple[datasets.Dataset, str]:
    """Open ``source`` (see :mod:`lnpo.data.sources`) as a raw ``datasets.Dataset``; returns
    ``(dataset, display name)``. A JSON source gives raw rows (``RAW``, and ``LINE`` for JSON Lines)."""
    if isinstance(source, datasets.Dataset):
        return apply_slice(source, split, "<Dataset>"), "<Dataset>"
    if isinstance(source, datasets.DatasetDict):
        return _pick_split(source, split, "<DatasetDict>"), f"<DatasetDict>[{split_base(split)}]"
    if isinstance(source, (list, tuple)) and all(isinstance(r, Mapping) for r in source):
        try:
            return datasets.Dataset.from_list([dict(r) for r in source]), "<list>"
        except (pa.ArrowException, TypeError, ValueError):  # mixed types across rows: keep each row as JSON
            return raw_rows([dict(r) for r in source]), "<list>"
    if isinstance(source, datasets.IterableDataset):
        raise TypeError("streaming datasets are not supported: load a map-style datasets.Dataset")
    path = os.fspath(source)
    if data_files is None and os.path.isfile(path):
        return _open_file(path, split=split, cache_dir=cache_dir, num_proc=num_proc), path
    if data_files is None and os.path.isdir(path):
        if _is_saved_dataset(path):
            return _pick_split(datasets.load_from_disk(path), split, path), path
        single = _single_split_file(path, split)
        if single:  # read as a file (JSON line by line), named in reports and errors
            return _open_file(single, split=split, cache_dir=cache_dir, num_proc=num_proc), single
        return datasets.load_dataset(path, split=split, cache_dir=cache_dir, num_proc=num_proc), path
    if data_files is None and looks_like_path(path):
        raise InputNotFound(f"{path}: no such data file or directory")
    ds = _open_hub(path, name, data_files=data_files, split=split, revision=revision, cache_dir=cache_dir,
                   num_proc=num_proc)
    return ds, path if name is None else f"{path}/{name}"

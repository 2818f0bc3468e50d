"""Reading a JSON file that a user or an earlier run wrote: one clear line naming the file when it is
missing or not JSON, never a traceback from ``json``."""

from __future__ import annotations

import json
import os

from lnpo.errors import UserError


def read_json(path: str, *, missing: type[UserError], invalid: type[UserError], needed_by: str):
    """The parsed content of ``path``. ``missing`` (an error type) is raised when there is no such file,
    its message ``"<path>: missing (<needed_by>)"``; ``invalid`` when the file is not valid JSON,
    ``"<path>: invalid JSON (<where>)"``."""
    if not os.path.isfile(path):
        raise missing(f"{path}: missing ({needed_by})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise invalid(f"{path}: invalid JSON ({e})") from None

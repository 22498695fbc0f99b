"""YAML files the user edits (config.yaml, issue files): reading them with errors that name
the file, line and key path, validating them against a pydantic model, and writing files
atomically so that a crash never leaves half a file behind.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from newsletter.errors import NewsletterError

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_mapping(path: Path, error: type[NewsletterError]) -> dict[str, Any]:
    """Parse ``path`` as a YAML mapping, raising ``error`` with a one-line reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path}:{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of keys at the top level")
    return data


def key_path(loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic error location into ``teasers[2].image.alt``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validate(
    model: type[ModelT],
    data: Any,
    path: Path | str,
    error: type[NewsletterError],
    context: dict[str, Any] | None = None,
) -> ModelT:
    """Validate ``data`` against ``model``; the first error names file and key path."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        elif first["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        more = len(exc.errors()) - 1
        tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        raise error(f"{path}: {key_path(first['loc'])}: {msg}{tail}") from None


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing.
    The file keeps the mode it had, or gets the umask's for a new file (not mkstemp's 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode_for(path))
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_mode_for(path: Path) -> int:
    """The permission bits a rewrite of ``path`` should have: its own if it exists, else
    what ``open()`` would give a new file under the process's umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, for every thread)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def dump(data: Any) -> str:
    """YAML as an editor wants to read it: keys in model order, block style, Unicode kept."""
    return yaml.dump(
        data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=88
    )


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks so an editor can edit HTML and Markdown."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        # PyYAML falls back to a quoted scalar where a block cannot hold the value exactly.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_BlockDumper.add_representer(str, _str_presenter)

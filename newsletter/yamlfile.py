"""YAML files the user edits (config.yaml, issue files): reading them with errors that name
the file, line and key path (duplicate keys and alias bombs refused), validating them
against a pydantic model, changing a few keys of an editor's file without touching the
rest of it, and writing files atomically so that a crash never leaves half a file behind.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError

from newsletter.errors import NewsletterError

ModelT = TypeVar("ModelT", bound=BaseModel)

# A hand-written config or issue file has no use for many aliases; a "billion laughs"
# file needs dozens to expand into gigabytes. Refused while composing, before expansion.
MAX_ALIASES = 16


class _EditorLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (which it would let the later one
    win silently) and more than ``MAX_ALIASES`` aliases in a document."""

    aliases_seen = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
                raise ConstructorError(
                    None,
                    None,
                    f"more than {MAX_ALIASES} aliases (*{event.anchor} is one too many); refused",
                    event.start_mark,
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor names that itself
                continue
            if first is not None:
                raise ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_mapping(path: Path, error: type[NewsletterError]) -> dict[str, Any]:
    """Read ``path`` as a YAML mapping, raising ``error`` with a one-line reason."""
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
    return read_mapping_text(text, path, error)


def read_mapping_text(text: str, path: Path, error: type[NewsletterError]) -> dict[str, Any]:
    """Parse ``text`` (the contents of ``path``) as a YAML mapping."""
    try:
        data = yaml.load(text, Loader=_EditorLoader)
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


def atomic_write(path: Path, data: str | bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: all or nothing.
    The file keeps the mode it had, or gets the umask's for a new file (not mkstemp's 0600).
    ``sync=False`` skips the fsync (about 10 ms a file) for files that can be made again,
    such as a build's output: a crash may then lose the new file, never mix two."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode_for(path))
            if sync:
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


def set_top_level_keys(
    path: Path, changes: Mapping[str, Any], after: tuple[str, ...], error: type[NewsletterError]
) -> None:
    """Set the top-level keys in ``changes`` in the editor's file ``path`` and touch no
    other line: comments, quoting, folding, key order and indentation stay as the editor
    left them. A key the file lacks goes after the last of the keys ``after`` names that
    the file has, or at the end. Written
    atomically, and only once re-reading the result gives the old data plus ``changes``.

    ruamel.yaml does the round trip; since it has one indentation and line width for a
    whole file, only the lines its edit changed are carried over into the editor's text."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError as RoundTripError

    before = read_mapping(path, error)  # also refuses duplicate keys and alias bombs
    text = path.read_text(encoding="utf-8")
    editor = YAML(typ="rt")
    editor.preserve_quotes = True
    editor.width = 4096  # never re-wrap long lines
    editor.indent(mapping=2, sequence=4, offset=2)
    try:
        data = editor.load(text)
        unchanged = _dumped(editor, data)
        anchors = [key for key in after if key in data]
        for key, value in changes.items():
            if key in data:
                data[key] = value
            elif anchors:
                data.insert(list(data).index(anchors[-1]) + 1, key, value)
                anchors.append(key)
            else:
                data[key] = value
        changed = _dumped(editor, data)
    except RoundTripError as exc:
        raise error(f"{path}: cannot be edited in place ({exc})") from None
    out = changed if unchanged == text else (_carry_over(text, unchanged, changed) or changed)
    if read_mapping_text(out, path, error) != {**before, **changes}:
        raise error(
            f"{path}: could not set {', '.join(changes)} without changing other content; the file is left as it was"
        )
    atomic_write(path, out)


def _dumped(editor: Any, data: Any) -> str:
    buffer = io.StringIO()
    editor.dump(data, buffer)
    return buffer.getvalue()


def _carry_over(original: str, unchanged: str, changed: str) -> str | None:
    """``original`` with the edits that turned ``unchanged`` into ``changed`` (two dumps
    of the same file) applied to it, or None when an edited line is not in ``original``
    as it is."""
    from difflib import SequenceMatcher

    lines, before, after = (t.splitlines(keepends=True) for t in (original, unchanged, changed))
    where: dict[int, int] = {}  # line of ``unchanged`` -> the same line of ``original``
    for tag, i1, i2, j1, _j2 in SequenceMatcher(None, lines, before, autojunk=False).get_opcodes():
        if tag == "equal":
            where.update({j1 + k: i1 + k for k in range(i2 - i1)})
    edits: list[tuple[int, int, list[str]]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if i1 < i2:
            if any(k not in where for k in range(i1, i2)) or where[i2 - 1] - where[i1] != i2 - 1 - i1:
                return None
            start, end = where[i1], where[i2 - 1] + 1
        elif i1 == 0 or i1 - 1 in where:
            start = end = where[i1 - 1] + 1 if i1 else 0
        else:
            return None
        edits.append((start, end, after[j1:j2]))
    for start, end, new in reversed(edits):
        lines[start:end] = new
    return "".join(lines)


def dump(data: Any) -> str:
    """YAML as an editor wants to read it: keys in model order, block style, Unicode kept."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=88)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks so an editor can edit HTML and Markdown."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        # PyYAML falls back to a quoted scalar where a block cannot hold the value exactly.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_BlockDumper.add_representer(str, _str_presenter)

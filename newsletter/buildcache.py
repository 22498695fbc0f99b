"""The build's cache on disk, in ``.cache/`` under the output folder: Jinja's compiled
templates, and the HTML that mjml-python and premailer made of one MJML source and one
inline stylesheet. A new ``newsletter build`` of an unchanged email then neither compiles
the templates nor imports and runs premailer (together about 0.2 s of a 0.45 s build).

An entry is found by a hash of everything that makes it: the inputs, this module's
format, the installed mjml-python, premailer, cssutils and lxml, and render.py itself.
An unreadable, damaged or missing entry is a miss; a folder that cannot be written is
no cache at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

import jinja2

from newsletter.yamlfile import atomic_write

log = logging.getLogger(__name__)

CACHE_FOLDER = ".cache"
# Bumped when the entries' layout changes. An edit of render.py (compile_mjml,
# inline_css) changes the key by itself: the module's file is part of the stamp.
HTML_FORMAT = 1
# Compiled emails kept; the oldest (by last use) go first. About 50 KB each.
HTML_ENTRIES = 64
# The modules whose output the HTML entries hold.
_LIBRARIES = ("mjml", "premailer", "cssutils", "lxml", "newsletter.render")


def cache_dir(output_dir: Path) -> Path:
    return output_dir / CACHE_FOLDER


class JinjaCache(jinja2.FileSystemBytecodeCache):
    """Jinja's own bytecode cache (checked against each template's source), whose writes
    may fail without failing the build: a read-only output folder only costs time."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except OSError as exc:  # Jinja lets "not a directory" and the like through
            log.debug("template cache not read: %s", exc)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError as exc:
            log.debug("template cache not written: %s", exc)


def jinja_cache(output_dir: Path) -> JinjaCache:
    return JinjaCache(str(cache_dir(output_dir) / "jinja"))


@lru_cache(maxsize=1)
def _libraries_stamp() -> str:
    """Which versions of the libraries are installed, without importing them (premailer
    alone takes 0.1 s to import): the path, size and time of each one's module file."""
    parts = []
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        try:
            st = os.stat(origin) if origin else None
        except OSError:
            st = None
        parts.append(f"{name}={origin}:{st.st_size}:{st.st_mtime_ns}" if st else f"{name}=?")
    return ";".join(parts)


def html_key(mjml_source: str, css: str) -> str:
    """The cache key of the HTML made of ``mjml_source`` with ``css`` inlined."""
    digest = hashlib.sha256(f"{HTML_FORMAT}\0{_libraries_stamp()}\0".encode())
    digest.update(mjml_source.encode("utf-8"))
    digest.update(b"\0")
    digest.update(css.encode("utf-8"))
    return digest.hexdigest()


class HtmlCache:
    """Compiled and inlined HTML by ``html_key``: one file an entry, its first line the
    SHA-256 of the rest, so that a torn or edited file is a miss and not an email."""

    def __init__(self, output_dir: Path) -> None:
        self.directory = cache_dir(output_dir) / "html"

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.html"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        check, _, body = raw.partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode("ascii") != check:
            log.debug("damaged cache entry ignored: %s", path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept when older entries are pruned
        return body.decode("utf-8")

    def put(self, key: str, html: str) -> None:
        body = html.encode("utf-8")
        try:
            # No fsync: an entry lost in a crash is made again, a torn one fails its checksum.
            atomic_write(self._path(key), hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body, sync=False)
            self._prune()
        except OSError as exc:
            log.debug("build cache not written: %s", exc)

    def _prune(self) -> None:
        entries = []
        for path in self.directory.glob("*.html"):
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime_ns, path))
        entries.sort()
        for _mtime, path in entries[: max(0, len(entries) - HTML_ENTRIES)]:
            with contextlib.suppress(OSError):
                path.unlink()

"""Refresh the vendored caniemail snapshot (newsletter/data/caniemail/): data.json from
caniemail.com's API (or a local copy), its MIT licence kept beside it, and SNAPSHOT with
today's date and the newest test date in the data.

    python scripts/refresh_caniemail.py                      # https://www.caniemail.com/api/data.json
    python scripts/refresh_caniemail.py path/to/data.json    # a copy you downloaded
    python scripts/refresh_caniemail.py --into DIR [SOURCE]  # somewhere else (tests)

The data is checked before anything is replaced: a JSON object with a "data" list of
features that have "slug" and "stats". Commit the three files with a note of what changed.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "newsletter" / "data" / "caniemail"
SOURCE = "https://www.caniemail.com/api/data.json"


def load(source: str) -> bytes:
    if source.startswith(("https://", "http://")):
        import httpx

        response = httpx.get(source, timeout=60, follow_redirects=True)
        response.raise_for_status()
        return response.content
    return Path(source).read_bytes()


def check(raw: bytes) -> str:
    """The newest test date in the data, after checking its shape."""
    data = json.loads(raw)
    features = data.get("data") if isinstance(data, dict) else None
    if not isinstance(features, list) or not features:
        raise ValueError('no "data" list of features')
    for feature in features:
        if not isinstance(feature, dict) or "slug" not in feature or "stats" not in feature:
            raise ValueError(f"a feature without slug or stats: {str(feature)[:80]}")
    return max(str(f.get("last_test_date") or "") for f in features)


def main(argv: list[str]) -> int:
    target = TARGET
    if argv[:1] == ["--into"] and len(argv) > 1:
        target, argv = Path(argv[1]), argv[2:]
    source = argv[0] if argv else SOURCE
    try:
        raw = load(source)
        newest = check(raw)
    except (OSError, ValueError) as exc:
        print(f"error: {source}: {exc}", file=sys.stderr)
        return 1
    from newsletter.yamlfile import atomic_write

    atomic_write(target / "data.json", raw)
    atomic_write(
        target / "SNAPSHOT",
        f"{dt.date.today().isoformat()} from {source} (newest test in the data: {newest})\n".encode(),
    )
    print(f"wrote {target / 'data.json'} ({len(raw):,} bytes, newest test {newest})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

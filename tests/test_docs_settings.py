"""Every environment variable the settings read is documented, by name, in the README or
docs/ (app/settings.py is the source; an undocumented knob is one nobody can find)."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented() -> None:
    text = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    # inside backticks: `NAME` or `NAME=value` or a table cell listing several
    named = set(re.findall(r"`[^`\n]*`", text))
    missing = [
        env
        for env in ENV_NAMES
        if not any(re.search(rf"(?<![A-Z_]){env}(?![A-Z_])", quoted) for quoted in named)
    ]
    assert missing == []

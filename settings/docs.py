"""The configuration tables of docs/operations.md, written from the declarations.

`make docs` (`python -m settings.docs`) rewrites each table between its markers
(`<!-- settings:NAME begin -->` ... `<!-- settings:NAME end -->`); tests/test_settings.py fails
when the file and the declarations differ, so a setting added, renamed or re-documented in code
shows up in the docs in the same change.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from .base import declared, meta
from .executor import GROUPS
from .policy import POLICY_FILE, PolicySettings

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _variable(info: FieldInfo) -> str:
    m = meta(info)
    old = ", ".join(f"`{name}`" for name in m["old"])
    return f"`{m['env']}`" + (f" (old name {old} still read)" if old else "")


def _default(info: FieldInfo) -> str:
    m = meta(info)
    if m["shown_default"]:
        return m["shown_default"]
    value = info.default
    if m["secret"] or value is None or value in ((), frozenset(), {}):
        return "none" if value != () else "empty"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def executor_table() -> str:
    lines = ["| variable | default | unit | meaning |", "|---|---|---|---|"]
    title = None
    for group in GROUPS:
        if group.title != title:  # a concern split in two groups (the NATS login, the history keys) is one part of the table
            title = group.title
            lines.append(f"| **{title}** | | | |")
        for _, info in declared(group):
            lines.append(f"| {_variable(info)} | {_cell(_default(info))} | {meta(info)['unit'] or ''} | {_cell(info.description or '')} |")
    return "\n".join(lines)


def policy_table() -> str:
    lines = ["| variable | file key | default | unit | meaning |", "|---|---|---|---|---|", f"| `{POLICY_FILE[0]}` | | none | | {POLICY_FILE[1]} |"]
    for _, info in declared(PolicySettings):
        m = meta(info)
        lines.append(f"| {_variable(info)} | `{m['file_key']}` | {_cell(_default(info))} | {m['unit'] or ''} | {_cell(info.description or '')} |")
    return "\n".join(lines)


TABLES = {"executor": executor_table, "policy": policy_table}


def rendered(text: str) -> str:
    """`text` with every marked table written anew from the declarations."""
    for name, table in TABLES.items():
        pattern = re.compile(rf"(<!-- settings:{name} begin[^>]*-->\n)(?:.*?\n)?(<!-- settings:{name} end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no <!-- settings:{name} begin --> ... <!-- settings:{name} end --> markers")
        text = pattern.sub(lambda match: match.group(1) + table() + "\n" + match.group(2), text)
    return text


if __name__ == "__main__":  # `make docs`
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else OPERATIONS
    path.write_text(rendered(path.read_text()))
    print(f"wrote the settings tables of {path}")

"""The meta keys (surgeon/keys.py): every ``"surgeon.<key>"`` string the library's sources use
is declared there, once, under a ``*_KEY`` name (module names such as ``"surgeon.api"`` and the
surgeon file's format name ``"surgeon.slim"`` are no keys)."""

from __future__ import annotations

import re
from pathlib import Path

import surgeon
from surgeon import keys

SOURCES = Path(surgeon.__file__).parent
LITERAL = re.compile(r"""["'](surgeon\.[a-z][a-z_]*)["']""")
# the format name a surgeon file records (surgeon/persist.py's FORMAT): a file's kind, no key
NOT_KEYS = {"surgeon.slim"}


def _module_names() -> set[str]:
    """``surgeon.<name>`` of every module and package directly under surgeon/."""
    names = {f"surgeon.{p.stem}" for p in SOURCES.glob("*.py")}
    return names | {f"surgeon.{p.parent.name}" for p in SOURCES.glob("*/__init__.py")}


def _used() -> dict[str, list[str]]:
    """Each ``"surgeon.<word>"`` string of the sources (keys.py aside): where it appears."""
    found: dict[str, list[str]] = {}
    for path in sorted(SOURCES.rglob("*.py")):
        if path == SOURCES / "keys.py":
            continue
        text = path.read_text(encoding="utf-8")
        for m in LITERAL.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.setdefault(m.group(1), []).append(f"{path.relative_to(SOURCES.parent)}:{line}")
    return found


def test_every_meta_key_the_sources_use_is_declared_in_keys():
    declared = {getattr(keys, name) for name in keys.__all__}
    used = _used()
    assert "surgeon.plan" in used  # the scan finds keys at all (slim's plan is everywhere)
    undeclared = {
        key: where
        for key, where in used.items()
        if key not in declared and key not in NOT_KEYS and key not in _module_names()
    }
    assert undeclared == {}, "declare these in surgeon/keys.py"


def test_each_key_is_declared_once_under_a_key_name():
    names = sorted(n for n in vars(keys) if n.endswith("_KEY"))
    assert names == sorted(keys.__all__)
    values = [getattr(keys, n) for n in names]
    assert all(re.fullmatch(r"surgeon\.[a-z][a-z_]*", v) for v in values), values
    assert len(set(values)) == len(values)
    assert not set(values) & (NOT_KEYS | _module_names())  # a key is never a module's name

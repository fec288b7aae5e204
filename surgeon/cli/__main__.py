"""``python -m surgeon.cli``: the ``surgeon`` command."""

from __future__ import annotations

from surgeon.cli import main

__all__: list[str] = []

main()

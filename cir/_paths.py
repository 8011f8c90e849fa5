"""Where the shipped pipelines and prompts live, installed or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``pipelines`` or ``prompts``.

    A wheel carries them inside the package (``cir/_shipped/<kind>``); a source checkout or an
    editable install reads them from the repository's top-level folder of the same name.
    """
    for candidate in (_PACKAGE / "_shipped" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped folder {kind!r} not found beside the cir package")

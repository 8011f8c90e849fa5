"""Fixtures of the integration tests that draw pictures: tiny diffusers pipelines and photos."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny InstructPix2Pix editor and a tiny text-to-image pipeline saved to disk."""
    from cir.testing.diffusion import tiny_instruct_pix2pix, tiny_text_to_image

    root = tmp_path_factory.mktemp("generators")
    return {
        "editor": tiny_instruct_pix2pix(root / "editor"),
        "drawer": tiny_text_to_image(root / "drawer"),
    }


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real photos (from scikit-image) at 40x32 pixels, so edits batch together."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((40, 32)).save(
            folder / f"{name}.png"
        )
    return folder

"""One image holding the reference and a candidate side by side, for evaluators that compare them.

Both images are fitted into square tiles (aspect ratio kept, centred on grey) and separated by a
black bar, so the picture is identical on every machine and its cache key stable.
"""

from __future__ import annotations

from PIL import Image, ImageOps

TILE_BACKGROUND = (128, 128, 128)
SEPARATOR = (0, 0, 0)
MIN_TILE = 28


def side_by_side(
    left: Image.Image, right: Image.Image, tile: int = 448, bar: int = 8
) -> Image.Image:
    """``left`` and ``right`` in two ``tile`` x ``tile`` squares with a ``bar``-pixel black bar.

    Example:
        >>> side_by_side(reference, candidate, tile=448).size
        (904, 448)
    """
    if tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels, got {tile}")
    if bar < 0:
        raise ValueError(f"bar must be zero or more pixels, got {bar}")
    canvas = Image.new("RGB", (2 * tile + bar, tile), SEPARATOR)
    for x, image in ((0, left), (tile + bar, right)):
        fitted = ImageOps.pad(image.convert("RGB"), (tile, tile), color=TILE_BACKGROUND)
        canvas.paste(fitted, (x, 0))
    return canvas

"""One image of numbered tiles: the candidates a grid re-ranker looks at in a single request.

Numbers are drawn with a built-in 5x7 bitmap font (white blocks on a black badge in each tile's
top-left corner), so a grid is pixel-identical on every machine and Pillow version, and its cache
key (the hash of its bytes) is stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from cir.errors import ConfigError

GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7

# Each digit is 7 rows of 5 cells; "#" is ink.
DIGIT_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}

INK = (255, 255, 255)
BADGE = (0, 0, 0)
CANVAS = (255, 255, 255)
TILE_BACKGROUND = (128, 128, 128)
MIN_TILE = 48


@dataclass(frozen=True)
class GridLayout:
    """Where everything sits in a composed grid (pixel boxes are ``(left, top, right, bottom)``).

    Attributes:
        cols: tiles per row.
        rows: number of rows.
        tile_size: side of each square tile in pixels.
        gap: white space between tiles and around the grid.
        scale: size of one font cell in pixels.
        tiles: the box of each tile, in candidate order.
        badges: the box of each number badge, in candidate order.
        labels: the number shown on each tile.
    """

    cols: int
    rows: int
    tile_size: int
    gap: int
    scale: int
    tiles: tuple[tuple[int, int, int, int], ...]
    badges: tuple[tuple[int, int, int, int], ...]
    labels: tuple[int, ...]

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the whole grid image."""
        step = self.tile_size + self.gap
        return self.gap + self.cols * step, self.gap + self.rows * step


def grid_shape(count: int, cols: int | None = None) -> tuple[int, int]:
    """Columns and rows for ``count`` tiles (a near-square layout when ``cols`` is None)."""
    if count < 1:
        raise ConfigError("a grid needs at least one candidate image")
    if cols is not None and cols < 1:
        raise ConfigError(f"grid_cols must be a positive integer or null, got {cols}")
    cols = min(cols or math.ceil(math.sqrt(count)), count)
    return cols, math.ceil(count / cols)


def label_scale(tile_size: int) -> int:
    """Font cell size for a tile: digits about a sixth of the tile high, at least 2 px cells."""
    return max(2, tile_size // 40)


def badge_size(label: int, scale: int) -> tuple[int, int]:
    """Width and height of the badge holding ``label`` (one cell of padding all round)."""
    digits = len(str(label))
    width = (digits * (GLYPH_WIDTH + 1) + 1) * scale
    return width, (GLYPH_HEIGHT + 2) * scale


def compose_grid(
    images: Sequence[Image.Image],
    cols: int | None = None,
    tile_size: int = 224,
    gap: int = 4,
    first_label: int = 1,
) -> tuple[Image.Image, GridLayout]:
    """Tile ``images`` row by row into one RGB image with a visible number on each tile.

    Each image is scaled to fit its square tile (aspect ratio kept, centred on grey). Tile ``i``
    shows the number ``first_label + i``.

    Args:
        images: the candidates, best retrieval rank first.
        cols: tiles per row; None picks ``ceil(sqrt(len(images)))``.
        tile_size: side of each tile in pixels (at least 48, so a three-digit badge fits).
        gap: white pixels between tiles and around the grid.
        first_label: the number on the first tile.

    Returns:
        The grid image and its layout.

    Example:
        >>> grid, layout = compose_grid(candidate_images, cols=4, tile_size=160)
        >>> layout.labels[:3]
        (1, 2, 3)
    """
    if tile_size < MIN_TILE:
        raise ConfigError(f"tile_size must be at least {MIN_TILE} pixels, got {tile_size}")
    if len(images) > 999:
        raise ConfigError(f"a grid holds at most 999 tiles, got {len(images)}")
    if gap < 0:
        raise ConfigError(f"grid gap must be zero or more pixels, got {gap}")
    cols, rows = grid_shape(len(images), cols)
    scale = label_scale(tile_size)
    tiles, badges, labels = [], [], []
    for i in range(len(images)):
        left = gap + (i % cols) * (tile_size + gap)
        top = gap + (i // cols) * (tile_size + gap)
        label = first_label + i
        width, height = badge_size(label, scale)
        tiles.append((left, top, left + tile_size, top + tile_size))
        badges.append((left, top, left + width, top + height))
        labels.append(label)
    layout = GridLayout(
        cols, rows, tile_size, gap, scale, tuple(tiles), tuple(badges), tuple(labels)
    )
    canvas = Image.new("RGB", layout.size, CANVAS)
    for image, box, label in zip(images, layout.tiles, layout.labels, strict=True):
        canvas.paste(_fit_tile(image, tile_size), box[:2])
        draw_label(canvas, label, box[:2], scale)
    return canvas, layout


def _fit_tile(image: Image.Image, tile_size: int) -> Image.Image:
    image = image.convert("RGB")
    ratio = tile_size / max(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    tile = Image.new("RGB", (tile_size, tile_size), TILE_BACKGROUND)
    offset = ((tile_size - size[0]) // 2, (tile_size - size[1]) // 2)
    tile.paste(image.resize(size, Image.Resampling.BICUBIC), offset)
    return tile


def draw_label(canvas: Image.Image, label: int, origin: tuple[int, int], scale: int) -> None:
    """Draw the badge with ``label`` in white bitmap digits at ``origin`` (its top-left)."""
    draw = ImageDraw.Draw(canvas)
    width, height = badge_size(label, scale)
    x0, y0 = origin
    draw.rectangle((x0, y0, x0 + width - 1, y0 + height - 1), fill=BADGE)
    for d, digit in enumerate(str(label)):
        left = x0 + (1 + d * (GLYPH_WIDTH + 1)) * scale
        for row, line in enumerate(DIGIT_GLYPHS[digit]):
            for col, cell in enumerate(line):
                if cell == "#":
                    x, y = left + col * scale, y0 + (1 + row) * scale
                    draw.rectangle((x, y, x + scale - 1, y + scale - 1), fill=INK)

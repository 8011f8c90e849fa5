"""The grid image, checked pixel by pixel: tile placement, tile content and the drawn numbers."""

from __future__ import annotations

import pytest
from PIL import Image

from cir.errors import ConfigError
from cir.rerank.grid import (
    BADGE,
    CANVAS,
    DIGIT_GLYPHS,
    GLYPH_HEIGHT,
    GLYPH_WIDTH,
    INK,
    TILE_BACKGROUND,
    compose_grid,
    grid_shape,
)

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200),
           (200, 30, 200), (90, 60, 20), (250, 150, 0), (100, 0, 140), (0, 90, 60),
           (160, 160, 250), (20, 120, 220)]  # fmt: skip


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def read_number(image: Image.Image, left: int, top: int, scale: int) -> str:
    """Decode the digits of the badge whose top-left corner is (left, top) from its pixels."""
    assert image.getpixel((left, top)) == BADGE, "no badge at the tile corner"
    digits = ""
    x = left + scale
    while image.getpixel((x, top)) == BADGE and x + GLYPH_WIDTH * scale <= image.width:
        cells = []
        for row in range(GLYPH_HEIGHT):
            line = ""
            for col in range(GLYPH_WIDTH):
                cx = x + col * scale + scale // 2
                cy = top + (1 + row) * scale + scale // 2
                pixel = image.getpixel((cx, cy))
                assert pixel in (INK, BADGE), f"badge pixel {pixel} at {(cx, cy)}"
                line += "#" if pixel == INK else "."
            cells.append(line)
        matches = [d for d, glyph in DIGIT_GLYPHS.items() if glyph == tuple(cells)]
        if not matches:
            break
        digits += matches[0]
        x += (GLYPH_WIDTH + 1) * scale
    return digits


def test_glyphs_are_distinct_and_well_formed():
    shapes = list(DIGIT_GLYPHS.values())
    assert len(set(shapes)) == 10
    for glyph in shapes:
        assert len(glyph) == GLYPH_HEIGHT
        assert all(len(line) == GLYPH_WIDTH and set(line) <= {"#", "."} for line in glyph)


@pytest.mark.parametrize(
    ("count", "cols", "expected"),
    [(1, None, (1, 1)), (4, None, (2, 2)), (5, None, (3, 2)), (10, None, (4, 3)),
     (10, 5, (5, 2)), (3, 8, (3, 1)), (50, None, (8, 7))],
)  # fmt: skip
def test_grid_shape(count, cols, expected):
    assert grid_shape(count, cols) == expected


def test_layout_and_tile_colours_pixelwise():
    tile, gap, count, cols = 96, 6, 10, 4
    grid, layout = compose_grid(
        [solid(c) for c in COLOURS[:count]], cols=cols, tile_size=tile, gap=gap
    )
    assert grid.size == (gap + cols * (tile + gap), gap + 3 * (tile + gap)) == layout.size
    for i in range(count):
        row, col = divmod(i, cols)
        left, top = gap + col * (tile + gap), gap + row * (tile + gap)
        assert layout.tiles[i] == (left, top, left + tile, top + tile)
        # bottom-right corner of the tile is the candidate's own colour (no badge there)
        assert grid.getpixel((left + tile - 1, top + tile - 1)) == COLOURS[i]
        assert grid.getpixel((left + tile // 2, top + tile - 2)) == COLOURS[i]
        # the gap around each tile is canvas white
        assert grid.getpixel((left - 1, top + tile // 2)) == CANVAS
        assert grid.getpixel((left + tile // 2, top + tile)) == CANVAS
    # cells past the last tile (row 3 holds two tiles) stay empty canvas
    empty_left = gap + 2 * (tile + gap)
    assert grid.getpixel((empty_left + tile // 2, gap + 2 * (tile + gap) + tile // 2)) == CANVAS


def test_every_tile_shows_its_number():
    count = 12
    grid, layout = compose_grid([solid(c) for c in COLOURS[:count]], cols=5, tile_size=120)
    assert layout.labels == tuple(range(1, count + 1))
    for i, (left, top, *_rest) in enumerate(layout.tiles):
        assert read_number(grid, left, top, layout.scale) == str(i + 1)


def test_numbers_start_where_asked():
    grid, layout = compose_grid([solid(c) for c in COLOURS[:3]], tile_size=64, first_label=0)
    decoded = [read_number(grid, t[0], t[1], layout.scale) for t in layout.tiles]
    assert decoded == ["0", "1", "2"]


def test_badge_is_ink_on_black_and_bounded():
    grid, layout = compose_grid([solid((10, 10, 10))] * 10, tile_size=200)
    left, top, right, bottom = layout.badges[9]  # two digits: "10"
    colours = {grid.getpixel((x, y)) for x in range(left, right) for y in range(top, bottom)}
    assert colours == {INK, BADGE}
    assert right - left == (2 * (GLYPH_WIDTH + 1) + 1) * layout.scale
    # just outside the badge is the tile content again
    assert grid.getpixel((right, top + 1)) == (10, 10, 10)
    assert grid.getpixel((left + 1, bottom)) == (10, 10, 10)


def test_wide_images_are_letterboxed_not_stretched():
    wide = solid((0, 0, 255), (200, 100))
    grid, _ = compose_grid([wide], tile_size=100, gap=0)
    assert grid.size == (100, 100)
    assert grid.getpixel((50, 10)) == TILE_BACKGROUND  # band above the image
    assert grid.getpixel((50, 90)) == TILE_BACKGROUND  # band below
    assert grid.getpixel((50, 50)) == (0, 0, 255)
    assert grid.getpixel((99, 74)) == (0, 0, 255)


def test_grid_is_deterministic():
    images = [solid(c) for c in COLOURS[:5]]
    first, _ = compose_grid(images, tile_size=64)
    second, _ = compose_grid(images, tile_size=64)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tile_size": 20}, "tile_size"), ({"cols": 0}, "grid_cols"), ({"gap": -1}, "gap")],
)
def test_bad_grid_parameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        compose_grid([solid((0, 0, 0))] * 2, **kwargs)


def test_empty_grid_is_refused():
    with pytest.raises(ConfigError, match="at least one"):
        compose_grid([])

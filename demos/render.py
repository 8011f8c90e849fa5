"""Turning a query's state into what the page shows: result tiles and the stage-by-stage trace.

Everything a model or a user wrote is HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from typing import Any

from PIL import Image, ImageDraw

from cir.index.ids import printable
from cir.types import QueryState, StageRecord

from .engine import Outcome
from .safety import gallery_tile, redact_config, redact_secrets

MAX_LISTED = 5
_PLACEHOLDER_SIDE = 160
_NOTE_CHARS = 160
_HIDDEN_NOTES = {"weights", "parse_errors", "imagined"}
_IMAGINED_SIDE = 256


# ---------------------------------------------------------------------- result grid
def result_tiles(index: Any, state: QueryState | None) -> list[tuple[Image.Image, str]]:
    """(image, caption) pairs for the result grid: ``"#1 · 0.812 · id"``; a re-ranked tile
    says how far it moved (``"#1 ▲2 · 0.812 · id"``)."""
    if state is None or state.ranking is None:
        return []
    moved = {m["id"]: m["from"] for m in movements(state)}
    tiles = []
    for rank, (gid, score) in enumerate(
        zip(state.ranking.ids, state.ranking.scores, strict=True), 1
    ):
        before = moved.get(gid, rank)
        move = f" {'▲' if before > rank else '▼'}{abs(before - rank)}" if before != rank else ""
        caption = f"#{rank}{move} · {score:.3f} · {printable(gid)}"
        tiles.append((gallery_tile(index, gid) or placeholder(gid), caption))
    return tiles


def placeholder(label: str) -> Image.Image:
    """A grey tile naming an image whose file is not available (or not inside the gallery)."""
    tile = Image.new("RGB", (_PLACEHOLDER_SIDE, _PLACEHOLDER_SIDE), (226, 228, 233))
    ImageDraw.Draw(tile).text((8, _PLACEHOLDER_SIDE // 2 - 6), label[:24], fill=(70, 74, 84))
    return tile


def movements(state: QueryState) -> list[dict[str, Any]]:
    """The re-ranker's moves (``{"id", "from", "to"}`` rows) found in ``state.data``."""
    values = list(state.data.values())
    values += [v for d in state.data.values() if isinstance(d, dict) for v in d.values()]
    for value in values:
        if isinstance(value, list) and value and all(_is_move(v) for v in value):
            return value
    return []


def _is_move(value: Any) -> bool:
    return isinstance(value, dict) and {"id", "from", "to"} <= set(value)


def data_images(state: QueryState | None) -> list[tuple[str, Image.Image]]:
    """Images stages left in ``state.data`` (the re-ranker's numbered grid), by key; pictures
    an ``imagine`` stage drew are shown in the trace instead."""
    if state is None:
        return []
    drawn = {field for field, _, _ in imagined(state)}
    return [(k, v) for k, v in state.data.items() if isinstance(v, Image.Image) and k not in drawn]


def imagined(state: QueryState) -> list[tuple[str, str, Image.Image]]:
    """(data key, prompt, picture) of every picture an ``imagine`` stage drew, in stage order."""
    out = []
    for rec in state.trace:
        note = rec.notes.get("imagined")
        key = str(note.get("field", "")).removeprefix("data.") if isinstance(note, dict) else ""
        if isinstance(state.data.get(key), Image.Image):
            out.append((key, str(note.get("prompt", "")), state.data[key]))
    return out


# ---------------------------------------------------------------------- trace
def trace_html(outcome: Outcome) -> str:
    """The trace panel: warnings, what the language models wrote, weights, moves, stage table."""
    if not outcome.ok:
        return error_html(outcome.error or "the query failed")
    state = outcome.state
    parts = [_summary(outcome), _fallback_warnings(state.trace)]
    parts.append(_listing("Reference caption", state.captions))
    parts.append(_listing("Target description", state.targets))
    parts.append(_imagined(state))
    parts.append(_weights(state.trace))
    parts.append(_reranker(state))
    parts.append(_stage_table(state.trace))
    parts.append(_raw_outputs(state.llm_raw))
    parts.append(_resolved(outcome.resolved))
    return redact_secrets(printable("\n".join(p for p in parts if p)))


def error_html(message: str) -> str:
    return f'<div class="cir-error"><b>Could not answer this query.</b><br>{escape(message)}</div>'


def _summary(outcome: Outcome) -> str:
    state = outcome.state
    count = len(state.ranking) if state.ranking else 0
    hits = sum(r.cache_hits for r in state.trace)
    lookups = hits + sum(r.cache_misses for r in state.trace)
    cache = f" · cache {hits}/{lookups} hits" if lookups else ""
    return (
        f'<div class="cir-summary"><b>{escape(outcome.pipeline)}</b> · {count} results · '
        f"{outcome.seconds * 1000:.0f} ms{cache}</div>"
    )


def _fallback_warnings(trace: list[StageRecord]) -> str:
    rows = []
    for rec in trace:
        if rec.fallbacks:
            errors = rec.notes.get("parse_errors") or []
            why = f": {escape(_short(str(errors[-1])))}" if errors else ""
            rows.append(
                f"<li><b>{escape(rec.name)}</b> fell back {rec.fallbacks}× "
                f"(an answer did not parse{why})</li>"
            )
    if not rows:
        return ""
    return f'<div class="cir-warning">⚠ Parser fallbacks<ul>{"".join(rows)}</ul></div>'


def _listing(title: str, values: list[str]) -> str:
    if not values:
        return ""
    items = "".join(f"<li>{escape(str(v))}</li>" for v in values[:MAX_LISTED])
    more = len(values) - MAX_LISTED
    extra = f"<li><i>… and {more} more</i></li>" if more > 0 else ""
    plural = "s" if len(values) > 1 else ""
    return f"<h4>{title}{plural}</h4><ol>{items}{extra}</ol>"


def _imagined(state: QueryState) -> str:
    figures = []
    for key, prompt, picture in imagined(state):
        thumb = picture.copy()
        thumb.thumbnail((_IMAGINED_SIDE, _IMAGINED_SIDE))
        buffer = io.BytesIO()
        thumb.save(buffer, format="PNG")
        src = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        figures.append(
            f'<figure class="cir-imagined"><img src="{src}" alt="{escape(key)}">'
            f"<figcaption><b>{escape(key)}</b>: {escape(_short(prompt))}</figcaption></figure>"
        )
    return f"<h4>Imagined pictures</h4>{''.join(figures)}" if figures else ""


def _weights(trace: list[StageRecord]) -> str:
    rows = []
    for rec in trace:
        weights = rec.notes.get("weights")
        if isinstance(weights, dict):
            parts = " · ".join(f"{escape(str(k))} {float(v):.2f}" for k, v in weights.items())
            rows.append(f"<li><b>{escape(rec.name)}</b>: {parts}</li>")
    return f"<h4>Fusion weights</h4><ul>{''.join(rows)}</ul>" if rows else ""


def _reranker(state: QueryState) -> str:
    parts = []
    if state.reasoning:
        text = "<br><br>".join(escape(r) for r in state.reasoning if r)
        parts.append(f"<details open><summary>Model reasoning</summary><p>{text}</p></details>")
    moves = movements(state)
    if moves:
        rows = "".join(
            f"<tr><td>{escape(str(m['id']))}</td><td>{m['from']}</td><td>{m['to']}</td>"
            f"<td>{_arrow(m['from'] - m['to'])}</td></tr>"
            for m in moves
        )
        parts.append(
            "<div class='cir-scroll'><table class='cir-table'><tr><th>candidate</th>"
            f"<th>before</th><th>after</th><th>move</th></tr>{rows}</table></div>"
        )
    return "<h4>Re-ranking</h4>" + "".join(parts) if parts else ""


def _arrow(delta: int) -> str:
    if delta > 0:
        return f'<span class="cir-up">▲ {delta}</span>'
    if delta < 0:
        return f'<span class="cir-down">▼ {-delta}</span>'
    return "="


def _stage_table(trace: list[StageRecord]) -> str:
    with_notes = any(_notes(rec.notes) for rec in trace)
    rows = []
    for rec in trace:
        lookups = rec.cache_hits + rec.cache_misses
        cache = f"{rec.cache_hits}/{lookups}" if lookups else "–"
        fallback = f'<span class="cir-flag">⚠ {rec.fallbacks}</span>' if rec.fallbacks else "0"
        rows.append(
            f"<tr><td>{escape(rec.name)}</td><td>{rec.seconds * 1000:.1f} ms</td>"
            f"<td>{cache}</td><td>{fallback}</td>"
            + (f"<td class='cir-notes'>{escape(_notes(rec.notes))}</td>" if with_notes else "")
            + "</tr>"
        )
    notes = "<th>notes</th>" if with_notes else ""
    return (
        "<h4>Stages</h4><div class='cir-scroll'><table class='cir-table'><tr><th>stage</th>"
        f"<th>time</th><th>cache hits</th><th>fallbacks</th>{notes}</tr>"
        + "".join(rows)
        + "</table></div>"
    )


def _notes(notes: dict[str, Any]) -> str:
    shown = {k: v for k, v in notes.items() if k not in _HIDDEN_NOTES}
    if not shown:
        return ""
    return _short(json.dumps(shown, default=str), _NOTE_CHARS)


def _raw_outputs(raw: list[str]) -> str:
    if not raw:
        return ""
    items = "".join(f"<pre>{escape(_short(r, 2000))}</pre>" for r in raw[:MAX_LISTED])
    return f"<details><summary>Raw model output ({len(raw)})</summary>{items}</details>"


def _resolved(spec: dict[str, Any]) -> str:
    if not spec:
        return ""
    import yaml

    text = yaml.safe_dump(redact_config(spec), sort_keys=False, width=100)
    return f"<details><summary>Pipeline as run</summary><pre>{escape(text)}</pre></details>"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

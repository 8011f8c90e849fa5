"""Prompt files: versioned templates with front matter, strict rendering, hashes and parsers.

A prompt file lives at ``prompts/<stage>/<name>.v<N>.<ext>`` (any text extension: ``.txt``,
``.md``). It starts with a YAML front matter block between two ``---`` lines, followed by the
template of the user message::

    ---
    id: recompose/general          # <stage>/<name>; taken from the path when omitted
    version: 1                     # N of the file name
    description: one line on what the prompt asks
    source: the paper whose prompt structure it follows
    variables: [caption, modification]
    images: 0                      # images attached to the user message
    system: optional system message (static text)
    parser: {kind: labelled_line, label: Edited Description}
    fallback: {policy: retry, retries: 1, then: fallback}
    ---
    Caption: {{caption}}
    ...

Placeholders are ``{{name}}`` (spaces allowed inside the braces); any other brace is literal, so
JSON examples need no escaping. Rendering is strict: every declared variable must be given, no
other may be, and a placeholder not declared in ``variables`` is an error when the file loads.
A shipped version is never edited; a change is a new ``.v<N+1>`` file. The file's sha256 goes
into cache keys and run manifests.

Parsers (``parser.kind``): ``text`` (the whole answer), ``labelled_line`` (the text after the
last ``<label>:``; options ``pick: first`` reads the first such line instead, ``bare: true``
takes an answer without any such line whole), ``json_key`` (one string value of a JSON
object), ``json`` (a JSON object with the string keys listed in ``keys``). Fallback policies
(``fallback.policy``): ``fallback`` (use the value the stage declares, e.g. the modification
text), ``retry`` (ask again up to ``retries`` times, then ``then``: ``fallback`` or ``raise``)
and ``raise``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cir._paths import shipped_dir
from cir.errors import ConfigError
from cir.parsing import extract_json

if TYPE_CHECKING:
    from cir.llm import ChatMessage

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*\r?\n?(.*)\Z", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FILE_NAME = re.compile(r"(?P<name>.+)\.v(?P<version>\d+)\.[A-Za-z0-9]+\Z")
_KEYS = {
    "id", "version", "stage", "description", "source", "variables", "images", "system",
    "parser", "fallback", "notes",
}  # fmt: skip
_POLICIES = ("fallback", "retry", "raise")


class ParseError(ValueError):
    """A model answer did not have the shape the prompt's parser expects."""


# ---------------------------------------------------------------------------- fallback policy
@dataclass(frozen=True)
class FallbackPolicy:
    """What happens when an answer cannot be parsed.

    Args:
        policy: ``fallback`` (use the caller's fallback value), ``retry`` or ``raise``.
        retries: how many times ``retry`` asks again (at least 1 for ``retry``).
        then: after the retries are spent: ``fallback`` or ``raise``.
        retry_temperature: temperature of the retries when the first request was greedy
            (a greedy retry would repeat the same answer).

    Example:
        >>> FallbackPolicy.from_spec({"policy": "retry", "retries": 2, "then": "fallback"})
    """

    policy: str = "fallback"
    retries: int = 0
    then: str = "fallback"
    retry_temperature: float = 0.7

    def __post_init__(self) -> None:
        if self.policy not in _POLICIES:
            raise ConfigError(f"fallback policy {self.policy!r} unknown; valid: {_POLICIES}")
        if self.then not in ("fallback", "raise"):
            raise ConfigError(f"fallback `then` {self.then!r} unknown; valid: fallback, raise")
        if self.policy == "retry" and self.retries < 1:
            raise ConfigError("fallback policy 'retry' needs retries >= 1")
        if self.policy != "retry" and self.retries:
            raise ConfigError(f"fallback policy {self.policy!r} takes no retries")

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any] | None) -> FallbackPolicy:
        """From ``"raise"``, ``{"policy": "retry", "retries": 2}`` or None (the default)."""
        if spec is None:
            return cls()
        if isinstance(spec, str):
            spec = {"policy": spec, "retries": 1 if spec == "retry" else 0}
        valid = {"policy", "retries", "then", "retry_temperature"}
        unknown = set(spec) - valid
        if unknown:
            raise ConfigError(f"fallback: unknown key(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**dict(spec))

    @property
    def final(self) -> str:
        """What happens after the last attempt fails: ``fallback`` or ``raise``."""
        return self.then if self.policy == "retry" else self.policy


# ---------------------------------------------------------------------------- parsers
Parser = Callable[[str], Any]


def build_parser(spec: str | Mapping[str, Any]) -> Parser:
    """A parser from a front-matter spec such as ``{"kind": "labelled_line", "label": "X"}``.

    Each parser takes the model's text and returns the parsed value or raises ``ParseError``.

    Example:
        >>> build_parser({"kind": "labelled_line", "label": "Answer"})("...\\nAnswer: a red car")
        'a red car'
    """
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec)
    kind = spec.pop("kind", None)
    makers = {"text": _text_parser, "labelled_line": _labelled_parser, "json": _json_parser}
    makers["json_key"] = _json_key_parser
    if kind not in makers:
        raise ConfigError(f"parser kind {kind!r} unknown; valid kinds: {', '.join(makers)}")
    try:
        return makers[kind](**spec)
    except TypeError as exc:
        raise ConfigError(f"parser {kind!r}: {exc}") from None


def _clean(text: str) -> str:
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _text_parser() -> Parser:
    def parse(text: str) -> str:
        value = _clean(text)
        if not value:
            raise ParseError("empty answer")
        return value

    return parse


def _labelled_parser(label: str, pick: str = "last", bare: bool = False) -> Parser:
    """``pick``: which labelled line counts when several do (``first`` or ``last``);
    ``bare``: an answer with no labelled line at all is taken whole (models that omit the label).
    """
    if pick not in ("first", "last"):
        raise ConfigError(f"labelled_line parser: pick must be 'first' or 'last', got {pick!r}")
    pattern = re.compile(rf"{re.escape(label)}\s*\**\s*:\s*\**(.*)", re.IGNORECASE)

    def parse(text: str) -> str:
        lines = text.splitlines()
        order = range(len(lines)) if pick == "first" else range(len(lines) - 1, -1, -1)
        for i in order:
            match = pattern.search(lines[i])
            if match is None:
                continue
            value = _clean(match.group(1))
            if not value and i + 1 < len(lines):
                value = _clean(lines[i + 1])
            if value:
                return value
            raise ParseError(f"the line labelled {label!r} is empty")
        if bare and _clean(text):
            return _clean(text)
        raise ParseError(f"no line labelled {label!r} in the answer")

    return parse


def _json_parser(keys: Sequence[str] = ()) -> Parser:
    def parse(text: str) -> dict[str, Any]:
        value = extract_json(text)
        if not isinstance(value, dict):
            raise ParseError("no JSON object in the answer")
        for key in keys:
            item = value.get(key)
            if not isinstance(item, str) or not item.strip():
                raise ParseError(f"JSON answer lacks a non-empty string {key!r}")
        return value

    return parse


def _json_key_parser(key: str) -> Parser:
    parse_object = _json_parser([key])
    return lambda text: parse_object(text)[key].strip()


# ---------------------------------------------------------------------------- prompt
@dataclass(frozen=True)
class Prompt:
    """One version of a prompt: front matter plus template, with its sha256.

    Example:
        >>> p = load_prompt("recompose/general")
        >>> p.render(caption="a dog on grass", modification="make it a cat")
        >>> p.parse("Edited Description: a cat on grass")
        'a cat on grass'
    """

    id: str
    version: int
    template: str
    variables: tuple[str, ...]
    parser_spec: dict[str, Any]
    fallback: FallbackPolicy
    sha256: str
    images: int | None = 0
    system: str | None = None
    description: str = ""
    source: str = ""
    path: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``<stage>/<name>.v<N>``: the name that loads exactly this version."""
        return f"{self.id}.v{self.version}"

    @property
    def identity(self) -> str:
        """Name, version and a hash prefix, for logs and manifests."""
        return f"{self.ref}@{self.sha256[:12]}"

    def render(self, **values: Any) -> str:
        """The template with every variable filled in (strict: none missing, none extra)."""
        given, declared = set(values), set(self.variables)
        if given != declared:
            missing, extra = sorted(declared - given), sorted(given - declared)
            raise ConfigError(
                f"prompt {self.ref}: missing variable(s) {missing}, unknown variable(s) {extra}; "
                f"it takes exactly {sorted(declared)}"
            )
        for name, value in values.items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ConfigError(
                    f"prompt {self.ref}: variable {name!r} must be text, got {type(value).__name__}"
                )
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.template)

    def messages(
        self, values: Mapping[str, Any], images: Sequence[Any] = (), labels: Sequence[str] = ()
    ) -> tuple:
        """Chat messages: the optional system message, then the rendered user message.

        Without ``labels`` the images come before the text; with them (one per image) the text
        comes first, then each label followed by its image.
        """
        from cir.llm import ChatMessage

        if self.images is not None and len(images) != self.images:
            raise ConfigError(f"prompt {self.ref} takes {self.images} image(s), got {len(images)}")
        text = self.render(**values)
        if labels:
            labels = (f"{text}\n\n{labels[0]}", *labels[1:])
            text = ""
        user: ChatMessage = ChatMessage("user", text, tuple(images), tuple(labels))
        if self.system:
            return (ChatMessage("system", self.system), user)
        return (user,)

    def parser(self) -> Parser:
        """The parser the front matter declares."""
        return build_parser(self.parser_spec)

    def parse(self, text: str) -> Any:
        """Parse one model answer (raises ``ParseError``)."""
        return self.parser()(text)


def parse_prompt_text(text: str, path: Path | None = None) -> Prompt:
    """Build a ``Prompt`` from the text of a prompt file (``path`` names it in errors)."""
    where = str(path) if path else "prompt text"
    match = _FRONT.match(text)
    if match is None:
        raise ConfigError(f"{where}: a prompt file starts with front matter between '---' lines")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: front matter must be a mapping")
    unknown = set(meta) - _KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown front matter key(s) {sorted(unknown)}; valid: {sorted(_KEYS)}"
        )
    for key in ("variables", "parser"):
        if key not in meta:
            raise ConfigError(f"{where}: front matter needs `{key}:`")
    template = match.group(2).rstrip()
    variables = tuple(meta["variables"] or ())
    _check_placeholders(template, variables, where)
    build_parser(meta["parser"])  # validate now, not at the first answer
    pid, version = _identity_from(meta, path)
    return Prompt(
        id=pid,
        version=version,
        template=template,
        variables=variables,
        parser_spec=dict(meta["parser"])
        if isinstance(meta["parser"], dict)
        else {"kind": meta["parser"]},
        fallback=FallbackPolicy.from_spec(meta.get("fallback")),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        images=_image_count(meta.get("images", 0), where),
        system=meta.get("system"),
        description=str(meta.get("description", "")).strip(),
        source=str(meta.get("source", "")).strip(),
        path=path,
        extras={"notes": meta["notes"]} if "notes" in meta else {},
    )


def _image_count(value: Any, where: str) -> int | None:
    if value == "any":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{where}: `images:` must be a count >= 0 or 'any', got {value!r}")


def _check_placeholders(template: str, variables: tuple[str, ...], where: str) -> None:
    used = [m.group(1) for m in _PLACEHOLDER.finditer(template)]
    for name in used:
        if not _IDENT.match(name):
            raise ConfigError(f"{where}: placeholder {{{{{name}}}}} is not a variable name")
        if name not in variables:
            raise ConfigError(f"{where}: placeholder {{{{{name}}}}} is not declared in `variables`")
    unused = sorted(set(variables) - set(used))
    if unused:
        raise ConfigError(f"{where}: declared variable(s) {unused} never appear in the template")


def _identity_from(meta: dict[str, Any], path: Path | None) -> tuple[str, int]:
    named = _FILE_NAME.match(path.name) if path else None
    default_id = (
        f"{path.parent.name}/{named.group('name')}" if named else (path.stem if path else "inline")
    )
    pid = str(meta.get("id", default_id))
    version = int(meta.get("version", named.group("version") if named else 1))
    if named and int(named.group("version")) != version:
        raise ConfigError(
            f"{path}: front matter says version {version}, the file name .v{named.group('version')}"
        )
    return pid, version


# ---------------------------------------------------------------------------- lookup
def load_prompt_file(path: str | Path) -> Prompt:
    """Load a prompt file from a path (a user's own prompt)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"prompt file {str(path)!r} does not exist")
    return parse_prompt_text(path.read_text(encoding="utf-8"), path.resolve())


@cache
def _shipped() -> dict[str, Prompt]:
    root = shipped_dir("prompts")
    found: dict[str, Prompt] = {}
    for path in sorted(root.glob("*/*")):
        if path.is_file() and _FILE_NAME.match(path.name):
            prompt = load_prompt_file(path)
            found[prompt.ref] = prompt
    return found


def list_prompts(stage: str | None = None) -> list[Prompt]:
    """Every shipped prompt version (of one stage when ``stage`` is given), sorted by ref."""
    prompts = _shipped().values()
    if stage is not None:
        prompts = [p for p in prompts if p.id.split("/")[0] == stage]
    return sorted(prompts, key=lambda p: (p.id, p.version))


def load_prompt(ref: str | Path, stage: str | None = None) -> Prompt:
    """A shipped prompt by name, or a prompt file by path.

    Args:
        ref: ``"recompose/general"`` (newest version), ``"recompose/general.v1"`` (that version),
            ``"general"`` / ``"general.v1"`` together with ``stage``, or a file path.
        stage: the stage folder that bare names are looked up in.

    Raises:
        ConfigError: naming the shipped prompts when ``ref`` matches none.
    """
    text = str(ref)
    if isinstance(ref, Path) or Path(text).expanduser().is_file():
        return load_prompt_file(text)
    if "/" not in text and stage:
        text = f"{stage}/{text}"
    shipped = _shipped()
    if text in shipped:
        return shipped[text]
    versions = [p for p in shipped.values() if p.id == text]
    if versions:
        return max(versions, key=lambda p: p.version)
    names = sorted(p.ref for p in list_prompts(stage))
    raise ConfigError(
        f"unknown prompt {str(ref)!r}; shipped prompts"
        f"{f' for {stage}' if stage else ''}: {', '.join(names) or '(none)'} "
        "(or give the path of your own prompt file; `cir prompts list` shows them all)"
    )

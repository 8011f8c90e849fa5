"""``basic``: BASIC's query side (centring, contrastive PCA, query expansion, contextualising)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cir.errors import DataError
from cir.models.shared import resolve_encoder
from cir.scoring import (
    contextualize,
    contrastive_projection,
    expand_query,
    l2_normalize,
    similarity_minima,
)
from cir.stages.base import Context, Port, Stage, register_stage
from cir.state import put_embedding, query_vector
from cir.types import QueryState

CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "basic"


@dataclass(frozen=True)
class BasicParams:
    image: str = "image"
    text: str = "text"
    contextualize: bool = True
    context_objects: int = 100
    objects: str | None = None
    styles: str | None = None
    a: float = 0.2
    components: int = 250
    image_mean: str | None = None
    query_expansion: bool = True
    expansion_size: int = 25
    expansion_weight: float = 0.1
    normalize_similarities: bool = True
    calibration_size: int = 1000
    model: str | None = None
    pretrained: str | None = None
    output_image: str = "basic_image"
    output_text: str = "basic_text"

    def __post_init__(self) -> None:
        if not 0.0 <= self.a <= 1.0:
            raise ValueError(f"a must be within [0, 1], got {self.a}")
        for name in ("context_objects", "components", "expansion_size", "calibration_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@register_stage
class Basic(Stage):
    """The query side of BASIC (Psomas et al., "Instance-Level Composed Image Retrieval", 2025).

    Image features are centred by ``image_mean`` (a ``.pt``/``.npy`` file of shape (D,), else
    the gallery's mean) and the query image is projected on the top ``components`` eigenvectors
    of the contrastive scatter of an object corpus against a style corpus (weight ``a``);
    ``query_expansion`` averages it with its ``expansion_size`` nearest gallery images (weights
    ``exp(expansion_weight * sim)``) before projecting. The text is contextualised by averaging
    the embeddings of "{object} {text}" and "{text} {object}" over the first
    ``context_objects`` objects, then centred by the object corpus mean. Calibration minima
    for similarity normalisation come from ``calibration_size`` gallery images and the object
    corpus. The ``retrieve`` rule ``basic`` fuses the two similarities.

    Corpora are text files, one phrase per line (``#`` starts a comment). ``cir/data/basic/``
    ships the authors' corpora and LAION-1M image means, named by file name alone
    (``generic_subjects.csv``, ``generic_styles.csv``, ``laion_1m_mean_clip_vitl14.npy``,
    ``laion_1m_mean_siglip_vitl16_256.npy``), and cir's small ``objects.txt``/``styles.txt``.

    Example:
        >>> Basic(objects="generic_subjects.csv", styles="generic_styles.csv",
        ...       image_mean="laion_1m_mean_clip_vitl14.npy")
    """

    name = "basic"
    Params = BasicParams
    outputs = (
        Port("embeddings.{output_image}", "vector", "the projected image query"),
        Port("embeddings.{output_text}", "vector", "the contextualised text query"),
        Port("data.basic", "data", "calibration for the basic rule"),
    )
    uses_encoder = True
    held = ("encoder", "state")

    @property
    def inputs(self) -> tuple[Port, ...]:
        image = Port("embeddings.{image}", "vector", "the reference image")
        if self.params.contextualize:
            return (image, Port("query.text", "text", "the modification"))
        return (image, Port("embeddings.{text}", "vector", "the modification's embedding"))

    def setup(self, ctx: Context) -> None:
        index = ctx.require_index(self.instance)
        self.encoder = resolve_encoder(
            ctx, self.instance, self.params.model, self.params.pretrained
        )
        key = ("basic", id(index), len(index), self.encoder.identity.key, self.params)
        self.state = ctx.resources.get(key, lambda: self._prepare(index))

    def _prepare(self, index: Any) -> dict[str, Any]:
        p = self.params
        objects = read_corpus(shipped_file(p.objects or "objects.txt"))
        styles = read_corpus(shipped_file(p.styles or "styles.txt"))
        obj = self.encoder.encode_texts(objects).float()
        sty = self.encoder.encode_texts(styles).float()
        text_mean = obj.mean(dim=0)
        image_mean = self._image_mean(index)
        out = {
            "objects": objects,
            "text_mean": text_mean,
            "image_mean": image_mean,
            "projection": contrastive_projection(
                obj - text_mean, sty - text_mean, p.a, p.components
            ),
            "image_min": None,
            "text_min": None,
        }
        if p.normalize_similarities:
            rows = torch.linspace(0, len(index) - 1, min(p.calibration_size, len(index))).long()
            sample = index.embeddings[rows.to(index.device)].float().cpu() - image_mean
            out["image_min"], out["text_min"] = similarity_minima(sample, obj - text_mean)
        return out

    def _image_mean(self, index: Any) -> torch.Tensor:
        path = self.params.image_mean
        if path is None:
            total = torch.zeros(index.dim, dtype=torch.float64)
            for start in range(0, len(index), 65536):
                total += index.embeddings[start : start + 65536].double().sum(dim=0).cpu()
            return (total / len(index)).float()
        mean = load_vector(shipped_file(path))
        if mean.shape != (index.dim,):
            raise DataError(
                f"image mean {path!r} has shape {tuple(mean.shape)}; expected ({index.dim},), "
                "one value per embedding dimension of the index: it belongs to another encoder. "
                "Give this encoder's mean, or set stages.basic.image_mean=null to centre by the "
                "gallery mean"
            )
        return mean

    def run(self, states: list[QueryState], ctx: Context) -> list[QueryState]:
        p, prep = self.params, self.state
        image = torch.stack([self._vector(s, p.image) for s in states])
        centred = l2_normalize(image) - prep["image_mean"]
        projected = centred @ prep["projection"]
        if p.query_expansion:
            projected = self._expand(centred, projected, ctx)
        text = self._texts(states) - prep["text_mean"]
        calib = {k: prep[k] for k in ("image_mean", "image_min", "text_min")}
        key = self.encoder.identity.key
        for i, state in enumerate(states):
            put_embedding(state, p.output_image, projected[i], key)
            put_embedding(state, p.output_text, text[i], key)
            state.data["basic"] = calib
        return states

    def _expand(self, centred: torch.Tensor, projected: torch.Tensor, ctx: Context):
        from cir.index import ProductScores

        index, prep = ctx.index, self.state
        q = projected.to(index.device)
        # q.(g - mean) = q.g - q.mean: the ranking of plain products, shifted per query
        rankings = index.topk(ProductScores(q), len(q), k=self.params.expansion_size)
        rows = torch.tensor([[index.position(i) for i in r.ids] for r in rankings])
        neighbours = index.embeddings[rows.to(index.device)].float().cpu() - prep["image_mean"]
        sims = torch.tensor([list(r.scores) for r in rankings], dtype=torch.float32)
        sims -= (projected.float().cpu() @ prep["image_mean"]).unsqueeze(1)
        return expand_query(
            centred, neighbours, sims, prep["projection"], self.params.expansion_weight
        )

    def _texts(self, states: list[QueryState]) -> torch.Tensor:
        p = self.params
        if not p.contextualize:
            return l2_normalize(torch.stack([self._vector(s, p.text) for s in states]))
        objects = self.state["objects"][: p.context_objects]
        phrases = [
            phrase
            for s in states
            for phrase in [f"{o} {s.query.text}" for o in objects]
            + [f"{s.query.text} {o}" for o in objects]
        ]
        emb = self.encoder.encode_texts(phrases).float()
        return contextualize(emb.reshape(len(states), 2 * len(objects), -1))

    def _vector(self, state: QueryState, name: str) -> torch.Tensor:
        return query_vector(state, name, self.instance).cpu()


def shipped_file(name: str | Path) -> Path:
    """A path as given, or a file shipped in ``cir/data/basic`` named by its bare file name
    (``generic_subjects.csv``, ``laion_1m_mean_clip_vitl14.npy``) when no such path exists."""
    path = Path(name)
    if not path.exists() and path.name == str(name) and (CORPUS_DIR / path.name).is_file():
        return CORPUS_DIR / path.name
    return path


def read_corpus(path: str | Path) -> list[str]:
    """Phrases of a corpus file: one per line, blank lines and ``#`` comments skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"corpus file {str(path)!r} does not exist") from None
    phrases = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if len(phrases) < 2:
        raise DataError(f"corpus file {str(path)!r} needs at least two phrases (one per line)")
    return phrases


def load_vector(path: str | Path) -> torch.Tensor:
    """A 1-D float32 tensor from a ``.pt`` (tensor) or ``.npy`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image mean file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"image mean file {str(path)!r} is not a plain array: {exc}") from None
        return torch.from_numpy(array).float().reshape(-1)
    value = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"image mean file {str(path)!r} must hold a tensor (torch.save(mean, ...))")
    return value.float().reshape(-1)

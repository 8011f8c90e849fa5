"""What the stages of one run share: the gallery index, loaded models, the content cache.

``Context`` sits one floor below the stages: the generation engine, the re-ranking helpers and
the stages themselves all take it, and none of them imports a stage to get it.

Example:
    >>> ctx = Context(index=GalleryIndex.load("my_index"), cache=ContentCache("~/.cache/cir"))
    >>> stage.setup(ctx)
    >>> states = stage.run(states, ctx)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cir.errors import ConfigError
from cir.resources import Resources, default_resources

if TYPE_CHECKING:
    from cir.index import GalleryIndex
    from cir.models.spec import EncoderSpec


@dataclass
class Context:
    """What stages share during one run.

    Attributes:
        index: the gallery index searched (stages that need none accept None).
        resources: loaded models, shared by every stage and pipeline using the same one.
        cache: a ``ContentCache`` for captions, LLM outputs and embeddings, or None.
        device: force a device for models; automatic when None.
        progress: whether stages may show progress bars.
        encoder: the pipeline's declared encoder (its ``encoder:`` section), used by encoding
            stages that name no model of their own; None falls back to the index's encoder.
        keep_artifacts: keep large per-query artifacts (re-ranking grid images) in the states;
            benchmark runs turn it off so states stay small.
    """

    index: GalleryIndex | None = None
    resources: Resources = dataclasses.field(default_factory=lambda: default_resources)
    cache: Any = None
    device: str | None = None
    progress: bool = False
    encoder: EncoderSpec | None = None
    keep_artifacts: bool = True

    def require_index(self, stage: str) -> GalleryIndex:
        """The index, or a ConfigError naming ``stage`` when the run has none."""
        if self.index is None:
            raise ConfigError(f"stage {stage!r} needs a gallery index; pass index=... to run()")
        return self.index

"""Plain records of published intermediate outputs: per query, and per gallery image."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueryRecord:
    """What the authors' pipeline produced for one benchmark query.

    Attributes:
        query_id: the query's id as cir's benchmark readers name it (CIRCO ``id``, CIRR
            ``pairid``, FashionIQ ``<category>/<index in the caption file>``).
        reference_id: the reference image id, when the file names it.
        modification: the modification text the file stores (FashionIQ: the two captions
            joined with " and ", cir's default text rule), when it stores one.
        captions: captions of the reference image (LDRE/SEIZE's sampled captions, CIReVL's
            BLIP-2 caption, OSrCIR's description of the reference).
        targets: the LLM's descriptions of the target image (edited captions), in the order
            of ``captions`` when both are given.
        reasoning: reasoning fields the method writes (OSrCIR's thoughts and reflections).
        source: which file format and keys the record came from.

    Example:
        >>> QueryRecord("12063", reference_id="test1-147-1-img1", targets=("a dog and a woman",))
    """

    query_id: str
    reference_id: str | None = None
    modification: str | None = None
    captions: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    reasoning: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class GalleryRecord:
    """Captions of one gallery image (WeiMoCIR's MLLM captions).

    Example:
        >>> GalleryRecord("dev-1001-1-img1", ("A team of sled dogs runs across a snowy field.",))
    """

    image_id: str
    captions: tuple[str, ...]

"""Pure tensor functions for the published training-free CIR scoring rules.

Query side: WeiMoCIR fusion, PDV, mean and LDRE ensembles, BASIC projection and expansion.
Gallery side (one chunk at a time): WeiMoCIR caption-aware similarity, SEIZE, BASIC's Harris
fusion, Paracosm's synthetic twins, hubness corrections. Chunked drivers bound memory by the
chunk size. Nothing here knows about stages or indexes; see ``docs/scoring.md`` for formulas
and reference-code notes.

Example:
    >>> from cir.scoring import weimocir_query, weimocir_scores, chunked_topk
    >>> q = weimocir_query(image_emb, text_emb, alpha=0.8)
    >>> scores, rows = chunked_topk(lambda s, e, g: weimocir_scores(q, g, caps[s:e]), G, k=50)
"""

from cir.scoring.basic import (
    basic_scores,
    contextualize,
    contrastive_projection,
    expand_query,
    similarity_minima,
)
from cir.scoring.chunked import DEFAULT_CHUNK, chunked_scores, chunked_topk, iter_chunks
from cir.scoring.fusion import (
    l2_normalize,
    mean_query,
    pdv_auto_alpha_image,
    pdv_query,
    prompt_direction,
    weimocir_query,
)
from cir.scoring.gallery import (
    dot_scores,
    seize_scores,
    set_positions,
    twin_scores,
    weimocir_scores,
)
from cir.scoring.hubness import (
    HUBNESS_METHODS,
    apply_hub_penalty,
    correct_hubs,
    csls,
    hub_penalty,
    inverted_softmax,
)
from cir.scoring.ldre import (
    ldre_divergence_topk,
    ldre_ensemble,
    ldre_weights,
    merge_topk_values,
)

__all__ = [
    "DEFAULT_CHUNK",
    "HUBNESS_METHODS",
    "apply_hub_penalty",
    "basic_scores",
    "chunked_scores",
    "chunked_topk",
    "contextualize",
    "contrastive_projection",
    "correct_hubs",
    "csls",
    "dot_scores",
    "expand_query",
    "hub_penalty",
    "inverted_softmax",
    "iter_chunks",
    "l2_normalize",
    "ldre_divergence_topk",
    "ldre_ensemble",
    "ldre_weights",
    "mean_query",
    "merge_topk_values",
    "pdv_auto_alpha_image",
    "pdv_query",
    "prompt_direction",
    "seize_scores",
    "set_positions",
    "similarity_minima",
    "twin_scores",
    "weimocir_query",
    "weimocir_scores",
]

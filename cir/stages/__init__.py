"""Pipeline stages, one per module; each registers itself when imported.

What a stage author needs is exported here: the contract (:class:`Stage`, :class:`Port`,
:func:`register_stage`), the run's :class:`Context`, and the query-state helpers.
"""

from cir.stages.base import (
    Context,
    Port,
    Stage,
    register_stage,
    registered_stages,
    registry_snapshot,
    stage_class,
)
from cir.state import (
    count_cache,
    embedding_matrix,
    put_embedding,
    query_vector,
    resolve_image,
    resolve_reference,
    resolve_text,
    shared_encoder,
    stack_vectors,
)

__all__ = [
    "Context",
    "Port",
    "Stage",
    "count_cache",
    "embedding_matrix",
    "put_embedding",
    "query_vector",
    "register_stage",
    "registered_stages",
    "registry_snapshot",
    "resolve_image",
    "resolve_reference",
    "resolve_text",
    "shared_encoder",
    "stack_vectors",
    "stage_class",
]

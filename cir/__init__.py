"""cir: training-free composed image retrieval with declarative pipelines of frozen models."""

from cir.errors import CirError, ConfigError, DataError, EncoderMismatchError
from cir.types import Query, QueryState, Ranking, StageRecord

__version__ = "0.1.0"

__all__ = [
    "CirError",
    "ConfigError",
    "DataError",
    "EncoderMismatchError",
    "Query",
    "QueryState",
    "Ranking",
    "StageRecord",
    "__version__",
]

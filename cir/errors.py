"""Errors a user can cause and fix. The CLI prints their message without a traceback."""


class CirError(Exception):
    """Base class: the message says what was wrong, what is valid, and where to look."""


class ConfigError(CirError):
    """A pipeline, stage parameter, override or model name is invalid."""


class EncoderMismatchError(CirError):
    """Embeddings from one encoder were searched against an index built with another."""


class DataError(CirError):
    """An input file, folder or dataset is missing or unreadable."""


class BackendError(CirError):
    """A model backend (LLM server, local model) failed in a way the user must act on."""

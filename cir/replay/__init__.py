"""Replaying the authors' published intermediate outputs: read them into plain records.

Papers release (or their code writes) the captions and LLM outputs behind their numbers. These
readers turn each file format into plain records, so that a run can reuse exactly those
outputs instead of regenerating them:

- :func:`read_ldre`: LDRE's and SEIZE's sampled captions and edited captions (JSON
  annotation files with added lists), per query.
- :func:`read_cirevl_mods` / :func:`read_cirevl_captions`: CIReVL's BLIP-2 captions and LLM
  rewrites (its JSON file, and its pickle through the restricted unpickler), per query.
- :func:`read_osrcir`: OSrCIR-style answers (description, thoughts, reflections, target) added
  to annotation records, per query.
- :func:`read_gallery_captions` / :func:`caption_rows`: WeiMoCIR's MLLM captions, per gallery
  image.

Query records are keyed by the query ids of cir's benchmark readers. JSON is parsed as data;
pickles only through :func:`load_plain_pickle`, which admits plain containers, strings and
numbers and refuses every other global. Sources and formats: ``docs/replay.md``.

Example:
    >>> from cir.replay import read_ldre
    >>> records = read_ldre("LDRE/CIRCO/annotations/test.json")
    >>> records["0"].targets[0]
    'a man sits on a toilet in the middle of the street during the daytime with higher quality.'
"""

from cir.replay.cirevl import read_cirevl_captions, read_cirevl_mods
from cir.replay.ldre import read_ldre
from cir.replay.osrcir import read_osrcir
from cir.replay.records import GalleryRecord, QueryRecord
from cir.replay.safe_pickle import UnsafePickleError, load_plain_pickle
from cir.replay.weimocir import caption_rows, read_gallery_captions

__all__ = [
    "GalleryRecord",
    "QueryRecord",
    "UnsafePickleError",
    "caption_rows",
    "load_plain_pickle",
    "read_cirevl_captions",
    "read_cirevl_mods",
    "read_gallery_captions",
    "read_ldre",
    "read_osrcir",
]

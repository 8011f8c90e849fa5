"""Benchmarks: CIRCO, CIRR, FashionIQ, GeneCIS, i-CIR and ZeroSight readers, official metrics,
submissions, runs.

Modules: ``datasets`` (readers), ``metrics``, ``submission`` (writers and validator),
``evaluate`` (score prediction files), ``runner`` (``cir bench run``), ``gallery`` (cached
benchmark indexes), ``manifest``, ``report``, ``missing`` (runs on incomplete image folders),
``compare`` (``cir bench compare``), ``download`` (``cir data download``), ``placeholders``
(miniature splits for tests).
"""

#: The benchmark names the readers, the CLI and the docs use.
BENCHMARKS = ("circo", "cirr", "fashioniq", "genecis", "icir", "zerosight")

"""Which compute path a search takes: hardware features, a short calibration, a per-machine cache.

The stored rows keep 2 bytes per value; how they are multiplied depends on the machine:

- ``fp16``: fp16 products, where fp16 arithmetic is native (CUDA; CPUs with AVX512-FP16 or
  AMX-FP16; ARM with half-precision SIMD);
- ``bf16``: bf16 products, where bf16 is native (CUDA; AVX512-BF16 or AMX-BF16; ARM BF16);
- ``faiss``: faiss's exhaustive search over the rows, where faiss is installed;
- ``fp32``: float32 products over rows converted chunk by chunk, everywhere.

The candidates the features allow are timed on a small synthetic gallery at four batch sizes
(:data:`PROBES`); each batch size then takes the path predicted fastest for the index's size,
a native 2-byte path winning near-ties (:data:`PREFER_WITHIN`). The timings are cached per
machine (CPU model and flags, threads, torch and faiss versions), storage type and dimension in
the cir cache folder, so a machine calibrates once (a few seconds). Any path can be forced
(``compute="fp16"``, ``--compute``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cir.errors import ConfigError

if TYPE_CHECKING:
    from cir.index.calibration import Measure

PATHS = ("fp32", "fp16", "bf16", "faiss")
PROBES = (1, 2, 16, 128, 1024)
"""Query batch sizes timed by the calibration; a batch takes the path of the nearest one."""
CALIBRATE_FROM = 1 << 22
"""Galleries with fewer values (rows x dim) take ``fp32`` without calibrating: any path takes
well under a millisecond there."""
NATIVE_FLAGS = {
    "fp16": frozenset({"avx512_fp16", "amx_fp16", "asimdhp"}),
    "bf16": frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
}
SHOWN_FLAGS = (
    "avx2",
    "f16c",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "fphp",
    "asimdhp",
    "bf16",
    "sve",
)
_CACHE_VERSION = 3


@dataclass(frozen=True)
class Machine:
    """What decides the compute path: the device, the CPU's features and the software.

    Attributes:
        device: ``cpu`` or ``cuda``.
        model: CPU model name (or GPU name on CUDA).
        flags: CPU feature flags from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``).
        threads: torch's intra-op threads.
        software: torch and faiss versions.
    """

    device: str
    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    threads: int = 1
    software: str = ""

    def native(self, path: str) -> bool:
        """Whether ``path`` (fp16/bf16) is native arithmetic here."""
        if self.device == "cuda":
            return True
        return bool(self.flags & NATIVE_FLAGS.get(path, frozenset()))

    @property
    def shown_flags(self) -> list[str]:
        """The flags that matter for 2-byte products, in a fixed order."""
        return [f for f in SHOWN_FLAGS if f in self.flags]

    def key(self) -> str:
        text = json.dumps(
            [self.device, self.model, sorted(self.flags), self.threads, self.software]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "model": self.model,
            "flags": self.shown_flags,
            "threads": self.threads,
            "software": self.software,
        }


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` from the text of ``/proc/cpuinfo`` (x86 or ARM)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("model name", "processor", "cpu model", "hardware") and not model:
            if value.strip() and not value.strip().isdigit():
                model = value.strip()
        elif name in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    model, flags = parse_cpuinfo(text)
    return model or platform.processor() or platform.machine(), flags


def this_machine(device: torch.device | str = "cpu") -> Machine:
    """The machine as seen from ``device``."""
    device = torch.device(device)
    model, flags = _cpu()
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    return Machine(device.type, model, flags, torch.get_num_threads(), _software())


def _software() -> str:
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = "none"
    return f"torch {torch.__version__}, faiss {faiss_version}"


def candidates(machine: Machine, dtype: torch.dtype, with_faiss: bool) -> tuple[str, ...]:
    """The paths worth timing for rows of ``dtype`` on ``machine``."""
    found = ["fp32"]
    if dtype == torch.float16 and machine.native("fp16"):
        found.append("fp16")
    bf16_rows = dtype == torch.bfloat16 or (dtype == torch.float16 and machine.device == "cpu")
    if bf16_rows and machine.native("bf16"):
        found.append("bf16")
    if with_faiss:
        found.append("faiss")
    return tuple(found)


def faiss_usable(device: torch.device) -> bool:
    """Whether the ``faiss`` path can run on ``device``."""
    from cir.index.faiss_backend import faiss_gpus

    if device.type == "cuda":
        return faiss_gpus() > 0
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ComputePlan:
    """The compute path of every batch size, and why.

    Attributes:
        machine: the machine it was chosen for.
        ranking: per probe of :data:`PROBES`, the paths from fastest to slowest.
        source: ``forced``, ``calibrated``, ``cached`` or ``small gallery``.
        timings: per path and probe, seconds per query as ``[fixed, per gallery row]`` (when
            calibrated); the ranking predicts ``fixed + per_row * rows`` for the gallery.

    Example:
        >>> plan = resolve_plan(torch.float16, 512, 100_000, torch.device("cpu"))
        >>> plan.path_for(1), plan.describe()
    """

    machine: Machine
    ranking: tuple[tuple[str, ...], ...]
    source: str
    timings: dict[str, list[list[float]]] | None = None

    def path_for(self, num_queries: int, avoid: tuple[str, ...] = ()) -> str:
        """The fastest path for a batch of ``num_queries`` queries, other than ``avoid``."""
        order = self.ranking[_probe_index(num_queries)]
        return next((p for p in order if p not in avoid), "fp32")

    def describe(self) -> str:
        """e.g. ``faiss for 1 query, fp16 for 2-362 queries, bf16 for 363+ (calibrated)``."""
        bounds = [1, *(_boundary(i) + 1 for i in range(len(PROBES) - 1))]
        parts: list[tuple[str, int]] = []
        for low, order in zip(bounds, self.ranking, strict=True):
            if not parts or parts[-1][0] != order[0]:
                parts.append((order[0], low))
        text = []
        for i, (path, low) in enumerate(parts):
            high = parts[i + 1][1] - 1 if i + 1 < len(parts) else None
            if len(parts) == 1:
                text.append(f"{path} for every batch")
            elif high == low:
                text.append(f"{path} for {low} quer{'y' if low == 1 else 'ies'}")
            else:
                text.append(f"{path} for {low}-{high} queries" if high else f"{path} for {low}+")
        return ", ".join(text) + f" ({self.source})"


def _boundary(i: int) -> int:
    """Largest batch taking probe ``i`` (geometric midpoint to the next probe)."""
    return int(math.sqrt(PROBES[i] * PROBES[i + 1]))


def _probe_index(num_queries: int) -> int:
    for i in range(len(PROBES) - 1):
        if num_queries <= _boundary(i):
            return i
    return len(PROBES) - 1


def check_compute(compute: str) -> str:
    """Validate a ``compute`` setting: ``auto`` or one of :data:`PATHS`."""
    if compute not in ("auto", *PATHS):
        raise ConfigError(
            f"unknown compute path {compute!r}; valid: auto, {', '.join(PATHS)} "
            "(see docs/benchmarks.md, 'How search works')"
        )
    return compute


def resolve_plan(
    dtype: torch.dtype,
    dim: int,
    num_rows: int,
    device: torch.device,
    compute: str = "auto",
    machine: Machine | None = None,
    measure: Measure | None = None,
    cache_dir: Path | None = None,
    recalibrate: bool = False,
) -> ComputePlan:
    """The compute plan for ``num_rows`` rows of ``dtype`` and ``dim`` on ``device``.

    Args:
        dtype: storage dtype of the rows.
        dim: row dimension.
        num_rows: gallery size.
        device: where the rows are.
        compute: ``auto`` or a path to force.
        machine: the machine (default: this one; tests give a made-up one).
        measure: the timer (default: real searches; tests give made-up timings).
        cache_dir: where timings are cached (default: ``<cir cache>/compute``; with a
            made-up ``measure``, nothing is cached unless given).
        recalibrate: time the paths again even when timings are cached.
    """
    machine = machine or this_machine(device)
    if check_compute(compute) != "auto":
        return ComputePlan(machine, tuple((compute,) for _ in PROBES), "forced")
    if num_rows * dim < CALIBRATE_FROM:
        return ComputePlan(machine, tuple(("fp32",) for _ in PROBES), "small gallery")
    paths = candidates(machine, dtype, faiss_usable(device))
    if len(paths) == 1:
        return ComputePlan(machine, tuple(paths for _ in PROBES), "only candidate")
    if cache_dir is None and measure is None:
        cache_dir = default_compute_dir()
    file = cache_dir / f"{machine.key()}-{_dtype_tag(dtype)}-{dim}.json" if cache_dir else None
    timings = _read_cache(file, paths) if file and not recalibrate else None
    source = "cached"
    if timings is None:
        from cir.index.calibration import calibrate

        timings = calibrate(paths, dim, dtype, device, measure)
        source = "calibrated"
        if file:
            _write_cache(file, machine, dtype, dim, timings)
    return ComputePlan(machine, rank(timings, num_rows), source, timings)


PREFER_WITHIN = 1.3
"""The faster native 2-byte path (fp16 or bf16) wins when its predicted time is within this
factor of the fastest: the calibration gallery sits in the CPU caches, which hides part of the
cost of reading rows from memory and converting them (on the development machine the probe rated the
faiss path 1.45x too fast and bf16 1.27x too slow at 1,000 queries over 100,000 rows). A
single query is ranked by the timings alone: there the probe under-rates faiss's scan split over
threads (even with fp16 at 16k rows, 1.3-1.7x faster at 65k-100k rows)."""


def rank(timings: dict[str, list[list[float]]], num_rows: int) -> tuple[tuple[str, ...], ...]:
    """Per probe, the paths from first choice to last for a gallery of ``num_rows`` rows."""
    order = []
    for i in range(len(PROBES)):
        predicted = {p: t[i][0] + t[i][1] * num_rows for p, t in timings.items()}
        by_time = sorted(predicted, key=predicted.__getitem__)
        fastest = predicted[by_time[0]]
        native = [p for p in by_time if p in ("fp16", "bf16")]
        within = PREFER_WITHIN if PROBES[i] > 1 else 1.0
        near = native and predicted[native[0]] <= fastest * within
        first = native[0] if near else by_time[0]
        order.append((first, *(p for p in by_time if p != first)))
    return tuple(order)


def default_compute_dir() -> Path:
    from cir.cache import default_cache_dir

    return default_cache_dir() / "compute"


def _dtype_tag(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def _read_cache(file: Path, paths: tuple[str, ...]) -> dict[str, list[float]] | None:
    """Cached timings for exactly ``paths``, or None when absent, stale or malformed."""
    try:
        doc = json.loads(file.read_text())
        timings = doc["timings"]
        ok = (
            doc.get("version") == _CACHE_VERSION
            and isinstance(timings, dict)
            and sorted(timings) == sorted(paths)
            and all(_valid_times(v) for v in timings.values())
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {p: [[float(t) for t in pair] for pair in timings[p]] for p in paths} if ok else None


def _valid_times(values) -> bool:
    def pair(v) -> bool:
        return (
            isinstance(v, list)
            and len(v) == 2
            and all(isinstance(t, int | float) and math.isfinite(t) and t >= 0 for t in v)
            and sum(v) > 0
        )

    return isinstance(values, list) and len(values) == len(PROBES) and all(map(pair, values))


def _write_cache(file: Path, machine: Machine, dtype, dim: int, timings: dict) -> None:
    """Write the timings atomically; a cache folder that cannot be written is skipped."""
    doc = {
        "version": _CACHE_VERSION,
        "machine": machine.to_dict(),
        "dtype": _dtype_tag(dtype),
        "dim": dim,
        "probes": list(PROBES),
        "timings": timings,
    }
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, file)
    except OSError:
        pass

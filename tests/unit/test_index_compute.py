"""Choice of the compute path: CPU features, calibration timings, the per-machine cache."""

from __future__ import annotations

import json

import pytest
import torch

from cir.errors import ConfigError
from cir.index.calibration import calibrate
from cir.index.compute import (
    PATHS,
    PROBES,
    Machine,
    candidates,
    check_compute,
    parse_cpuinfo,
    rank,
    resolve_plan,
    this_machine,
)

CPU = torch.device("cpu")
BIG = 1 << 20  # rows: large enough to calibrate at any dimension used here

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 f16c fma avx512f avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 f16c fma avx512f avx512_bf16 avx512_vnni
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull fphp asimdhp cpuid asimdrdm bf16 i8mm sve
CPU implementer\t: 0x41
"""

SAPPHIRE = Machine("cpu", "Xeon", frozenset({"avx2", "avx512f", "avx512_fp16", "avx512_bf16"}))
EPYC = Machine("cpu", "EPYC", frozenset({"avx2", "f16c", "avx512f", "avx512_bf16"}))
OLD = Machine("cpu", "Haswell", frozenset({"avx2", "f16c", "fma"}))
GRAVITON = Machine("cpu", "Neoverse", frozenset({"asimd", "asimdhp", "bf16"}))
GPU = Machine("cuda", "NVIDIA A100", frozenset({"avx2"}))


def test_parse_cpuinfo_reads_x86_and_arm():
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "AMD EPYC 9654 96-Core Processor"
    assert {"avx512_bf16", "f16c"} <= flags and "avx512_fp16" not in flags
    model, flags = parse_cpuinfo(ARM_CPUINFO)
    assert {"asimdhp", "bf16", "sve"} <= flags
    assert parse_cpuinfo("") == ("", frozenset())


def test_this_machine_reports_flags_and_software():
    machine = this_machine(CPU)
    assert machine.device == "cpu" and machine.model and machine.threads >= 1
    assert "torch" in machine.software
    assert set(machine.shown_flags) <= machine.flags
    assert machine.key() == this_machine(CPU).key()


@pytest.mark.parametrize(
    ("machine", "dtype", "expected"),
    [
        (SAPPHIRE, torch.float16, ("fp32", "fp16", "bf16")),
        (EPYC, torch.float16, ("fp32", "bf16")),  # bf16 native, fp16 not
        (OLD, torch.float16, ("fp32",)),
        (OLD, torch.bfloat16, ("fp32",)),
        (GRAVITON, torch.float16, ("fp32", "fp16", "bf16")),
        (EPYC, torch.bfloat16, ("fp32", "bf16")),
        (SAPPHIRE, torch.float32, ("fp32",)),
        (GPU, torch.float16, ("fp32", "fp16")),
        (GPU, torch.bfloat16, ("fp32", "bf16")),
    ],
)
def test_candidates_follow_native_arithmetic(machine, dtype, expected):
    assert candidates(machine, dtype, with_faiss=False) == expected
    assert candidates(machine, dtype, with_faiss=True) == (*expected, "faiss")


class FakeTimer:
    """Made-up seconds per search per path and probe, proportional to queries and rows (the
    given numbers are per query over the full probe gallery at D = 512)."""

    def __init__(self, per_query: dict[str, dict[int, float]]) -> None:
        self.per_query = per_query
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, path: str, queries: int, rows: int, k: int = 1) -> float:
        self.calls.append((path, queries, rows))
        return self.per_query[path][queries] * queries * rows / ((1 << 23) // 512)


def _timer(**per_path: tuple[float, float, float]) -> FakeTimer:
    return FakeTimer({p: dict(zip(PROBES, times, strict=True)) for p, times in per_path.items()})


def test_each_batch_size_takes_the_fastest_path(monkeypatch):
    monkeypatch.setattr("cir.index.compute.faiss_usable", lambda device: True)
    timer = _timer(fp32=(9, 9, 2, 1, 1), bf16=(3, 1.5, 1, 0.5, 0.4), faiss=(2, 4, 4, 8, 8))
    plan = resolve_plan(torch.float16, 512, BIG, CPU, machine=EPYC, measure=timer)
    assert plan.source == "calibrated"
    assert [plan.path_for(q) for q in (1, 2, 5, 6, 64, 65, 5000)] == ["faiss"] + ["bf16"] * 6
    assert plan.path_for(1, avoid=("faiss",)) == "bf16"
    assert plan.describe() == "faiss for 1 query, bf16 for 2+ (calibrated)"
    assert plan.ranking[0] == ("faiss", "bf16", "fp32")


def test_a_single_path_is_described_for_every_batch(monkeypatch):
    monkeypatch.setattr("cir.index.compute.faiss_usable", lambda device: False)
    timer = _timer(fp32=(3, 3, 2, 1, 1), fp16=(1, 1, 1, 0.5, 0.5), bf16=(2, 2, 2, 2, 2))
    plan = resolve_plan(torch.float16, 768, BIG, CPU, machine=SAPPHIRE, measure=timer)
    assert plan.describe() == "fp16 for every batch (calibrated)"
    assert {p for p, _, _ in timer.calls} == {"fp32", "fp16", "bf16"}


def test_forced_small_and_single_candidate_plans_do_not_calibrate(monkeypatch):
    monkeypatch.setattr("cir.index.compute.faiss_usable", lambda device: False)
    timer = _timer(fp32=(1, 1, 1, 1, 1))
    forced = resolve_plan(torch.float16, 512, BIG, CPU, "bf16", machine=OLD, measure=timer)
    assert forced.source == "forced" and forced.path_for(1) == forced.path_for(999) == "bf16"
    small = resolve_plan(torch.float16, 512, 100, CPU, machine=SAPPHIRE, measure=timer)
    assert small.source == "small gallery" and small.path_for(7) == "fp32"
    only = resolve_plan(torch.float16, 512, BIG, CPU, machine=OLD, measure=timer)
    assert only.source == "only candidate" and only.path_for(1) == "fp32"
    assert timer.calls == []


def test_calibration_alternates_paths_and_times_two_gallery_sizes():
    timer = _timer(fp32=(1, 1, 1, 1, 1), faiss=(10, 10, 10, 10, 10), fp16=(2, 2, 2, 2, 2))
    timings = calibrate(("fp32", "faiss", "fp16"), 512, torch.float16, CPU, timer)
    calls = [p for p, _, _ in timer.calls]
    assert calls[:9] == ["fp32"] * 3 + ["faiss"] * 3 + ["fp16"] * 3  # paths take turns
    assert calls.count("fp32") == calls.count("faiss") == (3 + 3 + 3 + 2 + 2) * 3
    rows = (1 << 23) // 512
    assert {r for _, _, r in timer.calls} == {rows, rows // 4}
    fixed, per_row = timings["fp32"][0]  # the made-up times have no fixed part
    assert fixed == pytest.approx(0, abs=1e-12) and per_row * rows == pytest.approx(1)


def test_fixed_costs_per_query_matter_less_in_larger_galleries():
    """Path "fp16" pays a fixed cost per query (rescoring) but multiplies rows twice as fast."""

    def timer(path, queries, rows, k):
        return queries * (rows * 2e-6 if path == "fp32" else 0.01 * (k > 1) + rows * 1e-6)

    timings = calibrate(("fp32", "fp16"), 512, torch.float16, CPU, timer)
    assert timings["fp16"][0] == pytest.approx([0.01, 1e-6])
    assert rank(timings, 5_000)[0] == ("fp32", "fp16")
    assert rank(timings, 50_000)[0] == ("fp16", "fp32")


def test_calibration_is_cached_per_machine_and_rejected_when_malformed(tmp_path, monkeypatch):
    monkeypatch.setattr("cir.index.compute.faiss_usable", lambda device: False)
    timer = _timer(fp32=(3, 3, 2, 1, 1), bf16=(1, 1, 1, 2, 2))
    first = resolve_plan(
        torch.float16, 512, BIG, CPU, machine=EPYC, measure=timer, cache_dir=tmp_path
    )
    (file,) = tmp_path.iterdir()
    doc = json.loads(file.read_text())
    assert doc["machine"]["model"] == "EPYC" and doc["dtype"] == "fp16" and doc["dim"] == 512
    calls = len(timer.calls)
    again = resolve_plan(
        torch.float16, 512, BIG, CPU, machine=EPYC, measure=timer, cache_dir=tmp_path
    )
    assert again.source == "cached" and again.ranking == first.ranking and len(timer.calls) == calls
    other = resolve_plan(
        torch.float16, 768, BIG, CPU, machine=EPYC, measure=timer, cache_dir=tmp_path
    )
    assert other.source == "calibrated" and len(list(tmp_path.iterdir())) == 2
    for bad in ("not json", '{"version": 2, "timings": {"fp32": [[1, 2]] * 4}}', '{"timings": 3}'):
        file.write_text(bad)
        plan = resolve_plan(
            torch.float16, 512, BIG, CPU, machine=EPYC, measure=timer, cache_dir=tmp_path
        )
        assert plan.source == "calibrated" and plan.ranking == first.ranking
    doc["timings"]["bf16"][0] = [float("nan"), 1]
    file.write_text(json.dumps(doc))
    assert (
        resolve_plan(
            torch.float16, 512, BIG, CPU, machine=EPYC, measure=timer, cache_dir=tmp_path
        ).source
        == "calibrated"
    )


def test_unknown_compute_path_names_the_valid_ones():
    assert check_compute("auto") == "auto" and all(check_compute(p) == p for p in PATHS)
    with pytest.raises(ConfigError, match="fp32, fp16, bf16, faiss"):
        check_compute("int8")


def test_a_two_byte_path_close_to_the_fastest_is_preferred():
    timings = {
        "fp32": [[0.0, 1.0]] * len(PROBES),
        "faiss": [[0.0, 0.9]] * len(PROBES),
        "bf16": [[0.0, 1.1]] * len(PROBES),  # within 30% of faiss: preferred
        "fp16": [[0.0, 1.15]] * len(PROBES),  # also, but bf16 is the faster of the two
    }
    assert rank(timings, 1000)[1] == ("bf16", "faiss", "fp32", "fp16")
    timings["fp16"] = [[0.0, 1.3]] * len(PROBES)  # 44% slower than faiss
    assert rank(timings, 1000)[1] == ("bf16", "faiss", "fp32", "fp16")
    timings["bf16"] = [[0.0, 1.2]] * len(PROBES)
    assert rank(timings, 1000)[1][0] == "faiss"
    timings["bf16"] = [[0.0, 1.1]] * len(PROBES)
    first = [order[0] for order in rank(timings, 1000)]
    assert first == ["faiss", "bf16", "bf16", "bf16", "bf16"]  # one query: timings alone

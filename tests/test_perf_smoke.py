"""The scaffold benchmark runs end to end at tiny sizes (no timing thresholds: shared machines)."""

from __future__ import annotations

import json

from ctxfold.bench.perf import LibraryPerf, PerfReport, run_perf


def test_run_perf_tiny_reports_every_figure() -> None:
    report = run_perf(turns=3, batch=8, latency=0.05, concurrency=4, repeats=1, include_rlms=False)
    assert isinstance(report, PerfReport)
    assert report.rlms is None and "not measured" in report.note
    assert (report.turns, report.batch, report.concurrency, report.repeats) == (3, 8, 4, 1)
    assert report.ideal_batch_s == 2 * 0.05

    perf = report.ctxfold
    assert isinstance(perf, LibraryPerf) and perf.library == "ctxfold"
    assert perf.run_s > 0 and perf.batch_s > 0 and perf.server_ms > 0
    assert perf.batch_ratio == perf.batch_s / report.ideal_batch_s
    # The batch filled the concurrency it was given, and never went past it.
    assert perf.max_in_flight == 4
    for name in ("overhead_ms", "steady_ms", "server_ms", "run_s", "batch_s", "batch_ratio"):
        assert len(perf.samples[name]) == 1
    assert len(perf.samples["batch_gc_ms"]) == 1 and perf.samples["batch_gc_ms"][0] >= 0

    data = report.to_dict()
    json.dumps(data)  # JSON-ready
    assert data["ctxfold"]["max_in_flight"] == 4
    assert data["overhead_ratio"] is None
    assert set(data["targets"]) == set(report.targets)
    assert {"nproc", "python", "ctxfold", "rlms", "sandbox"} <= set(data["machine"])

    text = report.to_markdown()
    assert "| measure | ctxfold" in text
    assert "batch: most requests in flight | 4 |" in text
    assert "rlms / ctxfold" not in text
    # each measure's spread over the repeats (one repeat here: min = median = max)
    spread = f"{perf.batch_ratio:.3f} / {perf.batch_ratio:.3f} / {perf.batch_ratio:.3f}"
    assert f"| batch: wall time / ideal | {spread} |" in text
    assert "| batch: most requests in flight | 4 / 4 / 4 |" in text
    assert "cold start (ms) |" in text
    assert "| batch: full garbage collections in the host (ms) |" in text
    every = report.targets["batch <= 1.05 x ideal in every repeat"]
    assert every == (perf.batch_ratio <= 1.05)


def test_full_collections_during_a_block_are_timed_and_only_those() -> None:
    import gc

    from ctxfold.bench.perf import full_collections

    with full_collections() as pauses:
        gc.collect(0)  # a young collection is not counted
        assert pauses == []
        gc.collect()
    gc.collect()  # after the block: not counted either
    assert len(pauses) == 1 and pauses[0] >= 0

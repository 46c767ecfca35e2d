"""The bench's stream ratio: each round times the floor and a variant back to back, and the
target's ratio is the median of the rounds' ratios, so that the host's swings cancel."""

from __future__ import annotations

import pytest

from bench.run import paired_ratio, table


def test_a_variant_10_percent_slower_in_every_round_is_0_91_however_the_host_swings() -> None:
    host = [1.0, 1.9, 1.1, 2.2, 1.0, 2.0, 1.2]  # the same work takes twice as long at times
    floor = list(host)
    variant = [t * 1.1 for t in host]
    assert paired_ratio(floor, variant) == pytest.approx(1 / 1.1)


def test_rounds_that_do_not_pair_are_an_error() -> None:
    with pytest.raises(ValueError, match="rounds do not pair: 2 floor against 3"):
        paired_ratio([1.0, 1.0], [1.0, 1.0, 1.0])


def _stream(run_ratio: float) -> dict[str, object]:
    return {
        "floor_mb_s": 100.0,
        "run_mb_s": 85.0,
        "serve_mb_s": 100.0,
        "run_ratio": run_ratio,
        "serve_ratio": 1.0,
        "run_rss_growth_kb": 1024,
        "serve_rss_growth_kb": 1024,
    }


def test_the_stream_target_is_judged_on_the_paired_ratio_and_both_ratios_are_shown() -> None:
    rows = table({"streams": {"50MiB": _stream(0.93)}}).splitlines()
    target = next(r for r in rows if r.startswith("| stream 50MiB run (MB/s;"))
    unpaired = next(r for r in rows if r.startswith("| stream 50MiB run, ratio of the medians"))
    assert "| 0.93 | ≥ 0.90 | yes |" in target
    assert "| 0.85 |  | – |" in unpaired

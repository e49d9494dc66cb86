"""The gateway's own metric values (gateway.meters) against prometheus_client's metric objects as the reference:
the same observations give the same exposition, in one process and through the multiprocess files."""

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.meters import Collector, Counter, Gauge, Histogram, ProcessFiles, Reading

BUCKETS = (0.005, 0.01, 0.1, 1.0)
OBSERVED = (0.0, 0.005, 0.0050001, 0.01, 0.05, 0.1, 1.0, 1.5, 1e9, -1.0)  # bounds themselves, above every bound


def ours() -> tuple[CollectorRegistry, Counter, Gauge, Histogram]:
    counter = Counter("calls", "Calls.", ("kind",))
    gauge = Gauge("depth", "Depth.", ("kind",))
    histogram = Histogram("latency", "Latency.", ("kind",), buckets=BUCKETS)
    registry = CollectorRegistry()
    registry.register(Collector([counter, gauge, histogram]))
    return registry, counter, gauge, histogram


def move(counter, gauge, histogram) -> None:  # the same moves on either implementation
    for kind in ("a", "b"):
        counter.labels(kind).inc()
        counter.labels(kind).inc(2.5)
        gauge.labels(kind).inc(3)
        gauge.labels(kind).dec()
        for amount in OBSERVED:
            histogram.labels(kind).observe(amount)
    gauge.labels("b").set(7)


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_exposition_is_prometheus_clients():
    registry, counter, gauge, histogram = ours()
    move(counter, gauge, histogram)
    reference = CollectorRegistry()
    move(
        PromCounter("calls", "Calls.", ("kind",), registry=reference),
        PromGauge("depth", "Depth.", ("kind",), registry=reference),
        PromHistogram("latency", "Latency.", ("kind",), buckets=BUCKETS, registry=reference),
    )
    mine, theirs = generate_latest(registry).decode(), generate_latest(reference).decode()
    assert samples(mine) == samples(theirs)
    assert "_created" not in mine
    assert samples(mine)[("latency_bucket", (("kind", "a"), ("le", "0.005")))] == 3  # ≤ its bound: 0, 0.005, -1


def test_a_bucket_counts_what_is_at_most_its_bound():
    histogram = Histogram("h", "H.", buckets=(1.0, 2.0))
    child = histogram.labels()
    for amount in (1.0, 1.0000001, 2.0, math.inf):
        child.observe(amount)
    assert histogram.bounds == (1.0, 2.0, math.inf) and child.counts == [1, 2, 1]


def test_labels_must_match_the_names():
    with pytest.raises(ValueError):
        Counter("c", "C.", ("a", "b")).labels("only-one")


def test_a_reading_is_read_when_exported():
    gauge = Gauge("inflight", "In flight.")
    seen = [4]
    gauge.children[()] = Reading(lambda: seen[0])
    registry = CollectorRegistry()
    registry.register(Collector([gauge]))
    seen[0] = 9
    assert samples(generate_latest(registry).decode())[("inflight", ())] == 9


def test_the_files_sum_over_processes_as_prometheus_clients_own(tmp_path):
    """Two processes' values (two ProcessFiles with their own pids) read by MultiProcessCollector: the sums."""
    totals = CollectorRegistry()
    MultiProcessCollector(totals, path=str(tmp_path))
    for pid in (101, 102):
        _, counter, gauge, histogram = ours()
        move(counter, gauge, histogram)
        files = ProcessFiles(str(tmp_path), pid)
        files.write([counter, gauge, histogram])
        counter.labels("a").inc()  # a second write copies only what changed, and the last value wins
        files.write([counter, gauge, histogram])
        files.close()
    got = samples(generate_latest(totals).decode())
    assert got[("calls_total", (("kind", "a"),))] == 2 * 4.5
    assert got[("calls_total", (("kind", "b"),))] == 2 * 3.5
    assert got[("latency_count", (("kind", "a"),))] == 2 * len(OBSERVED)
    assert got[("latency_bucket", (("kind", "b"), ("le", "0.1")))] == 2 * 7  # 0, 0.005, 0.0050001, 0.01, 0.05, 0.1, -1
    assert got[("latency_sum", (("kind", "a"),))] == pytest.approx(2 * sum(OBSERVED))
    assert got[("depth", (("kind", "b"),))] == 2 * 7  # livesum: the sum over the processes' files

"""Metric values as plain numbers that the event loop moves without a lock, exported through prometheus_client.

``Counter``, ``Gauge`` and ``Histogram`` here are families of labelled children (``labels(*values)``), like
prometheus_client's, but a child is a slotted object holding floats: ``inc`` is one addition, ``observe`` one
``bisect`` and two additions. prometheus_client's own metric objects take a threading lock per value and a few
Python calls per move (a histogram observation checks itself, scans its buckets and makes two locked
increments); at the rate one worker answers, that was 8% of its instructions per chat request (callgrind, the
chat benchmark at concurrency 16: 927k instructions per request with metrics on, 858k off). Every value of the
gateway is moved by one thread, its event loop, so no lock is needed.

prometheus_client still does the rest: ``Collector`` hands the values to a ``CollectorRegistry`` as its metric
families, so the exposition is its ``generate_latest``. Several worker processes (``PROMETHEUS_MULTIPROC_DIR``):
``ProcessFiles.write`` copies this process's values into prometheus_client's per-process files (its ``MmapedDict``
format, the keys its own metric objects would write), which ``MultiProcessCollector`` sums at a scrape; the
gateway calls it every second, before its own scrapes and at stop (``Metrics.flush``), so another process's
/metrics is at most a second behind this one.

No ``_created`` series: the classic text format turns each into one more series per counter and histogram.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

INF = float("inf")


class Value:
    """One counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Reading:
    """A gauge child whose value is read from elsewhere when it is exported (nothing moves it)."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read

    @property
    def value(self) -> float:
        return float(self.read())


class Buckets:
    """One histogram child: a count per bucket (not cumulative; ``bounds`` ends with +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # a bucket counts what is ≤ its bound: the first bound ≥ amount (+Inf takes the rest, NaN the first)
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _Family:
    """A metric name and its children by label values."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.children: dict[tuple[str, ...], Any] = {}
        self._keys: dict[tuple[str, ...], str] = {}  # (sample name, *label values) -> its multiprocess file key

    def labels(self, *values: str) -> Any:
        """The child of these label values (made on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._child()
        return child

    def _child(self) -> Any:
        return Value()

    def family(self) -> Metric:
        """prometheus_client's metric family of the current values (for the exposition)."""
        raise NotImplementedError

    def file_values(self) -> Iterator[tuple[str, str, float]]:
        """(file prefix, key, value) of every value, as prometheus_client's multiprocess files hold them."""
        raise NotImplementedError

    def _key(self, name: str, labelnames: Sequence[str], values: Sequence[str]) -> str:
        """The file key of one value (a JSON text): made once, every flush asks for it again."""
        cached = (name, *values)
        key = self._keys.get(cached)
        if key is None:
            key = self._keys[cached] = mmap_key(self.name, name, list(labelnames), list(values), self.documentation)
        return key


class _Scalar(_Family):
    """A family whose children are single values (``Value``, or ``Reading``)."""

    exposed: ClassVar[type[CounterMetricFamily] | type[GaugeMetricFamily]]

    def family(self) -> Metric:
        out = self.exposed(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            out.add_metric(values, child.value)
        return out


class Counter(_Scalar):
    exposed = CounterMetricFamily

    def file_values(self) -> Iterator[tuple[str, str, float]]:
        for values, child in self.children.items():
            yield "counter", self._key(self.name + "_total", self.labelnames, values), child.value


class Gauge(_Scalar):
    exposed = GaugeMetricFamily

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), multiprocess_mode: str = "livesum"
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.multiprocess_mode = multiprocess_mode  # how MultiProcessCollector merges processes' values

    def file_values(self) -> Iterator[tuple[str, str, float]]:
        prefix = "gauge_" + self.multiprocess_mode
        for values, child in self.children.items():
            yield prefix, self._key(self.name, self.labelnames, values), child.value


class Histogram(_Family):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> None:
        super().__init__(name, documentation, labelnames)
        # bounds kept as given: an int observation (tokens) against int bounds compares faster than against floats
        bounds: tuple[float, ...] = tuple(sorted(buckets))
        if not bounds or bounds[-1] != INF:
            bounds += (INF,)
        self.bounds = bounds
        self.le = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]

    def _child(self) -> Buckets:
        return Buckets(self.bounds)

    def family(self) -> Metric:
        out = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            total, cumulative = 0, []
            for le, n in zip(self.le, child.counts, strict=True):
                total += n
                cumulative.append((le, total))
            out.add_metric(values, cumulative, child.sum)
        return out

    def file_values(self) -> Iterator[tuple[str, str, float]]:
        bucket_labels = (*self.labelnames, "le")
        for values, child in self.children.items():
            yield "histogram", self._key(self.name + "_sum", self.labelnames, values), child.sum
            for le, n in zip(self.le, child.counts, strict=True):
                yield "histogram", self._key(self.name + "_bucket", bucket_labels, (*values, le)), n


Family = Counter | Gauge | Histogram


class Collector:
    """The families' values as a prometheus_client collector (``registry.register(Collector(families))``)."""

    def __init__(self, families: Sequence[Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return [f.family() for f in self.families]


class ProcessFiles:
    """This process's values in prometheus_client's multiprocess files (``<prefix>_<pid>.db`` in ``directory``),
    written by copy: only the values that changed since the last ``write`` are written again."""

    def __init__(self, directory: str, pid: int | None = None) -> None:
        self.directory, self.pid = directory, os.getpid() if pid is None else pid
        self._files: dict[str, MmapedDict] = {}
        self._written: dict[str, float] = {}

    def write(self, families: Iterable[Family]) -> None:
        written, files = self._written, self._files
        for family in families:
            for prefix, key, value in family.file_values():
                if written.get(key) == value:
                    continue
                file = files.get(prefix)
                if file is None:
                    path = os.path.join(self.directory, f"{prefix}_{self.pid}.db")
                    file = files[prefix] = MmapedDict(path)  # type: ignore[no-untyped-call]
                file.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
                written[key] = value

    def close(self) -> None:
        for file in self._files.values():
            file.close()  # type: ignore[no-untyped-call]
        self._files.clear()
        self._written.clear()

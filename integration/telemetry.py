"""The OpenTelemetry SDK's in-memory exporters, as a user's exporter would receive what
the runtime records: :class:`Recorder` holds a tracer and a meter provider to hand to a
runtime (``RuntimeSettings(tracer_provider=..., meter_provider=...)``) and reads back
the finished spans and the metrics' current values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Recorder:
    """One runtime's spans and metrics, kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def settings(self) -> dict[str, Any]:
        """The runtime's keywords that send its telemetry here."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``, in the order they ended."""
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    @staticmethod
    def attributes(span: ReadableSpan) -> dict[str, Any]:
        return dict(span.attributes or {})

    def _points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for found in scope.metrics
            if found.name == metric
            for point in found.data.data_points
        ]

    def values(self, metric: str) -> dict[frozenset[tuple[str, Any]], float]:
        """A counter's (or up-down counter's) value per set of attributes."""
        return {
            frozenset((point.attributes or {}).items()): point.value
            for point in self._points(metric)
        }

    def total(self, metric: str, **attributes: Any) -> float:
        """A counter's value summed over the points whose attributes include these."""
        wanted = set(attributes.items())
        return sum(value for key, value in self.values(metric).items() if wanted <= key)

    def histogram(self, metric: str) -> list[HistogramDataPoint]:
        return [p for p in self._points(metric) if isinstance(p, HistogramDataPoint)]

    def by(self, metric: str, *keys: str) -> dict[tuple[Any, ...], float]:
        """A counter's values keyed by the given attributes (others summed over)."""
        out: dict[tuple[Any, ...], float] = {}
        for key, value in self.values(metric).items():
            attributes: Mapping[str, Any] = dict(key)
            group = tuple(attributes.get(k) for k in keys)
            out[group] = out.get(group, 0) + value
        return out

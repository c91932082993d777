"""``duroxide_main(tracing_backend="opentelemetry")``: spans exported over OTLP/HTTP.

The program gets an OpenTelemetry SDK tracer provider (the process's global
one: an SDK provider set up before ``main`` runs is used, and gets the exporter
too) whose spans go, in batches, to an OTLP/HTTP endpoint:

* ``otlp_endpoint``: the collector's traces URL; one without a path gets the
  standard ``/v1/traces``. Left out, the exporter's own default applies (the
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
  environment variables, else ``http://localhost:4318/v1/traces``).
* ``jaeger_endpoint``: Jaeger, which takes OTLP itself (port 4318). Jaeger's
  legacy Thrift collector URL of the design (``http://host:14268/api/traces``)
  takes no OTLP, so it is replaced by the same host's OTLP URL
  (``http://host:4318/v1/traces``), and that is logged.

The service name is ``OTEL_SERVICE_NAME`` if set, else the name of the
program's file. The runtime emits its spans through this provider
(``OpenTelemetryTracing``); they are flushed when ``main`` returns.

Needs the ``otlp`` extra (``pip install 'duroxide[otlp]'``); without it,
decorating ``main`` raises :class:`ConfigurationError` saying so.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from duroxide_runtime import ConfigurationError

from .extras import require_extra

__all__ = ["TRACING_BACKENDS", "TracingSetup", "jaeger_to_otlp"]

TRACING_BACKENDS = ("opentelemetry",)
_EXPORTER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_log = logging.getLogger("duroxide.main")

#: Jaeger's legacy collector port (Thrift over HTTP) and its OTLP/HTTP port.
JAEGER_THRIFT_PORT = 14268
JAEGER_OTLP_PORT = 4318


def _url(value: str, what: str) -> tuple[str, str, str, str, str]:
    if not isinstance(value, str):
        raise ConfigurationError(f"duroxide_main({what}=...) must be a URL string, got {type(value).__name__}",
                                 fix=f"pass e.g. {what}='http://localhost:4318/v1/traces'")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"duroxide_main({what}={value!r}) is not an http(s) URL of a host",
                                 fix=f"pass e.g. {what}='http://localhost:4318/v1/traces' (OTLP over HTTP)")
    return parts.scheme, parts.netloc, parts.path, parts.query, parts.fragment


def otlp_traces_url(value: str, what: str = "otlp_endpoint") -> str:
    """``value`` as an OTLP/HTTP traces URL: one without a path gets ``/v1/traces``."""
    scheme, netloc, path, query, fragment = _url(value, what)
    return urlunsplit((scheme, netloc, path if path not in ("", "/") else "/v1/traces", query, fragment))


def jaeger_to_otlp(value: str) -> str:
    """The OTLP/HTTP traces URL of the Jaeger that ``value`` names (see the module docstring).

    Example::

        jaeger_to_otlp("http://jaeger:14268/api/traces")   # 'http://jaeger:4318/v1/traces'
    """
    scheme, netloc, path, _, _ = _url(value, "jaeger_endpoint")
    parts = urlsplit(value)
    if parts.port == JAEGER_THRIFT_PORT or path.rstrip("/") == "/api/traces":
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
        return urlunsplit((scheme, f"{host}:{JAEGER_OTLP_PORT}", "/v1/traces", "", ""))
    return otlp_traces_url(value, "jaeger_endpoint")


def _require_exporter() -> None:
    for module, package in (("opentelemetry.sdk.trace", "opentelemetry-sdk"),
                            (_EXPORTER, "opentelemetry-exporter-otlp-proto-http")):
        require_extra(module, package, "otlp", "duroxide_main(tracing_backend='opentelemetry')")


@dataclass(frozen=True)
class TracingSetup:
    """Where the spans go; ``endpoint`` None: the OTLP exporter's default (see the module docstring)."""

    endpoint: str | None
    service_name: str

    @classmethod
    def of(cls, backend: str | None, otlp_endpoint: str | None, jaeger_endpoint: str | None,
           service_name: str) -> TracingSetup | None:
        """The setup the options of ``duroxide_main`` ask for (None: no tracing); checked now."""
        if backend is None and otlp_endpoint is None and jaeger_endpoint is None:
            return None
        if backend is not None and backend not in TRACING_BACKENDS:
            raise ConfigurationError(f"duroxide_main(tracing_backend={backend!r}) is not a tracing backend",
                                     fix=f"use tracing_backend={TRACING_BACKENDS[0]!r}")
        if otlp_endpoint is not None and jaeger_endpoint is not None:
            raise ConfigurationError("duroxide_main got both otlp_endpoint and jaeger_endpoint; spans go to one",
                                     fix="pass one of them (Jaeger takes OTLP: jaeger_endpoint is an OTLP endpoint "
                                         "of Jaeger)")
        _require_exporter()
        endpoint = (otlp_traces_url(otlp_endpoint) if otlp_endpoint is not None
                    else jaeger_to_otlp(jaeger_endpoint) if jaeger_endpoint is not None else None)
        if jaeger_endpoint is not None and endpoint != otlp_traces_url(jaeger_endpoint, "jaeger_endpoint"):
            _log.info("jaeger_endpoint %s is Jaeger's legacy Thrift collector, which takes no OTLP; "
                      "sending OTLP to %s instead", jaeger_endpoint, endpoint)
        return cls(endpoint, os.environ.get("OTEL_SERVICE_NAME") or service_name)

    def start(self) -> Any:
        """The tracer provider to trace with: the process's, with this setup's exporter added once."""
        with _lock:
            provider = _providers.get(self)
            if provider is None:
                provider = _providers[self] = self._install()
            return provider

    def _install(self) -> Any:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            provider = current  # the program set one up: its spans get our exporter too
        else:
            provider = TracerProvider(resource=Resource.create({SERVICE_NAME: self.service_name}))
            trace.set_tracer_provider(provider)
        exporter = OTLPSpanExporter(endpoint=self.endpoint) if self.endpoint is not None else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _log.info("tracing: OpenTelemetry spans exported over OTLP/HTTP to %s",
                  self.endpoint or "the exporter's default endpoint")
        return provider

    @staticmethod
    def flush(provider: Any) -> None:
        """Export the spans still waiting (the provider itself stays, for a later run in this process)."""
        provider.force_flush()


# One provider per setup and process: a second run of `main` reuses it instead of adding
# another exporter (the global tracer provider can be set only once per process).
_providers: dict[TracingSetup, Any] = {}
_lock = threading.Lock()

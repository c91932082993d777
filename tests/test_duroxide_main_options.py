"""``@duroxide_main``'s options from the design's configuration section: ``connection_string``
(alias ``database_url``), ``connection_pool_size``, ``metrics``, ``tracing_backend="opentelemetry"``
with ``otlp_endpoint`` / ``jaeger_endpoint``.

Each run is a real program in ``tmp_path`` (``python prog.py``). Spans go over real OTLP/HTTP to
a collector this test serves on 127.0.0.1 and decodes with the OTLP protobuf types; metrics are
read from prometheus_client's registry by the program itself. Bad options are checked in process:
they fail at decoration, before anything runs.
"""

from __future__ import annotations

import gzip
import http.server
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from duroxide_macros.otlp import jaeger_to_otlp
from duroxide_macros.prelude import duroxide_main
from duroxide_runtime.errors import ConfigurationError

from .support import dedent_src, own_pg_database, run_cmd

pytestmark = pytest.mark.timeout(120)

HEADER = dedent_src('''
    import duroxide_macros.install
    import prometheus_client
    from duroxide_macros.prelude import *

    @activity(typed=True, metrics=True, instrument=True)
    async def mo_double(x: int) -> int:
        return 2 * x

    @orchestration
    async def mo_flow(ctx: OrchestrationContext, n: int) -> int:
        return await durable(mo_double(n)) + 1
''')


def _program(tmp_path: Path, body: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + dedent_src(body))
    return path


def _values(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


# -- stores -----------------------------------------------------------------------------------


async def test_connection_string_and_pool_size_open_the_postgres_store(tmp_path: Path) -> None:
    async with own_pg_database("mo_conn") as url:
        instance = f"mo-{uuid.uuid4().hex}"
        for option in ("connection_string", "database_url"):  # the design's name, and its alias
            prog = _program(tmp_path, f'''
                @duroxide_main(provider="postgres", {option}={url!r}, connection_pool_size=3, log_level="error")
                async def main() -> None:
                    print("KIND", type(client.store).__name__)
                    print("POOL", client.store._pool.get_max_size())
                    print("RESULT", await mo_flow.run({instance + option!r}, 20, timeout=30))

                if __name__ == "__main__":
                    main()
            ''')
            proc = run_cmd([sys.executable, str(prog)], tmp_path)  # no DATABASE_URL: the option is used
            assert proc.returncode == 0, proc.stderr
            v = _values(proc.stdout)
            assert (v["KIND"], v["RESULT"]) == ("PostgresProvider", "41")
            assert v["POOL"] == "3"


@pytest.mark.parametrize("options, needles", [
    (dict(provider="postgres", connection_string="postgresql://a/b", database_url="postgresql://a/b"),
     ["both connection_string and database_url", "database_url is an alias", "pass only connection_string"]),
    (dict(connection_string="postgresql://localhost/duroxide"),
     ["names a PostgreSQL database, but provider='sqlite'", "add provider='postgres'"]),
    (dict(provider="memory", database_url="postgresql://localhost/duroxide"),
     ["database_url=...) names a PostgreSQL database, but provider='memory'", "add provider='postgres'"]),
    (dict(provider="postgres", connection_string=""), ["must be a non-empty URL string", "postgresql://"]),
    (dict(connection_pool_size=5), ["sizes the PostgreSQL pool, but provider='sqlite'", "provider='postgres'"]),
    (dict(provider="postgres", connection_pool_size=0), ["connection_pool_size=0", ">= 1", "default is 10"]),
    (dict(provider="postgres", connection_pool_size=True), ["connection_pool_size=True", ">= 1"]),
    (dict(tracing_backend="jaeger"), ["tracing_backend='jaeger') is not a tracing backend",
                                      "tracing_backend='opentelemetry'"]),
    (dict(otlp_endpoint="http://a:4318", jaeger_endpoint="http://b:4318"),
     ["both otlp_endpoint and jaeger_endpoint", "pass one of them"]),
    (dict(tracing_backend="opentelemetry", otlp_endpoint="localhost:4318"),
     ["otlp_endpoint='localhost:4318') is not an http(s) URL", "http://localhost:4318/v1/traces"]),
    (dict(jaeger_endpoint="udp://localhost:6831"), ["jaeger_endpoint='udp://localhost:6831') is not an http(s) URL",
                                                    "OTLP over HTTP"]),
])
def test_bad_options_fail_at_decoration_naming_the_fix(options: dict[str, Any], needles: list[str]) -> None:
    async def body() -> None:
        raise AssertionError("never runs")

    with pytest.raises(ConfigurationError) as caught:
        duroxide_main(**options)(body)
    text = str(caught.value)
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize("module, option, extra", [
    ("opentelemetry.exporter.otlp.proto.http.trace_exporter", dict(tracing_backend="opentelemetry"), "otlp"),
    ("opentelemetry.sdk.trace", dict(jaeger_endpoint="http://localhost:4318/v1/traces"), "otlp"),
    ("prometheus_client", dict(metrics=True), "metrics"),
    ("prometheus_client", dict(prometheus_port=9464), "metrics"),
])
def test_a_missing_extra_is_named_at_decoration(module: str, option: dict[str, Any], extra: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed

    async def body() -> None:
        raise AssertionError("never runs")

    with pytest.raises(ConfigurationError, match=rf"not installed.*pip install 'duroxide\[{extra}\]'"):
        duroxide_main(**option)(body)


@pytest.mark.parametrize("given, sent", [
    ("http://localhost:14268/api/traces", "http://localhost:4318/v1/traces"),  # the design's, Thrift
    ("http://jaeger:14268", "http://jaeger:4318/v1/traces"),
    ("https://[::1]:14268/api/traces", "https://[::1]:4318/v1/traces"),
    ("http://jaeger:4318/v1/traces", "http://jaeger:4318/v1/traces"),  # already OTLP
    ("http://jaeger:4318", "http://jaeger:4318/v1/traces"),
    ("https://otel.example.com/custom/path", "https://otel.example.com/custom/path"),
])
def test_jaeger_endpoints_are_sent_over_otlp(given: str, sent: str) -> None:
    assert jaeger_to_otlp(given) == sent


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_into_the_default_registry_once_per_run(tmp_path: Path) -> None:
    prog = _program(tmp_path, '''
        def sample(metric, **labels):
            return prometheus_client.REGISTRY.get_sample_value(metric, labels)

        @duroxide_main(provider="memory", metrics=True, log_level="error")
        async def main() -> None:
            print("RESULT", await mo_flow.run("m-1", 4, timeout=30))
            print("STARTED", sample("duroxide_orchestration_started_total", name="mo_flow", version="1.0.0"))
            print("ACTIVITY", sample("duroxide_activity_completed_total", name="mo_double", outcome="success"))
            print("RUNS", sample("duroxide_activity_duration_seconds_count", name="mo_double"))

        if __name__ == "__main__":
            main()
            main()   # a second run in the same process: the same metrics, counting on
            print("AFTER", sample("duroxide_activity_started_total", name="mo_double"))
    ''')
    proc = run_cmd([sys.executable, str(prog)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # the activity has metrics=True and the runtime counts it too: once per run, never twice
    assert lines == ["RESULT 9", "STARTED 1.0", "ACTIVITY 1.0", "RUNS 1.0",
                     "RESULT 9", "STARTED 2.0", "ACTIVITY 2.0", "RUNS 2.0", "AFTER 2.0"], proc.stdout


# -- traces over OTLP -------------------------------------------------------------------------


class _Collector(http.server.ThreadingHTTPServer):
    requests: list[tuple[str, bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.requests.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    """An OTLP/HTTP trace collector on 127.0.0.1 that keeps what it is sent."""
    server = _Collector(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _spans(requests: list[tuple[str, bytes]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(service name, span name, attributes) of every span received."""
    out = []
    for _, body in requests:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
                    out.append((service, span.name, attrs))
    return out


@pytest.mark.parametrize("option", ["otlp_endpoint", "jaeger_endpoint"])
def test_spans_are_exported_over_otlp(option: str, collector: _Collector, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    target = endpoint if option == "otlp_endpoint" else f"{endpoint}/v1/traces"  # no path: /v1/traces is added
    prog = _program(tmp_path, f'''
        @duroxide_main(provider="memory", tracing_backend="opentelemetry", {option}={target!r}, log_level="error")
        async def main() -> None:
            print("RESULT", await mo_flow.run("t-1", 1, timeout=30))

        if __name__ == "__main__":
            main()
    ''', name="otlp_app.py")
    proc = run_cmd([sys.executable, str(prog)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "RESULT 3\n"
    assert collector.requests and {path for path, _ in collector.requests} == {"/v1/traces"}
    spans = _spans(collector.requests)
    assert {service for service, _, _ in spans} == {"otlp_app"}  # the program's file name
    by_name = {name: attrs for _, name, attrs in spans}
    assert sorted(by_name) == ["activity.mo_double", "orchestration.mo_flow"]
    assert by_name["orchestration.mo_flow"]["duroxide.instance_id"] == "t-1"
    # the instrumented activity's span is the runtime's, with the design's attributes added
    assert {k: by_name["activity.mo_double"][k] for k in ("activity_name", "instance_id", "execution_id")} == {
        "activity_name": "mo_double", "instance_id": "t-1", "execution_id": 1}

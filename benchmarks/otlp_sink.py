"""A loopback OTLP/HTTP traces receiver for benchmarks: answers every ``POST /v1/traces`` 200 and counts the
exports, their bytes and their spans (OTLP/JSON decoded with orjson, protobuf with opentelemetry-proto, per the
Content-Type); ``GET /stats`` returns the counts.

    .venv/bin/python benchmarks/otlp_sink.py --port 4318

Raw asyncio, no framework: it shares a core with the load generator and must stay out of the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import orjson


class Counts:
    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        self.spans = 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: Counts) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "POST" and path == "/v1/traces":
                counts.exports += 1
                counts.bytes += len(body)
                if headers.get("content-type") == "application/json":
                    request = orjson.loads(body)
                    counts.spans += sum(len(s["spans"]) for r in request["resourceSpans"] for s in r["scopeSpans"])
                    answer, kind = b"{}", b"application/json"
                else:  # protobuf: opentelemetry-proto (make install-dev), only then
                    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

                    proto = ExportTraceServiceRequest()
                    proto.ParseFromString(body)
                    counts.spans += sum(len(s.spans) for r in proto.resource_spans for s in r.scope_spans)
                    answer, kind = b"", b"application/x-protobuf"  # an empty ExportTraceServiceResponse
            else:
                answer, kind = json.dumps(vars(counts)).encode(), b"application/json"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: "
                + kind
                + b"\r\ncontent-length: "
                + str(len(answer)).encode()
                + b"\r\n\r\n"
                + answer
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    counts = Counts()
    server = await asyncio.start_server(lambda r, w: handle(r, w, counts), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

"""Process settings: where the catalogue is, where to listen, which store, limits and timeouts.

Read from the environment (prefix ``GATEWAY_``) and overridable by command-line flags. Frozen once built.
"""

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CONFIG = Path(__file__).with_name("gateway.yaml")


def parse_headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (``OTEL_EXPORTER_OTLP_HEADERS``'s format, values URL-encoded) as a dict;
    ValueError, without the values (they are secrets), when an entry is not ``key=value``."""
    headers: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), 1):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"traces_headers: entry {number} is not key=value")
        headers[key] = unquote(value.strip())
    return headers


class Settings(BaseSettings):
    """Everything the process needs to start; the catalogue itself lives in the YAML file."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    config: Path = Field(DEFAULT_CONFIG, description="Path of the YAML catalogue.")
    host: str = "127.0.0.1"
    demo: bool = Field(
        False, description="Allow a non-loopback listen address while the catalogue holds a published demo key."
    )
    port: int = Field(8080, ge=0, le=65535)
    redis_url: SecretStr | None = Field(None, description="redis://… ; unset means the in-memory store.")
    redis_prefix: str = Field("gw:", description="Prefix of every key the gateway writes to Redis.")
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above).")
    upstream_connect_timeout: float = Field(10.0, gt=0)
    upstream_first_byte_timeout: float = Field(
        600.0, gt=0, description="Longest wait for a whole answer, or a stream's first chunk, per attempt."
    )
    upstream_read_timeout: float = Field(600.0, gt=0, description="Longest silence from an upstream.")
    upstream_max_connections: int = Field(1000, gt=0)
    idempotency_ttl_seconds: int = Field(24 * 3600, gt=0)
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a replica proves it is alive (x3 = expiry).")
    shutdown_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, how long to keep serving (with /readyz at 503) before the listener closes, so "
        "that load balancers stop routing here first.",
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="At shutdown, how long requests and streams in flight get to finish by themselves."
    )
    shutdown_cleanup_seconds: float = Field(
        5.0,
        ge=0,
        description="After the grace, how long the requests then stopped get to send their error event and "
        "release what they hold.",
    )
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port (more than one needs Redis).")
    response_ttl_seconds: int = Field(30 * 24 * 3600, gt=0, description="How long stored responses are kept.")
    memory_store_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="The in-memory store's limit for stored responses and event logs (approximate bytes); past "
        "it the oldest are evicted first. 0: no limit. Not used with Redis.",
    )
    executions_worker: bool = Field(
        True, description="Run a skill-execution worker in each gateway process (python -m gateway worker runs more)."
    )
    executions_concurrency: int = Field(8, ge=1, le=256, description="Executions one worker runs at once.")
    executions_max_attempts: int = Field(
        2, ge=1, le=10, description="Runs of one execution whose worker died before it ended, before it fails."
    )
    executions_claim_idle_seconds: float = Field(
        15.0,
        gt=0,
        description="How long a queued entry is left with its worker before another looks whether that worker is "
        "still alive (and takes the execution over if not).",
    )
    files_backend: Literal["store", "directory"] = Field(
        "store",
        description="Where uploaded files (POST /v1/files) keep their bytes: the store's blob space (in memory, or "
        "Redis), or files_directory (shared by the replicas, e.g. a volume).",
    )
    files_directory: Path | None = Field(None, description="The directory of the directory backend.")
    files_max_bytes: int = Field(
        16 * 1024 * 1024, gt=0, le=512 * 1024 * 1024, description="Largest uploaded file (413 above)."
    )
    files_collection_max_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Bytes one caller's collection of files may hold (413 above)."
    )
    files_collection_max_files: int = Field(1000, gt=0, le=100_000, description="Files one caller's collection holds.")
    files_total_max_bytes: int = Field(
        1024 * 1024 * 1024, gt=0, description="Bytes all collections together may hold (413 above)."
    )
    skills_materials_max_chars: int = Field(
        200_000,
        ge=0,
        description="Text of the files an execution stages (file_source_ids) shown to its model, in all; the rest "
        "is cut.",
    )
    tool_output_max_bytes: int = Field(
        64 * 1024, gt=0, description="Longest output of an executed tool (MCP or HTTP) kept; the rest is cut."
    )
    tool_dns_timeout_seconds: float = Field(5.0, gt=0, description="Longest wait to resolve a tool server's host.")
    mcp_max_sessions: int = Field(256, gt=0, description="MCP sessions kept open per process (oldest closed first).")
    mcp_listing_ttl_seconds: float = Field(
        30.0, ge=0, description="How long an MCP session's tool listing is reused before the server is asked again."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="Level of the gateway's loggers and uvicorn's."
    )
    request_log: bool = Field(
        False, description="One JSON line per request (logger gateway.requests, level info); costs ~10 % of throughput."
    )
    access_log: bool = Field(False, description="uvicorn's own access log besides (costs throughput).")
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics on GET /metrics (docs/observability.md).")
    metrics_token: SecretStr | None = Field(
        None, description="When set, GET /metrics asks for `Authorization: Bearer <this>` (401 otherwise)."
    )
    traces: bool = Field(False, description="Export OpenTelemetry traces over OTLP/HTTP (docs/observability.md).")
    traces_endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        description="The OTLP/HTTP traces URL, in full: a collector's /v1/traces, or Langfuse's "
        "https://<host>/api/public/otel/v1/traces.",
    )
    traces_headers: SecretStr | None = Field(
        None, description="Headers of every export, key=value,key2=value2 (Langfuse: Authorization=Basic <base64>)."
    )
    traces_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded; a caller's traceparent decides for its own."
    )
    traces_service_name: str = Field("llm-gateway", min_length=1, max_length=100)
    traces_content: bool = Field(False, description="Record prompts, completions and tool arguments and results.")
    traces_content_max_chars: int = Field(4096, gt=0, description="Longest recorded content, per attribute.")
    traces_export_delay_seconds: float = Field(
        2.0, gt=0, description="How long finished spans wait to be exported in a batch."
    )
    gc_gen0_threshold: int = Field(
        10_000,
        ge=0,
        description="Collector tuning of `python -m gateway`: the heap built at start is frozen (gc.freeze) and "
        "generation 0 is collected every N allocations instead of Python's 700 (0 leaves the collector as is). "
        "Measured: +20% chat throughput (docs/benchmarks.md).",
    )

    @model_validator(mode="after")
    def _files_directory(self) -> "Settings":
        if self.files_backend == "directory" and self.files_directory is None:
            raise ValueError("files_backend 'directory' needs files_directory")
        return self

    @field_validator("traces_endpoint")
    @classmethod
    def _traces_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("traces_endpoint must be an http(s) URL")
        return value

    @field_validator("traces_headers")
    @classmethod
    def _traces_headers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_headers(value.get_secret_value())
        return value

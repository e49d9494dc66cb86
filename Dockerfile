# Two stages on the same base: the builder fills a virtualenv at /opt/venv, the final stage copies only that
# virtualenv and the catalogue. Both stages share BASE so the venv's interpreter link (/usr/local/bin/python3 on
# python:*-slim, /usr/bin/python3 on a Debian base with python3 from apt) points at the same file in both.
# The base needs python3 with the venv module (Debian: python3 python3-venv) and useradd; `make image` builds
# such a base with debootstrap when no registry is reachable (docs/image.md).
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Every pinned dependency ships a manylinux wheel for CPython 3.11 on x86-64 (`make image` builds on a base with no
# compiler), so none is needed even here; a platform without wheels would add build-essential to this stage only.
RUN python3 -m venv /opt/venv
COPY requirements.lock /build/
# A build behind a TLS-intercepting proxy passes the CA bundle it trusts as the secret `ca` (`make image` passes the
# build machine's); it stays out of every layer. Without it pip trusts its own bundle.
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.pem \
    if [ -s /run/secrets/ca.pem ]; then export PIP_CERT=/run/secrets/ca.pem; fi \
    && /opt/venv/bin/pip install --no-compile -r /build/requirements.lock
COPY pyproject.toml README.md /build/
COPY gateway /build/gateway
COPY policies /build/policies
COPY config /build/config
# The project itself, not editable, so the final stage needs no source tree. pip, needed no more, leaves; every
# module is compiled once here, checked by hash rather than mtime, since a read-only root cannot take the .pyc
# files Python would otherwise write at first import.
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.pem \
    if [ -s /run/secrets/ca.pem ]; then export PIP_CERT=/run/secrets/ca.pem; fi \
    && /opt/venv/bin/pip install --no-compile --no-deps /build \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv

FROM ${BASE}
# Nothing at run time writes outside /tmp (mount a tmpfs there with a read-only root): no bytecode, HOME and
# TMPDIR in /tmp, and litellm's cost map read from its package rather than fetched.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp TMPDIR=/tmp \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    GATEWAY_CONFIG=/app/config/gateway.yaml GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080
RUN groupadd --gid 10001 gateway \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/venv /opt/venv
# The shipped catalogue holds the published demo keys, which the gateway refuses to expose on 0.0.0.0: mount your
# own over this file, or pass GATEWAY_DEMO=1 for a throwaway demo.
COPY config/gateway.yaml /app/config/gateway.yaml
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# the port the gateway really listens on (GATEWAY_PORT may be changed at run time)
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2).status != 200)"]
CMD ["python", "-m", "gateway"]

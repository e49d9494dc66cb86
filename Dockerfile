FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True \
    GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY config ./config
RUN pip install --no-cache-dir --no-deps . && useradd --uid 10001 --no-create-home gateway
USER 10001
EXPOSE 8080
# the port the gateway really listens on (GATEWAY_PORT may be changed at run time)
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD python -c "import os,urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080')).status != 200)"
CMD ["python", "-m", "gateway"]

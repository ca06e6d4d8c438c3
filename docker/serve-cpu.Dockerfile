# syntax=docker/dockerfile:1
# CPU serving image: onnxruntime and OpenTelemetry (extras `serve`, `tracing`), no torch;
# `vae serve` on gRPC 50051, metrics 8000.
# Build from the repository root: docker build -f docker/serve-cpu.Dockerfile -t vae-serve:cpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a code change does not re-download onnxruntime.
COPY pyproject.toml ./
COPY docker/requirements.py docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    python docker/requirements.py serve tracing > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY README.md ./
COPY vae_cli/ vae_cli/
COPY vae/ vae/
COPY repository/ repository/
COPY wire/ wire/
COPY service/ service/
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir .

FROM ${PYTHON_IMAGE} AS runtime
# A fixed UID, so operators can grant a mounted model repository read access by number.
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --no-create-home --shell /usr/sbin/nologin vae
COPY --from=build /opt/venv /opt/venv
# The bundled model; docker-compose.yml mounts the host's repository over it, read-only.
COPY models/ /srv/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VAE_REPO=/srv/models \
    VAE_MODEL=mnist \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=50051 \
    VAE_METRICS_PORT=8000 \
    VAE_DEVICE=cpu
USER vae
EXPOSE 50051 8000
# grpc.health.v1 says SERVING only once every model version is loaded and warmed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=2s --retries=3 \
    CMD vae health --target "127.0.0.1:${VAE_PORT}" || exit 1
# SIGTERM starts the graceful drain (VAE_GRACE_SECONDS); Python handles it even as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vae"]
CMD ["serve"]

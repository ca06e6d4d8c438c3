# syntax=docker/dockerfile:1
# GPU serving image: onnxruntime-gpu 1.31.1 and OpenTelemetry (extras `gpu`, `tracing`) on CUDA 13 +
# cuDNN 9, no torch.
# onnxruntime-gpu 1.31.1 on PyPI is built for CUDA 13.x and cuDNN 9 (its `cuda`/`cudnn` extras pin
# nvidia-cuda-runtime~=13.0 and nvidia-cudnn-cu13~=9.0); CUDA 13.0 needs an NVIDIA driver >= 580.
# Build from the repository root: docker build -f docker/serve-gpu.Dockerfile -t vae-serve:gpu .

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# The build stage uses the same base so the venv's interpreter path (/usr/bin/python3.12) exists
# unchanged in the final stage.
FROM ${CUDA_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY docker/requirements.py docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 docker/requirements.py gpu tracing > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY README.md ./
COPY vae_cli/ vae_cli/
COPY vae/ vae/
COPY repository/ repository/
COPY wire/ wire/
COPY service/ service/
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir .

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --no-create-home --shell /usr/sbin/nologin vae
COPY --from=build /opt/venv /opt/venv
COPY models/ /srv/models/
# VAE_DEVICE=cuda, not auto: a container started without its GPU should fail its health check,
# not serve quietly on the CPU.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VAE_REPO=/srv/models \
    VAE_MODEL=mnist \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=50051 \
    VAE_METRICS_PORT=8000 \
    VAE_DEVICE=cuda
USER vae
EXPOSE 50051 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --start-interval=2s --retries=3 \
    CMD vae health --target "127.0.0.1:${VAE_PORT}" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["vae"]
CMD ["serve"]

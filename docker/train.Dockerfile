# syntax=docker/dockerfile:1
# Training image for the one-shot jobs: `vae train`, `vae eval`, `vae export`, `vae verify`.
# Extras `train` (torch 2.13.0, onnx) and `serve` (onnxruntime, which export's parity check runs).
# PyPI's torch 2.13.0 wheel brings its own CUDA 13 libraries, so a slim base trains on the GPU
# with only the host driver; --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# builds a much smaller CPU-only image.
# Build from the repository root: docker build -f docker/train.Dockerfile -t vae-train .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY docker/requirements.py docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    python docker/requirements.py train serve > /tmp/requirements.txt \
    && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt
COPY README.md ./
COPY vae_cli/ vae_cli/
COPY vae/ vae/
COPY repository/ repository/
COPY wire/ wire/
COPY service/ service/
COPY client/ client/
COPY export/ export/
COPY training/ training/
COPY benchmarks/ benchmarks/
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir .

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid vae --no-create-home --shell /usr/sbin/nologin vae
COPY --from=build /opt/venv /opt/venv
# Jobs read and write the mounted data/, runs/ and models/ under /work (the recipes' relative paths).
WORKDIR /work
RUN chown vae:vae /work
# HOME=/tmp: compose runs the jobs as the caller's UID (VAE_UID), which has no home directory here.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    VAE_DATA_DIR=/work/data
USER vae
ENTRYPOINT ["vae"]
CMD ["train", "--no-progress"]

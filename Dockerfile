# syntax=docker/dockerfile:1
#
# QuartzNet ASR: one image for serving (`asr serve`, the default command), Ray nodes and
# `asr train`. Built by the same scripts/setup.sh a developer runs, so the image installs exactly
# what the tests exercise: apt packages, the .venv (torch, serve + train extras), KenLM's lmplz
# and build_binary compiled from source, the gRPC stubs, and the starter model seeded into
# the registry.
#
#   docker build -t quartznet-asr .                              # CPU torch (default)
#   docker build -t quartznet-asr:cuda --build-arg TORCH_VARIANT=cuda .
#
# TORCH_VARIANT=cuda takes torch from PyPI, whose Linux wheels bundle the CUDA runtime; the host
# needs only the NVIDIA driver and the NVIDIA Container Toolkit (see the GPU lines in
# docker-compose.yml). TORCH_INDEX_URL picks another PyTorch wheel index, e.g.
# --build-arg TORCH_VARIANT=custom --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# BASE may be any Debian 12 image with Python 3.11 as python3.

ARG BASE=python:3.11-slim-bookworm

# ----------------------------------------------------------------------------------------------
FROM ${BASE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG KENLM_JOBS=4
# ASR_SKIP_TEST_TOOLS: the browser, Prometheus and docker-compose are for the test suite only.
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHON=python3 \
    KENLM_JOBS=${KENLM_JOBS} \
    ASR_SKIP_TEST_TOOLS=1 \
    ASR_REGISTRY=/data/registry
WORKDIR /app

# 1. Dependencies only: this layer (torch, ray, KenLM build) is reused until pyproject.toml or
#    the setup script change; editing code does not reinstall torch.
COPY pyproject.toml ./
COPY scripts/setup.sh scripts/
RUN if [ "$TORCH_VARIANT" != "cuda" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi; \
    scripts/setup.sh

# 2. The code. Removing the stamp makes setup.sh redo the editable install so it maps the
#    packages that exist now (dependencies are already satisfied: nothing is downloaded), then
#    it generates the gRPC stubs and seeds the starter model into $ASR_REGISTRY. The KenLM
#    sources and objects in .cache are not needed at run time (lmplz is in .venv/bin).
COPY . .
RUN rm -f .venv/.setup-pyproject.sha256 && scripts/setup.sh && rm -rf .cache

# ----------------------------------------------------------------------------------------------
FROM ${BASE} AS runtime
ARG ASR_UID=10001
# Runtime libraries of lmplz/build_binary (libboost-*-dev and libsndfile1 in setup.sh's list).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       libboost-program-options1.74.0 libboost-thread1.74.0 libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "$ASR_UID" --create-home --home-dir /home/asr --shell /usr/sbin/nologin asr \
    && mkdir -p /data/registry /app/runs \
    && chown asr:asr /data /data/registry /app/runs

WORKDIR /app
# /app holds the code, the .venv (same path as in the build stage: its scripts' shebangs point
# there) and starter/registry; /data/registry is the seeded registry, copied into a fresh named
# volume the first time one is mounted there.
COPY --from=build /app /app
COPY --from=build --chown=asr:asr /data/registry /data/registry

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ASR_REGISTRY=/data/registry \
    ASR_HTTP_HOST=0.0.0.0 \
    ASR_HTTP_PORT=8000 \
    ASR_GRPC_PORT=50051 \
    HOME=/home/asr

USER asr
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('ASR_HTTP_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/ready', timeout=4).status == 200 else 1)"]

# The entrypoint copies starter versions the registry volume lacks (volumes made by an older
# image, bind mounts), then runs the command.
ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
CMD ["asr", "serve"]

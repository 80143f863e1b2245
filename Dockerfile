# syntax=docker/dockerfile:1
#
# QuartzNet ASR: one image for serving (`asr serve`, the default command), Ray nodes and
# `asr train`. Built by the same scripts/setup.sh a developer runs, so the image installs exactly
# what the tests exercise: apt packages, the .venv holding requirements.lock (torch, serve +
# train extras), KenLM's lmplz and build_binary compiled from source, the gRPC stubs, and the
# starter model seeded into the registry; setup's last step transcribes a clip inside the build.
#
#   docker build -t quartznet-asr .
#   docker build --build-arg PIP_INDEX_URL=<your mirror's simple index> -t quartznet-asr .
#
# The lock pins PyPI's torch, whose Linux wheels bundle the CUDA runtime: the same image runs
# on CPU, and on an NVIDIA GPU when the host has the driver and the NVIDIA Container Toolkit
# (see the GPU lines in docker-compose.yml). Every download goes through pip and apt-get by
# package name; the PIP_* build arguments below reach pip, so a mirror or proxy applies.
# BASE may be any Debian 12 image with Python 3.11 as python3.

ARG BASE=python:3.11-slim-bookworm

# ----------------------------------------------------------------------------------------------
FROM ${BASE} AS build
ARG KENLM_JOBS=4
# pip's own settings, unset unless given with --build-arg (a mirror, a proxy's certificate).
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
# ASR_SKIP_TEST_TOOLS: the browser, Prometheus and docker-compose are for the test suite only.
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHON=python3 \
    KENLM_JOBS=${KENLM_JOBS} \
    ASR_SKIP_TEST_TOOLS=1 \
    ASR_REGISTRY=/data/registry
WORKDIR /app

# 1. Dependencies only: this layer (torch, ray, KenLM build) is reused until the lock files or
#    the setup script change; editing code does not reinstall torch. There is no code yet to
#    check, so the install check waits for step 2.
COPY pyproject.toml requirements.lock build-requirements.lock ./
COPY scripts/setup.sh scripts/lock_digest.py scripts/
RUN ASR_SKIP_CHECK=1 scripts/setup.sh

# 2. The code. Removing the project stamp makes setup.sh redo the editable install so it maps
#    the packages that exist now (the lock is already installed: nothing is downloaded), then it
#    generates the gRPC stubs, seeds the starter model into $ASR_REGISTRY and checks the install
#    by transcribing a bundled clip. The KenLM sources and objects in .cache are not needed at
#    run time (lmplz is in .venv/bin).
COPY . .
RUN rm -f .venv/.setup-project.sha256 && scripts/setup.sh && rm -rf .cache

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

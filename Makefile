# Quick start: `make demo` (install if needed, then serve the tiny demo critic) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lift serve --demo

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not vllm and not slow"

bench: install
	$(PY) benchmarks/critic_throughput.py

# The whole LiFT chain on the CPU (benchmarks/lift_in_miniature.py): rate generated videos by hidden rules, train
# and serve the critic, fine-tune the generator on its rewards, judge it by the rules. Reuses MINIATURE_OUT's stages.
MINIATURE_OUT ?= /tmp/lift_in_miniature
.PHONY: miniature
miniature: install
	$(PY) benchmarks/lift_in_miniature.py --out $(MINIATURE_OUT)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The CPU image, built with docker or else buildah (deploy/image.sh documents every LIFT_* setting), and
# then run for real: it serves, scores a video, its HEALTHCHECK passes, then fails once its engine is killed.
.PHONY: image image-check
image:
	bash deploy/image.sh build

image-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash deploy/image.sh check

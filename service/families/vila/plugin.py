"""vLLM `general_plugins` entry point: makes converted VILA-1.5 checkpoints loadable by any vLLM engine.

vLLM calls every installed general plugin in EVERY process it starts (front end, EngineCore, workers, the
registry-inspection subprocess), possibly more than once: so this is idempotent, cheap, and lazy (the model
module, with torch and vLLM's layers, is imported only when a checkpoint actually names the architecture).
Registering anywhere else (e.g. only in the process that builds the engine) fails in the worker.
"""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from service.families.vila import ARCHITECTURE, VLLM_MODEL_PATH

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, VLLM_MODEL_PATH)

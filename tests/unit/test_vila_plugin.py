"""The vLLM plugin entry point: installed, idempotent, and lazy (it runs in every vLLM process)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

CHECK = """
import sys
from vllm import ModelRegistry
from service.families.vila import ARCHITECTURE
from service.families.vila.plugin import register
register(); register()  # vLLM may call it more than once per process
assert ARCHITECTURE in ModelRegistry.get_supported_archs()
assert "service.families.vila.vllm_model" not in sys.modules, "registration must not import the model"
assert "service.families.vila.reference" not in sys.modules
print("ok")
"""


def test_entry_point_is_installed() -> None:
    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("lift_vila") == "service.families.vila.plugin:register"


def test_register_is_lazy_and_idempotent() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")

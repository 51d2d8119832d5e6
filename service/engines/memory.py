"""How much memory the vLLM engine takes for its KV cache, decided before vLLM starts, and checked.

On the CPU backend vLLM's default reserves `gpu_memory_utilization` (0.85) of the *NUMA node's* RAM for the KV
cache. That is sized by the host, not by the critic: it fails whenever anything else holds memory (a second
replica, another job) and on hosts whose node 0 is a fraction of their RAM, even idle. Here the cache is sized
by the work instead: `max_num_seqs` sequences of `max_model_len` tokens of this critic, with a floor, capped by
what is free. vLLM's own check would only fail later, deep in its worker's log; this one fails first, in one
line that names the setting to change.

Precedence: `LIFT_KV_CACHE_GB` (explicit size) > `LIFT_GPU_MEMORY_UTILIZATION` (vLLM's fraction, as vLLM
means it) > vLLM's legacy `VLLM_CPU_KVCACHE_SPACE` (CPU only, vLLM applies it itself) > sized from the work.
On GPU, without an explicit size, vLLM's fraction of GPU memory stays in charge.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import EngineStartError

log = logging.getLogger("lift.engine")

GiB = 1024**3
MIN_KV_CACHE_BYTES = 256 * 1024**2  # floor: prefix-cache room for a few videos' frames even on tiny critics
FREE_SHARE_CAP = 0.5  # sized-from-work never takes more than half of what is free (others live here too)
ENV_KV_CACHE_GB = "LIFT_KV_CACHE_GB"
ENV_GPU_MEMORY_UTILIZATION = "LIFT_GPU_MEMORY_UTILIZATION"
ENV_VLLM_CPU_KVCACHE = "VLLM_CPU_KVCACHE_SPACE"
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1}


@dataclass(frozen=True)
class MemoryInfo:
    """Free memory where vLLM's CPU worker looks (its NUMA node, clamped by the cgroup) and on the host."""

    node: int
    node_total: int
    node_available: int
    host_available: int


@dataclass(frozen=True)
class KVCachePlan:
    kv_cache_bytes: int | None  # what vLLM gets as kv_cache_memory_bytes; None = vLLM's fraction decides
    gpu_memory_utilization: float | None  # passed to vLLM when set
    source: str  # which setting decided: "LIFT_KV_CACHE_GB", "LIFT_GPU_MEMORY_UTILIZATION", ...
    detail: str  # one human line for the start log

    def engine_args(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kv_cache_bytes is not None:
            out["kv_cache_memory_bytes"] = self.kv_cache_bytes
        if self.gpu_memory_utilization is not None:
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
        return out


def kv_bytes_per_token(config: dict[str, Any], dtype: str = "auto") -> int:
    """K and V for every layer of the language model, one token, in the KV cache's dtype."""
    text = config.get("text_config") or config.get("llm_config") or config
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or text["hidden_size"] // heads)
    if dtype == "auto":
        dtype = str(text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    size = _DTYPE_BYTES.get(dtype.replace("torch.", ""), 2)
    return 2 * layers * kv_heads * head_dim * size


def work_kv_bytes(model_dir: str | Path, max_model_len: int, max_num_seqs: int, dtype: str = "auto") -> tuple[int, int]:
    """(bytes for max_num_seqs full sequences, bytes for one full sequence) of this critic."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    per_token = kv_bytes_per_token(config, dtype)
    return per_token * max_model_len * max_num_seqs, per_token * max_model_len


def memory_info() -> MemoryInfo:
    """The numbers vLLM's CPU worker will check (its own helpers where importable), and the host's."""
    import psutil

    host = psutil.virtual_memory().available
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        cpus = get_allowed_cpu_list()
        node = cpus[0].numa_node if cpus else 0
        info = get_memory_node_info(node)
        return MemoryInfo(node, int(info.total_memory), int(info.available_memory), int(host))
    except Exception:  # noqa: BLE001 - an older/newer vLLM without these helpers: fall back to the host
        vm = psutil.virtual_memory()
        return MemoryInfo(0, int(vm.total), int(vm.available), int(host))


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise EngineStartError(f"{name}={raw!r} is not a number") from None


def plan_kv_cache(
    model_dir: str | Path,
    *,
    on_cpu: bool,
    max_model_len: int,
    max_num_seqs: int,
    dtype: str = "auto",
    kv_cache_gb: float | None = None,
    gpu_memory_utilization: float | None = None,
    memory: MemoryInfo | None = None,
) -> KVCachePlan:
    """Decide the KV cache (see the module docstring) and refuse, in one line, what cannot start here.

    Arguments left None fall back to LIFT_KV_CACHE_GB / LIFT_GPU_MEMORY_UTILIZATION from the environment, so
    the Python API, `lift score`, `lift critic eval` and `lift serve` all size the engine the same way.
    """
    if kv_cache_gb is None:
        kv_cache_gb = _env_float(ENV_KV_CACHE_GB)
    if gpu_memory_utilization is None:
        gpu_memory_utilization = _env_float(ENV_GPU_MEMORY_UTILIZATION)
    if kv_cache_gb is not None and kv_cache_gb <= 0:
        raise EngineStartError(f"{ENV_KV_CACHE_GB} must be > 0, got {kv_cache_gb:g}")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise EngineStartError(f"{ENV_GPU_MEMORY_UTILIZATION} must be in (0, 1], got {gpu_memory_utilization:g}")

    if kv_cache_gb is not None:
        size = int(kv_cache_gb * GiB)
        plan = KVCachePlan(size, gpu_memory_utilization, ENV_KV_CACHE_GB, f"KV cache {_gib(size)} ({ENV_KV_CACHE_GB})")
        if on_cpu:
            _check_fits(size, memory or memory_info(), ENV_KV_CACHE_GB)
        return plan
    if not on_cpu:
        return KVCachePlan(None, gpu_memory_utilization, "gpu_memory_utilization",
                           f"KV cache: vLLM's share of GPU memory ({gpu_memory_utilization or 'vLLM default'})")
    mem = memory or memory_info()
    if gpu_memory_utilization is not None:  # the user asked for vLLM's own semantics: check them as vLLM will
        wanted = math.ceil(mem.node_total * gpu_memory_utilization)
        if wanted > mem.node_available:
            raise EngineStartError(
                f"{ENV_GPU_MEMORY_UTILIZATION}={gpu_memory_utilization:g} asks vLLM for {_gib(wanted)} of NUMA node "
                f"{mem.node}'s {_gib(mem.node_total)}, but only {_gib(mem.node_available)} is free; unset it (the KV "
                f"cache is then sized for the critic's work) or set {ENV_KV_CACHE_GB}")
        return KVCachePlan(None, gpu_memory_utilization, ENV_GPU_MEMORY_UTILIZATION,
                           f"KV cache: {gpu_memory_utilization:g} of node {mem.node}'s memory ({ENV_GPU_MEMORY_UTILIZATION})")
    legacy = os.environ.get(ENV_VLLM_CPU_KVCACHE, "").strip()
    if legacy:  # vLLM applies it over any kv_cache_memory_bytes we pass: report and check what it will do
        size = int(float(legacy) * GiB)
        _check_fits(size, mem, ENV_VLLM_CPU_KVCACHE)
        return KVCachePlan(size, None, ENV_VLLM_CPU_KVCACHE, f"KV cache {_gib(size)} ({ENV_VLLM_CPU_KVCACHE})")

    work, one_sequence = work_kv_bytes(model_dir, max_model_len, max_num_seqs, dtype)
    floor = max(MIN_KV_CACHE_BYTES, one_sequence)
    cap = int(min(mem.node_available, mem.host_available) * FREE_SHARE_CAP)
    size = max(floor, min(work, cap))
    _check_fits(size, mem, ENV_KV_CACHE_GB)
    detail = (f"KV cache {_gib(size)} sized for {max_num_seqs} x {max_model_len} tokens of this critic "
              f"(needs {_gib(work)}; floor {_gib(floor)}; free: node {mem.node} {_gib(mem.node_available)}, "
              f"host {_gib(mem.host_available)})")
    if work > size:
        detail += f"; capped at half of what is free, so fewer than {max_num_seqs} full-length sequences fit at once"
    return KVCachePlan(size, None, "work", detail)


def _check_fits(size: int, mem: MemoryInfo, setting: str) -> None:
    free = min(mem.node_available, mem.host_available)
    if size > free:
        raise EngineStartError(
            f"not enough memory for the KV cache: it needs {_gib(size)}, {_gib(free)} is free "
            f"(NUMA node {mem.node}: {_gib(mem.node_available)} of {_gib(mem.node_total)}; host: "
            f"{_gib(mem.host_available)}); set {setting} lower, lower LIFT_MAX_NUM_SEQS / LIFT_MAX_MODEL_LEN, "
            "or free memory")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"

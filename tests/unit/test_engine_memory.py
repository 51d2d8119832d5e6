"""The engine's KV cache is sized from the critic's work, not from the host, and refused in one line when it
cannot fit (service.engines.memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.engines.memory import GiB, MIN_KV_CACHE_BYTES, MemoryInfo, kv_bytes_per_token, plan_kv_cache
from service.errors import EngineStartError

PLENTY = MemoryInfo(node=0, node_total=24 * GiB, node_available=20 * GiB, host_available=20 * GiB)


@pytest.fixture(autouse=True)
def _no_memory_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LIFT_KV_CACHE_GB", "LIFT_GPU_MEMORY_UTILIZATION", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(key, raising=False)


def _critic(tmp_path: Path, layers: int = 40, heads: int = 40, kv_heads: int = 40, hidden: int = 5120) -> Path:
    cfg = {"architectures": ["X"], "text_config": {"num_hidden_layers": layers, "num_attention_heads": heads,
                                                  "num_key_value_heads": kv_heads, "hidden_size": hidden,
                                                  "dtype": "float16"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_bytes_per_token_is_k_and_v_of_every_layer() -> None:
    # Llama-2-13B (LiFT-Critic-13B's language model) in fp16: 2 x 40 layers x 40 heads x 128 x 2 bytes
    cfg = {"num_hidden_layers": 40, "num_attention_heads": 40, "hidden_size": 5120}
    assert kv_bytes_per_token(cfg, "float16") == 819_200
    assert kv_bytes_per_token({"text_config": {**cfg, "num_key_value_heads": 8, "head_dim": 64}}, "float32") == 163_840


def test_tiny_critic_gets_the_floor_not_85_percent_of_the_host(tiny_critic_dir: Path) -> None:
    plan = plan_kv_cache(tiny_critic_dir, on_cpu=True, max_model_len=2048, max_num_seqs=8, memory=PLENTY)
    assert plan.source == "work" and plan.kv_cache_bytes == MIN_KV_CACHE_BYTES
    assert plan.engine_args() == {"kv_cache_memory_bytes": MIN_KV_CACHE_BYTES}


def test_work_size_scales_with_sequences_and_is_capped_by_what_is_free(tmp_path: Path) -> None:
    model = _critic(tmp_path, layers=4, heads=8, kv_heads=8, hidden=512)  # 2*4*8*64*2 = 8 KiB per token
    plan = plan_kv_cache(model, on_cpu=True, max_model_len=4096, max_num_seqs=64, memory=PLENTY)
    assert plan.kv_cache_bytes == 8192 * 4096 * 64  # 2 GiB: the whole work fits
    small = MemoryInfo(node=0, node_total=8 * GiB, node_available=3 * GiB, host_available=10 * GiB)
    capped = plan_kv_cache(model, on_cpu=True, max_model_len=4096, max_num_seqs=64, memory=small)
    assert capped.kv_cache_bytes == int(1.5 * GiB) and "capped" in capped.detail


def test_explicit_size_that_does_not_fit_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFT_KV_CACHE_GB", "64")
    with pytest.raises(EngineStartError) as err:
        plan_kv_cache(_critic(tmp_path), on_cpu=True, max_model_len=4096, max_num_seqs=8, memory=PLENTY)
    msg = err.value.message
    assert "\n" not in msg and "64.00 GiB" in msg and "20.00 GiB is free" in msg and "LIFT_KV_CACHE_GB" in msg


def test_a_single_sequence_that_cannot_fit_is_refused(tmp_path: Path) -> None:
    tight = MemoryInfo(node=0, node_total=4 * GiB, node_available=1 * GiB, host_available=1 * GiB)
    with pytest.raises(EngineStartError, match="LIFT_MAX_MODEL_LEN"):  # 13B: 819 KB x 4096 = 3.1 GiB > free
        plan_kv_cache(_critic(tmp_path), on_cpu=True, max_model_len=4096, max_num_seqs=1, memory=tight)


def test_fraction_keeps_vllm_meaning_and_is_checked_as_vllm_will(tmp_path: Path) -> None:
    node8 = MemoryInfo(node=0, node_total=int(7.96 * GiB), node_available=int(6.5 * GiB), host_available=20 * GiB)
    with pytest.raises(EngineStartError, match="LIFT_GPU_MEMORY_UTILIZATION=0.85"):
        plan_kv_cache(_critic(tmp_path), on_cpu=True, max_model_len=4096, max_num_seqs=8, gpu_memory_utilization=0.85,
                      memory=node8)
    ok = plan_kv_cache(_critic(tmp_path), on_cpu=True, max_model_len=4096, max_num_seqs=8, gpu_memory_utilization=0.5,
                       memory=node8)
    assert ok.engine_args() == {"gpu_memory_utilization": 0.5}


def test_gpu_keeps_vllms_fraction_unless_a_size_is_given(tmp_path: Path) -> None:
    plan = plan_kv_cache(_critic(tmp_path), on_cpu=False, max_model_len=4096, max_num_seqs=64)
    assert plan.engine_args() == {}
    sized = plan_kv_cache(_critic(tmp_path), on_cpu=False, max_model_len=4096, max_num_seqs=64, kv_cache_gb=20)
    assert sized.engine_args() == {"kv_cache_memory_bytes": 20 * GiB}


def test_bad_setting_values_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFT_KV_CACHE_GB", "lots")
    with pytest.raises(EngineStartError, match="not a number"):
        plan_kv_cache(_critic(tmp_path), on_cpu=True, max_model_len=4096, max_num_seqs=8, memory=PLENTY)

"""LIFT_* engine settings reach the engine that `lift serve` builds (tensor parallel for the 40B critic)."""

from service.app.settings import ServiceSettings
from service.critic import Critic


def test_engine_settings_from_env_reach_the_vllm_engine(monkeypatch, tiny_critic_dir):
    monkeypatch.setenv("LIFT_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("LIFT_MAX_MODEL_LEN", "8192")
    monkeypatch.setenv("LIFT_DTYPE", "bfloat16")
    settings = ServiceSettings()
    critic = Critic.from_pretrained(tiny_critic_dir, engine=settings.engine, **settings.engine_options())
    args = critic.engine.engine_args  # not started: only the arguments vLLM will get
    assert args["tensor_parallel_size"] == 4 and args["max_model_len"] == 8192 and args["dtype"] == "bfloat16"
    assert args["enable_prefix_caching"] is True


def test_transformers_engine_takes_only_dtype():
    assert ServiceSettings(engine="transformers").engine_options() == {"dtype": "float32"}

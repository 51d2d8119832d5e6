"""VideoAlign's VideoReward as a critic (service.critics.videoalign, service/families/videoalign): its prompt byte for
byte against the template extracted from its source (tests/fixtures/critics, docs/critics/videoalign.md), the
normalisation and Overall against numbers worked by hand from its constants, its frame and pixel rules, the
tiny release's layout, and the converter: what it writes and what it refuses."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.critics import CRITIC_NAMES, load_spec
from service.critics.spec import HeadChannel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "critics"
CHAT_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.tiny_critics.videoalign import build_tiny_videoalign_release

    return build_tiny_videoalign_release(tmp_path_factory.mktemp("videoalign"), seed=0)


@pytest.fixture(scope="module")
def converted(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.families.videoalign.convert import convert_videoalign

    return convert_videoalign(release, tmp_path_factory.mktemp("converted") / "videoalign").out_dir


# ---- prompt -------------------------------------------------------------------------------------------------
def test_prompt_is_its_template_byte_for_byte() -> None:
    from service.critics.videoalign import DETAILED_PROMPT_WITH_SPECIAL_TOKEN

    template = fixture("videoalign_detailed_prompt_with_special_token.txt")
    assert DETAILED_PROMPT_WITH_SPECIAL_TOKEN == template
    spec = load_spec("videoalign")
    (query,) = spec.queries
    caption = fixture("videoalign_example_caption.txt")
    assert query.user_text(caption) == fixture("videoalign_user_text_example.txt")  # build_prompt's own output
    for text in ("a cat {text_prompt} {0} }{ on a mat", "", "  spaces kept  "):  # .format never re-reads a value
        assert query.user_text(text) == template.format(text_prompt=text)
    assert query.system is None and query.media_first and spec.media.present_as == "video"


def test_chat_puts_the_video_first_and_the_three_reward_tokens_once_each(converted: Path) -> None:
    from service.critics.runner import chat_for
    from service.families.qwen2_vl import Qwen2VLFamily

    spec = load_spec("videoalign")
    family = Qwen2VLFamily(converted)
    caption = "A dog runs along a beach."
    text = family.chat_template_text(chat_for(spec, spec.queries[0], caption), 4)
    user = fixture("videoalign_detailed_prompt_with_special_token.txt").format(text_prompt=caption)
    assert text == (f"{CHAT_HEAD}<|vision_start|><|video_pad|><|vision_end|>{user}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = family.tokenizer(text, add_special_tokens=False).input_ids
    tokens = [family.token_ids(t)[0] for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")]
    positions = [ids.index(t) for t in tokens]
    assert positions == sorted(positions) and all(ids.count(t) == 1 for t in tokens)


# ---- values, scores, reward ---------------------------------------------------------------------------------
def test_normalisation_and_overall_are_its_inference_code() -> None:
    from service.critics.videoalign import CHANNEL, overall

    spec = load_spec("videoalign")
    assert "videoalign" in CRITIC_NAMES and spec.dimension_names == ("vq", "mq", "ta")
    assert spec.reward_over == "value" and isinstance(CHANNEL, HeadChannel)
    assert dict(CHANNEL.tokens) == {"vq": "<|VQ_reward|>", "mq": "<|MQ_reward|>", "ta": "<|TA_reward|>"}
    assert dict(CHANNEL.outputs) == {"vq": 0, "mq": 0, "ta": 0}  # output_dim 1: output 0 at each token
    assert CHANNEL.normalised and CHANNEL.positions == "sequential"
    # _norm: (x - mean) / std with the release's inference_config, worked by hand
    assert CHANNEL.value("vq", 5.0) == pytest.approx(1.3243 / 2.2476, abs=1e-12)    # 0.589206...
    assert CHANNEL.value("mq", 1.1646) == pytest.approx(0.0, abs=1e-12)
    assert CHANNEL.value("ta", 0.0) == pytest.approx(-2.8105 / 2.5121, abs=1e-12)   # -1.118785...
    assert CHANNEL.value("vq", 3.6757 + 2 * 2.2476) == pytest.approx(2.0, abs=1e-12)
    # Overall = VQ + MQ + TA after _norm
    values = {"vq": CHANNEL.value("vq", 5.0), "mq": CHANNEL.value("mq", 2.0), "ta": CHANNEL.value("ta", 1.0)}
    hand = (5.0 - 3.6757) / 2.2476 + (2.0 - 1.1646) / 1.3811 + (1.0 - 2.8105) / 2.5121  # 0.589206 + 0.604880 - 0.720712
    assert overall(values) == pytest.approx(hand, abs=1e-12) == spec.reward(values)
    assert hand == pytest.approx(0.4733747, abs=1e-7)
    # raw when a release has no inference_config
    from dataclasses import replace

    assert replace(CHANNEL, normalised=False).value("vq", 5.0) == 5.0
    # the [0, 1] view: sigmoid, stable at the extremes
    assert HeadChannel.score(0.0) == 0.5
    assert HeadChannel.score(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert HeadChannel.score(-2.0) == pytest.approx(1 - HeadChannel.score(2.0))
    assert HeadChannel.score(-800.0) == 0.0 and HeadChannel.score(800.0) == 1.0


def test_head_is_read_in_float32_at_the_tokens(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from service.critics.head import apply_head, load_head
    from service.engines.base import hidden_at

    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_file({"weight": weight.astype(np.float16)}, str(tmp_path / "rm_head.safetensors"))
    w = load_head(str(tmp_path / "rm_head.safetensors"))
    assert w.dtype == np.float32 and not w.flags.writeable
    states = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [9, 9, 9]], dtype=np.float32)
    hidden = hidden_at([5, 7, 8, 7], states, [7, 8])  # the first position of each id
    assert hidden[7].tolist() == [0, 1, 0] and hidden[8].tolist() == [0, 0, 1]
    assert apply_head(w, 1, hidden[7]) == 4.0 and apply_head(w, 0, hidden[8]) == 2.0


# ---- frames and pixels --------------------------------------------------------------------------------------
def test_frames_are_its_smart_nframes_round_half_even_and_torch_linspace() -> None:
    from service.errors import InvalidVideo

    rule = load_spec("videoalign").media.frames
    assert rule.indices(16, 8.0) == [0, 5, 10, 15]  # 2 s at 8 fps: 4 frames (the minimum)
    # 132 frames at 24 fps = 5.5 s -> 11 -> round(5.5) * 2 = 12 (qwen-vl-utils would floor to 10)
    assert len(rule.indices(132, 24.0)) == 12
    assert len(rule.indices(120, 24.0)) == 10  # 5 s
    assert len(rule.indices(108, 24.0)) == 8  # 4.5 s -> 9 -> round(4.5) = 4 (half to even) -> 8
    assert rule.indices(9, 1.0) == [0, 1, 2, 3, 5, 6, 7, 8]  # 18 wanted, clamped to floor_even(9) = 8
    assert rule.indices(3, 8.0) == [0, 2]  # clamp [4, 2] -> 2
    assert rule.indices(100, 24.0, 7) == [0, 14, 28, 42, 57, 71, 85, 99]  # nframes 7 -> 8
    assert len(rule.indices(10_000, 30.0)) == 666  # 333.3 s -> 666.7 -> round(333.33) * 2
    assert len(rule.indices(100_000, 30.0)) == 768
    with pytest.raises(InvalidVideo):
        rule.indices(1, 8.0)


def test_pixels_are_its_smart_resize() -> None:
    rule = load_spec("videoalign").media.pixels
    assert rule.min_pixels == 128 * 28 * 28 and rule.max_pixels == 200704 and rule.factor == 28
    assert rule.frame_size(96, 128, 4) == (280, 392)  # 12,288 px: up to >= 100,352
    assert rule.frame_size(1080, 1920, 10) == (336, 588)  # 2,073,600 px: down to <= 200,704
    assert rule.frame_size(512, 512, 10) == (448, 448)


# ---- the tiny release -----------------------------------------------------------------------------------------
def test_tiny_release_has_the_trainers_layout(release: Path) -> None:
    import torch

    config = json.loads((release / "model_config.json").read_text())
    assert set(config) == {"data_config", "training_args", "model_config", "peft_lora_config", "inference_config"}
    assert config["model_config"]["output_dim"] == 1 and config["data_config"]["prompt_template_type"] == \
        "detailed_special"
    assert Path(config["model_config"]["model_name_or_path"]).is_dir()
    assert sorted(p.name for p in release.iterdir()) == ["README.md", "checkpoint-12", "model_config.json"]
    state = torch.load(release / "checkpoint-12" / "model.pth", weights_only=True)
    assert all(k.startswith("base_model.model.") for k in state)
    assert "base_model.model.rm_head.weight" in state and "base_model.model.lm_head.weight" in state
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert {f"{q}.base_layer.weight", f"{q}.base_layer.bias", f"{q}.lora_A.default.weight",
            f"{q}.lora_B.default.weight"} <= set(state)
    assert not any("visual" in k and "lora_" in k for k in state)  # the tower is excluded from LoRA
    assert float(state[f"{q}.lora_B.default.weight"].abs().sum()) > 0  # "trained": merging matters


def test_tiny_release_keys_are_peft_keys(release: Path) -> None:
    """The hand-written PEFT layout is what peft itself produces for the same targets (transformers 4.45 names
    aside: peft here wraps transformers 5's module tree)."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    config = json.loads((release / "model_config.json").read_text())
    base = Qwen2VLForConditionalGeneration.from_pretrained(config["model_config"]["model_name_or_path"],
                                                           dtype=torch.float32)
    base.rm_head = torch.nn.Linear(base.config.text_config.hidden_size, 1, bias=False)
    targets = [n for n, m in base.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
               and not any(x in n for x in config["peft_lora_config"]["lora_namespan_exclude"])]
    model = peft.get_peft_model(base, peft.LoraConfig(target_modules=targets, r=8, lora_alpha=16, bias="none"))
    ours = {_to_445(k) for k in torch.load(release / "checkpoint-12" / "model.pth", weights_only=True)}
    assert {_to_445(k) for k in model.state_dict()} == ours


def _to_445(key: str) -> str:
    return key.replace("model.language_model.", "model.").replace("base_model.model.model.visual.",
                                                                    "base_model.model.visual.")


# ---- the converter --------------------------------------------------------------------------------------------
def test_converter_merges_the_lora_and_writes_the_head(release: Path, converted: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = torch.load(release / "checkpoint-12" / "model.pth", weights_only=True)
    out = load_file(str(converted / "model.safetensors"))
    q = "model.layers.1.mlp.down_proj"
    base, a, b = (state[f"base_model.model.{q}.{k}"] for k in ("base_layer.weight", "lora_A.default.weight",
                                                                 "lora_B.default.weight"))
    assert torch.allclose(out[f"{q}.weight"], base + (16 / 8) * b @ a, atol=1e-6)
    assert torch.equal(out["model.layers.0.self_attn.q_proj.bias"],
                       state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"])
    assert torch.equal(out["visual.merger.mlp.0.weight"], state["base_model.model.visual.merger.mlp.0.weight"])
    assert not any("lora_" in k or "base_layer" in k or k == "rm_head.weight" for k in out)
    head = load_file(str(converted / "rm_head.safetensors"))["weight"]
    assert head.dtype == torch.float32 and torch.equal(head, state["base_model.model.rm_head.weight"])
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}  # the head file is never a weight file
    meta = json.loads((converted / "lift_critic.json").read_text())
    assert meta["critic"] == "videoalign" and meta["head"] == {"file": "rm_head.safetensors", "output_dim": 1}
    assert set(meta["reward_tokens"]) == {"<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"}
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert config["text_config"]["vocab_size"] == out["model.embed_tokens.weight"].shape[0] == 671


def _copy(release: Path, tmp_path: Path) -> Path:
    shutil.copytree(release.parent, tmp_path / "src")
    copy = tmp_path / "src" / release.name
    config = json.loads((copy / "model_config.json").read_text())
    config["model_config"]["model_name_or_path"] = str(tmp_path / "src" / Path(
        config["model_config"]["model_name_or_path"]).name)
    (copy / "model_config.json").write_text(json.dumps(config))
    return copy


def _edit_config(release: Path, section: str, key: str, value: object) -> None:
    config = json.loads((release / "model_config.json").read_text())
    if value is _DROP:
        config[section].pop(key, None) if key else config.pop(section)
    else:
        config[section][key] = value
    (release / "model_config.json").write_text(json.dumps(config))


_DROP = object()


def _no_head(r: Path) -> None:
    import torch

    state = torch.load(r / "checkpoint-12" / "model.pth", weights_only=True)
    del state["base_model.model.rm_head.weight"]
    torch.save(state, r / "checkpoint-12" / "model.pth")


def _plain_tokenizer(r: Path) -> None:
    from transformers import AutoTokenizer

    base = json.loads((r / "model_config.json").read_text())["model_config"]["model_name_or_path"]
    shutil.rmtree(r / "checkpoint-12" / "tokenizer")
    AutoTokenizer.from_pretrained(base).save_pretrained(r / "checkpoint-12" / "tokenizer")


REFUSALS = {
    "no_model_config": (lambda r: (r / "model_config.json").unlink(), "has no model_config.json"),
    "no_head": (_no_head, "has no rm_head.weight"),
    "no_reward_tokens": (_plain_tokenizer, "has no <|VQ_reward|> token"),
    "another_template": (lambda r: _edit_config(r, "data_config", "prompt_template_type", "detailed"),
                         "data_config.prompt_template_type is 'detailed'"),
    "three_outputs": (lambda r: _edit_config(r, "model_config", "output_dim", 3), "model_config.output_dim is 3"),
    "other_fps": (lambda r: _edit_config(r, "data_config", "fps", 1.0), "data_config.fps is 1.0"),
    "raw_values": (lambda r: _edit_config(r, "inference_config", "", _DROP), "has no inference_config"),
    "other_norms": (lambda r: _edit_config(r, "inference_config", "VQ_std", 1.0), "VQ_mean/VQ_std are"),
    "hub_base": (lambda r: _edit_config(r, "model_config", "model_name_or_path", "Qwen/Qwen2-VL-2B-Instruct"),
                 "pass --base"),
    "no_checkpoint": (lambda r: shutil.rmtree(r / "checkpoint-12"), "has no checkpoint-<step> folder"),
    "lora_only": (lambda r: ((r / "checkpoint-12" / "model.pth").rename(r / "checkpoint-12" /
                                                                         "adapter_model.safetensors")),
                  "only the LoRA save"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_converter_refuses_with_one_line(case: str, release: Path, tmp_path: Path) -> None:
    from service.errors import ModelLoadError
    from service.families.videoalign.convert import convert_videoalign

    copy = _copy(release, tmp_path)
    damage, reason = REFUSALS[case]
    damage(copy)
    with pytest.raises(ModelLoadError) as info:
        convert_videoalign(copy, tmp_path / "out")
    assert reason in info.value.message and "\n" not in info.value.message
    assert not (tmp_path / "out" / "config.json").exists()


def test_cli_refusal_is_exit_2_one_stderr_line_no_traceback(release: Path, tmp_path: Path) -> None:
    copy = _copy(release, tmp_path)
    _no_head(copy)
    out = subprocess.run([sys.executable, "-m", "clients.cli", "convert-videoalign", "--release", str(copy),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("lift convert-videoalign:")]
    assert len(lines) == 1 and "has no rm_head.weight" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_checkpoint_without_the_head_is_refused_before_any_engine(converted: Path, tmp_path: Path) -> None:
    from service.critic import Critic
    from service.errors import ModelLoadError

    copy = tmp_path / "c"
    shutil.copytree(converted, copy)
    (copy / "rm_head.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no rm_head.safetensors"):
        Critic.from_pretrained(copy, engine="transformers", critic="videoalign")


def test_the_vllm_engine_is_asked_for_a_pooling_model_with_1d_positions(converted: Path) -> None:
    from service.critic import Critic
    from service.families.videoalign import ARCHITECTURE, VLLM_MODEL_PATH

    critic = Critic.from_pretrained(converted, engine="vllm", critic="videoalign")  # not started
    args = critic.engine.engine_args
    assert args["runner"] == "pooling" and args["convert"] == "embed"
    assert args["pooler_config"] == {"pooling_type": "ALL", "use_activation": False}
    assert args["hf_overrides"] == {"architectures": [ARCHITECTURE]}
    assert args["model_class_overrides"] == {ARCHITECTURE: VLLM_MODEL_PATH}
    ref = Critic.from_pretrained(converted, engine="transformers", critic="videoalign")
    assert ref.engine.positions == "sequential"


def test_a_tied_flat_base_as_qwen2_vl_2b_ships(release: Path, tmp_path: Path) -> None:
    """Qwen2-VL-2B-Instruct's config.json is flat (transformers 4.41: the text model's keys at the top, rope_scaling
    "mrope") and ties lm_head to the embedding, so the release's model.pth holds the same tensor twice: the output
    keeps one, ties it, and loads."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from service.families.videoalign.convert import convert_videoalign

    copy = _copy(release, tmp_path)
    base = Path(json.loads((copy / "model_config.json").read_text())["model_config"]["model_name_or_path"])
    nested = json.loads((base / "config.json").read_text())
    text = nested.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {**nested, **{k: v for k, v in text.items() if k not in ("model_type", "layer_types")},
            "rope_theta": rope["rope_theta"], "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
            "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    flat.pop("dtype", None)
    (base / "config.json").write_text(json.dumps(flat))
    state_file = copy / "checkpoint-12" / "model.pth"
    state = torch.load(state_file, weights_only=True)
    state["base_model.model.lm_head.weight"] = state["base_model.model.model.embed_tokens.weight"]  # tied
    torch.save(state, state_file)
    out = convert_videoalign(copy, tmp_path / "out").out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 671 and config["tie_word_embeddings"] is True and "text_config" not in config
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    assert model.config.text_config.vocab_size == 671
    embed = state["base_model.model.model.embed_tokens.weight"]
    assert torch.equal(model.get_input_embeddings().weight, embed)
    assert torch.equal(model.lm_head.weight, embed)

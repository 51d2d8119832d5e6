"""The 40B shape of the vila family (VILA1.5-40b: InternViT-6B + Yi-34B, hermes-2) against VILA's own source.

Where VILA's code is the oracle, it is written out here from NVlabs/VILA at commit 1c88211 (2024-05-13, the
VILA-1.5 code of the 40B release), file and symbol named at each place, so the expected values do not come from
the code under test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from service.families.vila.prompt import CHAT_TEMPLATES, lift_query
from service.media import VideoFrames
from service.rubric import DIMENSIONS, LABELS


@pytest.fixture(scope="module")
def vila_40b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from service.families.vila.convert import convert_vila
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp("vila-40b")
    src = build_tiny_vila(root / "src", seed=1, with_lora=True, vision="internvit")
    convert_vila(src, root / "critic", src / "lora")
    return src, root / "critic"


@pytest.fixture(scope="module")
def family(vila_40b: tuple[Path, Path]):
    from service.families import load_family

    return load_family(vila_40b[1])


@pytest.fixture(scope="module")
def reference(vila_40b: tuple[Path, Path]):
    from service.families.vila.reference import load_reference

    return load_reference(vila_40b[1])


def video(seed: int = 0, n: int = 8) -> VideoFrames:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 90, 120, 3), dtype=np.uint8)
    return VideoFrames(frames=frames, indices=list(range(n)), total_frames=n, fps=8.0, duration_s=n / 8)


# ---- hermes-2: the conversation text ----------------------------------------------------------------
def vila_hermes_2_prompt(user_message: str) -> str:
    """VILA's own template code, written out. llava/conversation.py:
        hermes_2 = Conversation(system="<|im_start|>system\\nAnswer the questions.",
                                roles=("<|im_start|>user\\n", "<|im_start|>assistant\\n"),
                                sep_style=SeparatorStyle.MPT, sep="<|im_end|>", messages=(), ...)
    Conversation.get_prompt, SeparatorStyle.MPT branch:
        ret = self.system + self.sep
        for role, message in messages:
            if message: ret += role + message + self.sep
            else:       ret += role
    with the messages LiFT's inference appends: (roles[0], query), (roles[1], None)."""
    system = "<|im_start|>system\nAnswer the questions."
    roles, sep = ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"
    ret = system + sep
    for role, message in [(roles[0], user_message), (roles[1], None)]:
        ret += role + message + sep if message else role
    return ret


def test_hermes_2_text_equals_vilas_template() -> None:
    query = lift_query("a red car driving on the road", "motion_smoothness", 2)
    ours = CHAT_TEMPLATES["hermes-2"].render(query)
    assert ours == vila_hermes_2_prompt(query)
    # and spelled out, for two frames (the string VILA's code above produces):
    assert ours == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\n<image>\na red car driving on the road Please identify the motion issues in "
        "this video, focusing on the continuity and smoothness of actions, as well as their coherence and "
        "adherence to the laws of physics.<|im_end|>"
        "<|im_start|>assistant\n")
    for d in DIMENSIONS:  # every question, eight frames
        q = lift_query("a cat", d.name, 8)
        assert CHAT_TEMPLATES["hermes-2"].render(q) == vila_hermes_2_prompt(q)


def test_40b_prompt_ids_and_labels(family) -> None:
    """hermes-2 from the checkpoint; the Yi-like tokenizer adds no BOS; pieces tokenized as VILA does."""
    tok = family.tokenizer
    assert family.template.name == "hermes-2" and family.tokens_per_image == 16
    ids = family.vllm_prompt("a red car", "semantic_consistency", video()).token_ids
    pieces = family.template.render(lift_query("a red car", "semantic_consistency", 8)).split("<image>")
    expected = list(tok(pieces[0]).input_ids)
    for piece in pieces[1:]:
        expected += [family.image_token_id] + list(tok(piece).input_ids)
    assert ids == expected and ids.count(family.image_token_id) == 8
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS in front, as Yi's tokenizer
    assert tok.decode(ids[-3:]) == "<|im_start|>assistant\n"
    labels = family.label_token_ids()
    assert set(labels) == set(LABELS)
    for label, seq in labels.items():
        assert tok.decode(seq) == label  # hermes-2 answers right after "assistant\n", no space
    assert len(labels["Good"]) == 1 and len(labels["Normal"]) > 1


def test_40b_hf_prompt_expands_images(family) -> None:
    p = family.hf_prompt("a red car", "video_fidelity", video(n=5))
    assert p["pixel_values"].shape == (5, 3, 112, 112)
    assert p["input_ids"][0].tolist().count(family.image_token_id) == 5 * 16


# ---- InternViT: the reference tower is VILA's InternVisionTower --------------------------------------
def vila_intern_vit_features(w: dict[str, torch.Tensor], pixel_values: torch.Tensor, heads: int, layers: int,
                             select_layer: int, select_feature: str, patch: int = 14) -> torch.Tensor:
    """VILA's InternVisionTower forward in eval mode, written out from
    llava/model/multimodal_encoder/intern/modeling_intern_vit.py (InternRMSNorm, InternVisionEmbeddings,
    InternAttention._naive_attn, InternMLP, InternVisionEncoderLayer, InternVisionEncoder: hidden_states =
    (embeddings, layer 1, ..., layer L)) and vision_encoder.py VisionTower.feature_select."""

    def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:  # InternRMSNorm
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)

    b = pixel_values.shape[0]
    emb = F.conv2d(pixel_values, w["embeddings.patch_embedding.weight"], w["embeddings.patch_embedding.bias"],
                   stride=patch).flatten(2).transpose(1, 2)
    h = torch.cat([w["embeddings.class_embedding"].expand(b, 1, -1), emb], dim=1) + w["embeddings.position_embedding"]
    states = [h]
    for i in range(layers):
        lw = {k.removeprefix(f"encoder.layers.{i}."): v for k, v in w.items() if k.startswith(f"encoder.layers.{i}.")}
        x = rms(h, lw["norm1.weight"])
        bsz, n, c = x.shape
        qkv = F.linear(x, lw["attn.qkv.weight"], lw.get("attn.qkv.bias"))
        qkv = qkv.reshape(bsz, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        _, hh, nn_, dd = q.shape
        q = rms(q.transpose(1, 2).flatten(-2, -1), lw["attn.q_norm.weight"]).view(bsz, nn_, hh, dd).transpose(1, 2)
        k = rms(k.transpose(1, 2).flatten(-2, -1), lw["attn.k_norm.weight"]).view(bsz, nn_, hh, dd).transpose(1, 2)
        attn = ((q * dd**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = F.linear((attn @ v).transpose(1, 2).reshape(bsz, n, c), lw["attn.proj.weight"], lw["attn.proj.bias"])
        h = h + x * lw["ls1"]
        y = F.linear(F.gelu(F.linear(rms(h, lw["norm2.weight"]), lw["mlp.fc1.weight"], lw["mlp.fc1.bias"])),
                     lw["mlp.fc2.weight"], lw["mlp.fc2.bias"])
        h = h + y * lw["ls2"]
        states.append(h)
    features = states[select_layer]
    return features[:, 1:] if select_feature == "patch" else features  # VisionTower.feature_select


def test_reference_tower_equals_vilas_intern_vit(vila_40b: tuple[Path, Path], family, reference) -> None:
    import json

    src, _ = vila_40b
    raw = json.loads((src / "vision_tower" / "config.json").read_text())
    top = json.loads((src / "config.json").read_text())
    assert (top["mm_vision_select_layer"], top["mm_vision_select_feature"]) == (-1, "patch")  # VILA1.5-40b's
    weights = load_file(str(src / "vision_tower" / "model.safetensors"))
    pixels = family.hf_prompt("x", "video_fidelity", video(seed=3, n=3))["pixel_values"]
    with torch.inference_mode():
        ours = reference.vision_tower(pixels)
        vila = vila_intern_vit_features(weights, pixels, raw["num_attention_heads"], raw["num_hidden_layers"],
                                        top["mm_vision_select_layer"], top["mm_vision_select_feature"])
    assert ours.shape == (3, 64, 64)  # 8 x 8 patches, CLS dropped, width 64
    torch.testing.assert_close(ours, vila, rtol=0, atol=2e-5)
    # a different layer really is a different feature (the selection matters)
    with torch.inference_mode():
        second_last = vila_intern_vit_features(weights, pixels, raw["num_attention_heads"], raw["num_hidden_layers"],
                                               -2, "patch")
    assert (second_last - vila).abs().max() > 1e-2


def test_reference_splices_like_vila(family, reference) -> None:
    """Image-token expansion (ours) == VILA's prepare_inputs_labels_for_multimodal splice (one sentinel per image)."""
    v = video(seed=4)
    hf = family.hf_prompt("a dog runs", "motion_smoothness", v)
    short = family.vllm_prompt("a dog runs", "motion_smoothness", v).token_ids
    with torch.inference_mode():
        ours = reference(**hf).logits[0]
        feats = reference.encode_images(hf["pixel_values"])
        embed = reference.llm.get_input_embeddings()
        parts, chunk, k = [], [], 0
        for t in short + [None]:
            if t == family.image_token_id or t is None:
                if chunk:
                    parts.append(embed(torch.tensor(chunk)))
                chunk = []
                if t == family.image_token_id:
                    parts.append(feats[k])
                    k += 1
            else:
                chunk.append(t)
        vila = reference.llm(inputs_embeds=torch.cat(parts)[None]).logits[0]
    real = reference.real_vocab_size
    torch.testing.assert_close(ours[:, :real], vila[:, :real], rtol=0, atol=1e-5)


def test_checkpoint_names_round_trip(vila_40b: tuple[Path, Path], reference) -> None:
    """The reference's state under the converted names is exactly the checkpoint (what training saves back)."""
    from service.families.vila.intern_vit import from_transformers, to_transformers

    critic = vila_40b[1]
    files = {k: v for f in sorted(critic.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    state = reference.checkpoint_state_dict()
    assert state.keys() == files.keys()
    assert all(torch.equal(state[k], files[k]) for k in files)
    tower = {k.removeprefix("vision_tower."): v for k, v in files.items() if k.startswith("vision_tower.")}
    mapped = dict(p for name, t in tower.items() for p in to_transformers(name, t))
    assert "encoder.layer.0.attention.q_proj.weight" in mapped and len(mapped) == len(tower) + 2 * 3  # qkv -> 3
    back = from_transformers(mapped)
    assert back.keys() == tower.keys() and all(torch.equal(back[k], tower[k]) for k in tower)


def test_families_never_import_the_tiny_critics() -> None:
    """One direction: service.tiny_critics uses the families, never the other way round."""
    code = ("import sys, pkgutil, importlib, service.families as f\n"
            "for m in pkgutil.walk_packages(f.__path__, 'service.families.'):\n"
            "    if not m.name.endswith(('vllm_model', 'plugin')): importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m.startswith(('service.tiny_critic', 'service.tiny_critics'))]\n"
            "assert not bad, bad\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    import re

    families = Path(__file__).resolve().parents[2] / "service" / "families"
    importing = re.compile(r"^\s*(from|import)\s+service\.tiny_critic", re.M)
    assert not [p for p in families.rglob("*.py") if importing.search(p.read_text())]

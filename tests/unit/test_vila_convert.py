"""`lift convert-vila` on both LiFT-Critic shapes (13B: SigLIP + Llama-2, 40B: InternViT + Yi-like): the merge is
base + (alpha/r) B A (and agrees with peft's own merge), every tensor survives the round trip under VILA's names,
the template and the tower's feature layer / CLS rule / preprocessing come from the checkpoint, and a missing or
mismatched part is refused with a ModelLoadError that names it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from service.errors import ModelLoadError
from service.families.vila.convert import convert_vila

LORA_ALPHA, LORA_R = 16, 8


# what each tiny release must convert to (the real ones: 13B 27x27 -> 196 tokens, 40B 32x32 -> 256)
EXPECTED = {
    "siglip": dict(template="vicuna_v1", layer=-2, strategy="full", tokens=25, size=126, mean=[0.5] * 3,
                   vision_type="siglip_vision_model", processor="SiglipImageProcessor"),
    "internvit": dict(template="hermes-2", layer=-1, strategy="default", tokens=16, size=112,
                      mean=[0.485, 0.456, 0.406], vision_type="internvl_vision", processor="CLIPImageProcessor"),
}


@pytest.fixture(scope="module", params=["siglip", "internvit"], ids=["13b", "40b"])
def vision(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny_vila(tmp_path_factory: pytest.TempPathFactory, vision: str) -> Path:
    from service.tiny_critics.vila import build_tiny_vila

    return build_tiny_vila(tmp_path_factory.mktemp("vila") / f"VILA1.5-tiny-{vision}", seed=3, with_lora=True,
                           vision=vision)


@pytest.fixture(scope="module")
def converted(tiny_vila: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "critic"
    convert_vila(tiny_vila, out, tiny_vila / "lora")
    return out


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def lora_pairs(lora_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    raw = load_file(str(lora_dir / "adapter_model.safetensors"))
    pairs = {}
    for key in raw:
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            pairs[module] = (raw[key], raw[key.replace("lora_A", "lora_B")])
    return pairs


def test_lora_release_layout(tiny_vila: Path) -> None:
    cfg = json.loads((tiny_vila / "lora" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (LORA_R, LORA_ALPHA)
    # as LiFT's four releases: an empty dict of about a kilobyte (theirs ~900 bytes; LiFT froze the projector)
    non_lora = tiny_vila / "lora" / "non_lora_trainables.bin"
    assert torch.load(non_lora, weights_only=True) == {} and non_lora.stat().st_size < 2048
    assert len(lora_pairs(tiny_vila / "lora")) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down


def test_empty_non_lora_replaces_nothing(tiny_vila: Path, converted: Path) -> None:
    """The common real case: nothing beside the LoRA was trained, so the base's projector goes through as it is."""
    provenance = json.loads((converted / "lift_critic.json").read_text())
    assert provenance["replaced_tensors"] == []
    base = load_file(str(tiny_vila / "mm_projector" / "model.safetensors"))
    out = read_all(converted)
    assert all(torch.equal(out[f"mm_projector.{k}"], v) for k, v in base.items())


def test_projector_in_non_lora_replaces_the_base_projector(tmp_path: Path, vision: str) -> None:
    """A release whose projector was trained too (`non_lora="projector"`): its tensors replace the base's."""
    from service.tiny_critics.vila import build_tiny_vila

    src = build_tiny_vila(tmp_path / "src", seed=5, with_lora=True, vision=vision, non_lora="projector")
    trained = {k.removeprefix("base_model.model."): v
               for k, v in torch.load(src / "lora" / "non_lora_trainables.bin", weights_only=True).items()}
    assert sorted(trained) == [f"mm_projector.layers.{i}.{p}" for i in (1, 2, 4) for p in ("bias", "weight")]
    report = convert_vila(src, tmp_path / "critic", src / "lora")
    assert sorted(report.replaced_tensors) == sorted(trained)
    out = read_all(tmp_path / "critic")
    base = load_file(str(src / "mm_projector" / "model.safetensors"))
    for name, value in trained.items():
        assert torch.equal(out[name], value) and not torch.equal(value, base[name.removeprefix("mm_projector.")])


def test_merged_weights_equal_base_plus_scaled_BA(tiny_vila: Path, converted: Path) -> None:
    base = load_file(str(tiny_vila / "llm" / "model.safetensors"))
    out = read_all(converted)
    pairs = lora_pairs(tiny_vila / "lora")
    for module, (a, b) in pairs.items():
        expected = base[module.removeprefix("llm.") + ".weight"] + (LORA_ALPHA / LORA_R) * (b @ a)
        got = out[module + ".weight"]
        assert not torch.equal(got, base[module.removeprefix("llm.") + ".weight"])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_merge_agrees_with_peft_merge_and_unload(tiny_vila: Path, converted: Path) -> None:
    from peft import PeftModel
    from torch import nn
    from transformers import LlamaForCausalLM

    class VilaShaped(nn.Module):  # VILA's attribute names, so peft resolves the release's keys
        def __init__(self) -> None:
            super().__init__()
            self.llm = LlamaForCausalLM.from_pretrained(str(tiny_vila / "llm"), dtype=torch.float32)

    merged = PeftModel.from_pretrained(VilaShaped(), str(tiny_vila / "lora")).merge_and_unload()
    out = read_all(converted)
    for key, value in merged.llm.state_dict().items():
        got = out[f"llm.{key}"]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            got = got[: value.shape[0]]
        torch.testing.assert_close(got, value, rtol=0, atol=1e-6, msg=key)


def test_every_tensor_round_trips(tiny_vila: Path, converted: Path, vision: str) -> None:
    out = read_all(converted)
    cfg = json.loads((converted / "config.json").read_text())
    vocab, padded = cfg["vila_text_vocab_size"], cfg["text_config"]["vocab_size"]
    assert padded % 64 == 0 and padded > cfg["image_token_index"] >= vocab
    lora_modules = {m + ".weight" for m in lora_pairs(tiny_vila / "lora")}
    non_lora = {k.removeprefix("base_model.model."): v
                for k, v in torch.load(tiny_vila / "lora" / "non_lora_trainables.bin", weights_only=True).items()}
    expected_names = set()
    for part in ("llm", "vision_tower", "mm_projector"):
        for key, value in load_file(str(tiny_vila / part / "model.safetensors")).items():
            name = f"{part}.{key}"
            expected_names.add(name)
            got = out[name]
            assert got.dtype == value.dtype, name
            if name in lora_modules:
                continue  # checked against base + s B A above
            if name in non_lora:
                assert torch.equal(got, non_lora[name]), name
            elif key in ("model.embed_tokens.weight", "lm_head.weight"):
                assert torch.equal(got[:vocab], value) and not got[vocab:].any(), name
            else:
                assert torch.equal(got, value), name
    assert set(out) == expected_names  # nothing dropped, nothing invented
    tower_names = [k for k in out if k.startswith("vision_tower.")]
    if vision == "siglip":
        assert all(k.startswith("vision_tower.vision_model.") for k in tower_names)
    else:  # VILA's InternVisionModel names, which vLLM's intern_vit loads as they are
        assert "vision_tower.encoder.layers.0.attn.qkv.weight" in tower_names
        assert "vision_tower.embeddings.class_embedding" in tower_names
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == expected_names


def test_without_lora_the_base_is_copied_exactly(tiny_vila: Path, tmp_path: Path, vision: str) -> None:
    report = convert_vila(tiny_vila, tmp_path / "plain")
    assert report.merged_lora_modules == [] and report.chat_template == EXPECTED[vision]["template"]
    out = read_all(tmp_path / "plain")
    base = load_file(str(tiny_vila / "llm" / "model.safetensors"))
    for key, value in base.items():
        got = out[f"llm.{key}"]
        assert torch.equal(got[: value.shape[0]], value), key


def test_converted_config_tokenizer_and_processor(converted: Path, vision: str) -> None:
    from transformers import AutoTokenizer, LlavaConfig, LlavaProcessor

    from service.families import detect_family

    want = EXPECTED[vision]
    cfg = LlavaConfig.from_pretrained(str(converted))
    assert cfg.architectures == ["LiftVilaForConditionalGeneration"] and detect_family(converted) == "vila"
    # the template is read from the checkpoint (40B: ChatML tokenizer / InternViT tower), not given as a flag
    assert cfg.vila_chat_template == want["template"] and cfg.mm_projector_type == "mlp_downsample"
    assert cfg.vision_config.model_type == want["vision_type"]
    assert cfg.vision_feature_layer == want["layer"] and cfg.vision_feature_select_strategy == want["strategy"]
    assert cfg.image_seq_length == want["tokens"]  # 13B: 9x9 -> padded 10x10 -> 5x5; 40B: 8x8 -> 4x4
    tok = AutoTokenizer.from_pretrained(str(converted))
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_index
    proc = LlavaProcessor.from_pretrained(str(converted), backend="pil")
    ip = proc.image_processor
    assert type(ip).__name__.removesuffix("Pil") == want["processor"]
    assert ip.size == {"height": want["size"], "width": want["size"]} and list(ip.image_mean) == want["mean"]
    assert not getattr(ip, "do_center_crop", False)  # VILA resizes to the square, it never crops
    provenance = json.loads((converted / "lift_critic.json").read_text())
    assert provenance["family"] == "vila" and provenance["merged_lora_modules"] == 14
    assert provenance["chat_template"] == want["template"]


def test_internvit_preprocessing_is_vilas_own(tmp_path: Path) -> None:
    """The converted 40B processor equals VILA's InternVisionPreprocessor: its transform written out below from
    NVlabs/VILA llava/model/multimodal_encoder/intern_encoder.py `build_transform` (commit 1c88211), after
    llava/mm_utils.py `process_image`'s PIL resize to the processor's size."""
    import numpy as np
    import torchvision.transforms as T
    from PIL import Image
    from torchvision.transforms.functional import InterpolationMode
    from transformers import LlavaProcessor

    from service.tiny_critics.vila import build_tiny_vila

    src = build_tiny_vila(tmp_path / "src", seed=0, vision="internvit")
    convert_vila(src, tmp_path / "critic")
    processor = LlavaProcessor.from_pretrained(str(tmp_path / "critic"), backend="pil").image_processor
    size = 112  # VILA hardcodes 448, InternViT-6B's image_size; the converter takes the tower's
    vila = T.Compose([
        T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
        T.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    rng = np.random.default_rng(0)
    for shape in [(90, 120, 3), (480, 270, 3), (112, 112, 3)]:
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        expected = vila(image.resize((size, size)))
        got = processor(image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_vila_whole_model_tower_names_in_non_lora_trainables(tmp_path: Path) -> None:
    """A LoRA release that also trained the tower names it as VILA's whole model does
    (`vision_tower.vision_tower.X`); the converted checkpoint says `vision_tower.X`."""
    from service.tiny_critics.vila import build_tiny_vila

    src = build_tiny_vila(tmp_path / "src", seed=0, with_lora=True, vision="internvit")
    path = src / "lora" / "non_lora_trainables.bin"
    ls1 = torch.full((64,), 0.25)
    torch.save({**torch.load(path, weights_only=True),
                "base_model.model.vision_tower.vision_tower.encoder.layers.1.ls1": ls1}, path)
    report = convert_vila(src, tmp_path / "critic", src / "lora")
    assert "vision_tower.encoder.layers.1.ls1" in report.replaced_tensors
    assert torch.equal(read_all(tmp_path / "critic")["vision_tower.encoder.layers.1.ls1"], ls1)


# ---- refusals -------------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(path: Path, fn) -> None:
    tensors = load_file(str(path))
    save_file(fn(tensors), str(path), metadata={"format": "pt"})


def _break_missing_llm(d: Path) -> None:
    shutil.rmtree(d / "llm")


def _break_missing_top_config(d: Path) -> None:
    (d / "config.json").unlink()


def _break_projector_type(d: Path) -> None:
    (d / "mm_projector" / "config.json").write_text(json.dumps({"mm_projector_type": "linear"}))


def _break_projector_shape(d: Path) -> None:
    _rewrite(d / "mm_projector" / "model.safetensors",
             lambda t: {**t, "layers.2.weight": torch.zeros(128, 200), "layers.1.weight": torch.zeros(200)})


def _break_projector_missing_tensor(d: Path) -> None:
    _rewrite(d / "mm_projector" / "model.safetensors", lambda t: {k: v for k, v in t.items() if k != "layers.4.bias"})


def _break_vision_tower_kind(d: Path) -> None:
    cfg = json.loads((d / "vision_tower" / "config.json").read_text())
    (d / "vision_tower" / "config.json").write_text(json.dumps({**cfg, "model_type": "clip_vision_model"}))


def _set_top(d: Path, **values: object) -> None:
    top = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**top, **values}))


def _break_select_feature(d: Path) -> None:  # the feature that does not fit the tower (CLS or not)
    cfg = json.loads((d / "vision_tower" / "config.json").read_text())
    _set_top(d, mm_vision_select_feature="cls_patch" if cfg["model_type"] == "intern_vit_6b" else "patch")


def _break_select_layer(d: Path) -> None:
    _set_top(d, mm_vision_select_layer=-7)


def _break_s2(d: Path) -> None:
    _set_top(d, s2=True)


def _break_tower_missing_tensor(d: Path) -> None:
    _rewrite(d / "vision_tower" / "model.safetensors",
             lambda t: {k: v for k, v in t.items() if k != "encoder.layers.2.attn.qkv.weight"})


def _break_tower_shape(d: Path) -> None:
    _rewrite(d / "vision_tower" / "model.safetensors",
             lambda t: {**t, "encoder.layers.0.attn.qkv.weight": torch.zeros(128, 64)})


def _break_tower_unknown_tensor(d: Path) -> None:
    _rewrite(d / "vision_tower" / "model.safetensors", lambda t: {**t, "head.weight": torch.zeros(2, 64)})


def _break_tower_norm_type(d: Path) -> None:
    cfg = json.loads((d / "vision_tower" / "config.json").read_text())
    (d / "vision_tower" / "config.json").write_text(json.dumps({**cfg, "norm_type": "layer_norm"}))


def _break_truncated_weights(d: Path) -> None:
    f = d / "llm" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def _break_lora_config(d: Path) -> None:
    (d / "lora" / "adapter_config.json").unlink()


def _break_non_lora(d: Path) -> None:
    (d / "lora" / "non_lora_trainables.bin").unlink()


def _break_lora_weights(d: Path) -> None:
    (d / "lora" / "adapter_model.safetensors").unlink()


def _break_lora_for_other_base(d: Path) -> None:  # A made for a wider model
    _rewrite(d / "lora" / "adapter_model.safetensors",
             lambda t: {k: (torch.zeros(v.shape[0], 256) if k.endswith("q_proj.lora_A.weight") else v) for k, v in t.items()})


def _break_lora_unknown_module(d: Path) -> None:
    _rewrite(d / "lora" / "adapter_model.safetensors",
             lambda t: {k.replace("layers.1.", "layers.7."): v for k, v in t.items()})


def _break_lora_half_pair(d: Path) -> None:
    _rewrite(d / "lora" / "adapter_model.safetensors",
             lambda t: {k: v for k, v in t.items() if not k.endswith("layers.0.mlp.up_proj.lora_B.weight")})


def _break_non_lora_shape(d: Path) -> None:
    path = d / "lora" / "non_lora_trainables.bin"
    t = torch.load(path, weights_only=True)
    t["base_model.model.mm_projector.layers.4.weight"] = torch.zeros(3, 3)
    torch.save(t, path)


def _break_non_lora_unknown_part(d: Path) -> None:
    path = d / "lora" / "non_lora_trainables.bin"
    torch.save({**torch.load(path, weights_only=True), "base_model.model.rope_scaler.weight": torch.zeros(2)}, path)


BOTH = ("siglip", "internvit")


BREAKS = [
    (_break_missing_llm, "llm/", BOTH),
    (_break_missing_top_config, "config.json", BOTH),
    (_break_projector_type, "projector type 'linear'", BOTH),
    (_break_projector_shape, "mm_projector layers.1.weight has shape (200,)", BOTH),
    (_break_projector_missing_tensor, "mm_projector lacks", BOTH),
    (_break_vision_tower_kind, "only SigLIP (VILA1.5-13b) and InternViT", BOTH),
    (_break_select_feature, "only 'cls_patch' works", ("siglip",)),
    (_break_select_feature, "only 'patch' works", ("internvit",)),
    (_break_select_layer, "mm_vision_select_layer -7 selects no block", BOTH),
    (_break_s2, "s2 (multi-scale)", BOTH),
    (_break_tower_missing_tensor, "vision_tower lacks 1 tensors", ("internvit",)),
    (_break_tower_shape, "vision_tower encoder.layers.0.attn.qkv.weight has shape (128, 64)", ("internvit",)),
    (_break_tower_unknown_tensor, "vision_tower has an unexpected tensor 'head.weight'", ("internvit",)),
    (_break_tower_norm_type, "RMSNorm only", ("internvit",)),
    (_break_truncated_weights, "cannot read", BOTH),
    (_break_lora_config, "adapter_config.json", BOTH),
    (_break_non_lora, "non_lora_trainables.bin", BOTH),
    (_break_lora_weights, "adapter_model.safetensors", BOTH),
    (_break_lora_for_other_base, "does not fit", BOTH),
    (_break_lora_unknown_module, "base does not have", BOTH),
    (_break_lora_half_pair, "lora_B missing", BOTH),
    (_break_non_lora_shape, "non_lora_trainables.bin: mm_projector.layers.4.weight", BOTH),
    (_break_non_lora_unknown_part, "names no part", BOTH),
]


@pytest.mark.parametrize(("vision", "breaker", "message"), [
    pytest.param(v, b, m, id=f"{'13b' if v == 'siglip' else '40b'}-{b.__name__.removeprefix('_break_')}")
    for b, m, visions in BREAKS for v in visions], indirect=["vision"])
def test_broken_inputs_are_refused_clearly(tiny_vila: Path, vision: str, tmp_path: Path, breaker, message: str) -> None:
    base = _copy(tiny_vila, tmp_path / "base")
    breaker(base)
    out = tmp_path / "out"
    # base-only breakages are checked without the LoRA (its projector tensors would replace the broken ones)
    lora = base / "lora" if "lora" in breaker.__name__ else None
    with pytest.raises(ModelLoadError) as err:
        convert_vila(base, out, lora)
    assert message in err.value.message
    assert not (out / "config.json").exists()  # a failed conversion never looks like a model


def test_out_must_differ_from_base(tiny_vila: Path) -> None:
    with pytest.raises(ModelLoadError, match="must differ"):
        convert_vila(tiny_vila, tiny_vila)


def test_cli_convert_and_error_exit(tiny_vila: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clients.cli import main

    out = tmp_path / "cli-out"
    assert main(["convert-vila", "--base", str(tiny_vila), "--lora", str(tiny_vila / "lora"), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    with safe_open(str(sorted(out.glob("*.safetensors"))[0]), "pt") as f:
        assert any(k.startswith("llm.") for k in f.keys())
    assert main(["convert-vila", "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lift convert-vila: error: model_load_error: VILA folder not found")


def test_make_tiny_critic_cli_feeds_the_converter(tmp_path: Path, vision: str, capsys: pytest.CaptureFixture[str]) -> None:
    from clients.cli import main

    src = tmp_path / "tiny"
    assert main(["make-tiny-critic", str(src), "--family", "vila", "--vision", vision, "--with-lora"]) == 0
    assert capsys.readouterr().out.strip() == str(src)
    assert (src / "lora" / "non_lora_trainables.bin").is_file()
    report = convert_vila(src, tmp_path / "critic", src / "lora")
    assert report.chat_template == EXPECTED[vision]["template"] and len(report.merged_lora_modules) == 14
    assert main(["make-tiny-critic", str(tmp_path / "q"), "--vision", vision]) == 2  # qwen2_vl has no --vision
    assert "apply to --family vila only" in capsys.readouterr().err


def test_make_tiny_critic_release_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defaults as LiFT's real files: SentencePiece-only llm/, empty non_lora_trainables.bin; the flags give the
    other kinds (a tokenizer.json release, a trained projector in non_lora_trainables.bin)."""
    from clients.cli import main

    plain, other = tmp_path / "plain", tmp_path / "other"
    assert main(["make-tiny-critic", str(plain), "--family", "vila", "--with-lora"]) == 0
    assert (plain / "llm" / "tokenizer.model").is_file() and not (plain / "llm" / "tokenizer.json").exists()
    assert torch.load(plain / "lora" / "non_lora_trainables.bin", weights_only=True) == {}
    assert main(["make-tiny-critic", str(other), "--family", "vila", "--with-lora", "--llm-tokenizer", "bpe",
                 "--non-lora-trainables", "projector"]) == 0
    assert (other / "llm" / "tokenizer.json").is_file() and not (other / "llm" / "tokenizer.model").exists()
    assert len(torch.load(other / "lora" / "non_lora_trainables.bin", weights_only=True)) == 6
    report = convert_vila(other, tmp_path / "critic", other / "lora")
    assert len(report.replaced_tensors) == 6 and report.tokenizer == {"source": "llm/tokenizer.json",
                                                                        "checked_pieces": 0}
    capsys.readouterr()
    assert main(["make-tiny-critic", str(tmp_path / "x"), "--family", "vila", "--non-lora-trainables", "empty"]) == 2
    assert "add --with-lora" in capsys.readouterr().err
    assert main(["make-tiny-critic", str(tmp_path / "q"), "--llm-tokenizer", "bpe"]) == 2
    assert "--llm-tokenizer: apply to --family vila only" in capsys.readouterr().err

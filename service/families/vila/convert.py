"""VILA-1.5 release folders (+ LiFT-Critic's LoRA) -> one checkpoint that vLLM and the reference both load.

Input: VILA's layout, `BASE/{config.json, llm/, vision_tower/, mm_projector/}`, and optionally LiFT's LoRA
release `LORA/{adapter_config.json, adapter_model.safetensors, non_lora_trainables.bin}`.
Output (`OUT`):
  config.json        a LlavaConfig (vision_config: SigLIP's for 13B, transformers' InternVLVisionConfig for 40B;
                     Llama text_config, Yi-34B being a Llama) with architectures [LiftVilaForConditionalGeneration],
                     lift_family "vila", the chat template (chosen from the checkpoint: hermes-2 for the 40B's
                     ChatML tokenizer / InternViT tower, else vicuna_v1), vision_feature_layer and
                     vision_feature_select_strategy from VILA's mm_vision_select_layer / _feature ("cls_patch" ->
                     "full", "patch" -> "default" = CLS dropped), the real vocabulary size and the projector type;
                     written last, so a half-written folder is never mistaken for a model
  model-*.safetensors tensors named llm.* / vision_tower.* / mm_projector.layers.*, VILA's names (SigLIP's
                     under vision_tower.vision_model.*), one output shard per input shard: peak memory is about
                     one source shard (a 13B is 26 GB in fp16, more than a small host's RAM)
  tokenizer, processor  the LLM's tokenizer + `<image>`; LlavaProcessor(image processor, tokenizer): SigLIP's
                     from vision_tower/, or for InternViT VILA's own preprocessing (intern_vit.py), never the
                     tower folder's file. The real llm/ folders ship a SentencePiece tokenizer.model only, which
                     VILA loads slow (use_fast=False); the converted one is a fast tokenizer set up to give the
                     same ids (Yi: no '▁' prepended) and checked against VILA's slow tokenizer, restated on the
                     sentencepiece library, on every piece of LiFT's prompts and answers: a release it cannot
                     reproduce is refused, naming the piece (`LlmTokenizer`)
  generation_config.json, lift_critic.json (provenance)

The LoRA is merged as W += s * B @ A with s = alpha / r (alpha / sqrt(r) for rsLoRA; peft's rank_pattern /
alpha_pattern honoured), in float32, then cast back to the tensor's dtype. `non_lora_trainables.bin` tensors
replace the base's (in LiFT's releases it is an empty dict: the projector was frozen, nothing is replaced).
`<image>` gets a token id past the LLM's vocabulary; the embedding and lm_head get zero rows up to a multiple of
64 so that id is in-vocab (vLLM's logprob gather needs that), and both engines mask those rows' logits.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError
from service.families.vila import (ARCHITECTURE, CHAT_TEMPLATE_KEY, FAMILY_KEY, IMAGE_TOKEN, PROJECTOR_KEY,
                                   TEXT_VOCAB_KEY, vision_grid, vision_image_size)
from service.families.vila import intern_vit
from service.families.vila.prompt import CHAT_TEMPLATES, choose_template, tokenizer_probes

PARTS = ("llm", "vision_tower", "mm_projector")
VOCAB_MULTIPLE = 64


@dataclass
class ConversionReport:
    out_dir: Path
    chat_template: str
    image_token_id: int
    text_vocab_size: int
    padded_vocab_size: int
    num_tensors: int = 0
    merged_lora_modules: list[str] = field(default_factory=list)
    replaced_tensors: list[str] = field(default_factory=list)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # where it came from, how VILA loads it, pieces checked


# ---- reading VILA's folders -----------------------------------------------------------------------------
def _json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"missing {what}: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{what} {path} is not valid JSON: {exc}") from None


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ModelLoadError(f"missing weights: {folder} has no *.safetensors (or *.bin) files")
    return files


def _iter_tensors(path: Path) -> Iterator[tuple[str, Any]]:
    """Tensors of one shard, one at a time where the format allows (safetensors is read lazily)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot read {path}: {exc}") from None
    else:
        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from None
        yield from state.items()


def _canonical_key(key: str) -> str | None:
    """A key from a LoRA/LLaVA training dump -> `part.rest` (part in PARTS), or None if it names no part.

    Training wrappers prefix names differently (peft: `base_model.model.`, DeepSpeed/LLaVA: `model.`), and
    VILA's whole-model names carry its tower wrapper (`vision_tower.vision_tower.X`) where the tower's own
    files (and so the converted checkpoint) say `vision_tower.X`."""
    for prefix in ("base_model.model.", "base_model.", "model.", ""):
        if key.startswith(prefix) and key[len(prefix):].split(".", 1)[0] in PARTS:
            rest = key[len(prefix):]
            if rest.startswith("vision_tower.vision_tower."):
                rest = rest.removeprefix("vision_tower.")
            return rest
    return None


# ---- the vision tower: SigLIP (13B) or InternViT (40B) --------------------------------------------------
@dataclass
class VisionTower:
    kind: str  # "siglip" | "internvit"
    config: Any  # transformers' vision config stored in the converted config.json
    select_strategy: str  # LLaVA's vision_feature_select_strategy: "full" (all tokens) | "default" (CLS dropped)
    expected: dict[str, tuple[int, ...]] | None  # every tensor (tower-folder names) when checked here

    def local_key(self, key: str) -> str:
        if self.kind == "siglip":
            # transformers 5 saves SiglipVisionModel without the `vision_model.` prefix VILA's 4.x files carry
            return key if key.startswith("vision_model.") else f"vision_model.{key}"
        return key

    def image_processor(self, folder: Path) -> Any:
        if self.kind == "siglip":
            from transformers import SiglipImageProcessor

            return SiglipImageProcessor.from_pretrained(str(folder))
        from transformers import CLIPImageProcessor

        side = vision_image_size(self.config)
        # VILA's InternVisionPreprocessor: exact bicubic resize, /255, ImageNet normalisation, no crop
        return CLIPImageProcessor(do_resize=True, size={"height": side, "width": side}, resample=3,
                                  do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                  image_mean=list(intern_vit.IMAGENET_MEAN), image_std=list(intern_vit.IMAGENET_STD),
                                  do_convert_rgb=True)


def read_vision_tower(base: Path, top: dict[str, Any]) -> VisionTower:
    """What VILA's VisionTower would build from these folders, or a ModelLoadError saying why not."""
    raw = _json(base / "vision_tower" / "config.json", "vision tower config")
    kind = raw.get("model_type")
    # VILA's VisionTower reads the feature with getattr(args, "mm_vision_select_feature", "patch")
    select_feature = top.get("mm_vision_select_feature", "patch")
    if select_feature not in ("patch", "cls_patch"):
        raise ModelLoadError(f"mm_vision_select_feature {select_feature!r}: VILA-1.5 knows 'patch' and 'cls_patch'")
    if kind == "siglip_vision_model":
        from transformers import SiglipVisionConfig

        if select_feature != "cls_patch":
            raise ModelLoadError(f"mm_vision_select_feature {select_feature!r} on SigLIP: only 'cls_patch' works "
                                 "(SigLIP has no CLS token; 'patch' would drop a patch and break mlp_downsample's grid)")
        return VisionTower("siglip", SiglipVisionConfig.from_pretrained(str(base / "vision_tower")), "full", None)
    if kind == intern_vit.VILA_MODEL_TYPE:
        from transformers import InternVLVisionConfig

        if select_feature != "patch":
            raise ModelLoadError(f"mm_vision_select_feature {select_feature!r} on InternViT: only 'patch' works "
                                 "(the CLS token makes 1 + g*g tokens, which mlp_downsample cannot merge)")
        kwargs = intern_vit.transformers_vision_config(raw)
        config = InternVLVisionConfig(**kwargs, dtype=raw.get("torch_dtype") or raw.get("dtype") or "float32")
        return VisionTower("internvit", config, "default", intern_vit.vila_tensor_shapes(kwargs))
    raise ModelLoadError(f"vision tower {kind!r}: only SigLIP (VILA1.5-13b) and InternViT "
                         f"({intern_vit.VILA_MODEL_TYPE}, VILA1.5-40b) are supported")


# ---- the tokenizer: VILA's slow SentencePiece tokenizer, reproduced and checked ----------------------------
SPIECE_UNDERLINE = "\u2581"
# Yi-34B's shape: LiFT's copy of VILA's builder (CodeGoat24/LiFT llava/model/language_model/builder.py,
# build_llm_and_tokenizer) sends an LLM with 60 layers and 56 heads, or a path containing "yi", to the Yi branch.
YI_34B_LAYERS_HEADS = (60, 56)


@dataclass(frozen=True)
class TokenizerSettings:
    """How VILA loads llm/'s SentencePiece tokenizer, and the fast tokenizer's options that match it.

    VILA-1.5's builder (LiFT's copy, the code LiFT-Critic was trained and run with, transformers==4.37.2) loads
      Yi (VILA1.5-40b):      AutoTokenizer.from_pretrained(llm, use_fast=False)               legacy from the file
      else (VILA1.5-13b):    AutoTokenizer.from_pretrained(llm, use_fast=False, legacy=False)
    i.e. transformers 4.37's slow LlamaTokenizer. legacy=False turns the model's dummy prefix off and puts one '▁'
    in front of the text itself (none after a special token); legacy=True leaves SentencePiece as it is, so a Yi
    model (no dummy prefix) adds no '▁' anywhere. transformers 5 keeps no slow Llama tokenizer; its fast one
    matches when its Metaspace pre-tokenizer prepends '▁' the same way: `prepend_scheme` below. (One text it
    cannot follow under legacy=False: one that starts with a space, where Metaspace adds no second '▁'. No piece
    VILA tokenizes for LiFT starts with one; the check below runs on those pieces.)
    NVlabs/VILA's own tree at the 1.5 release (1c88211) tested only `"yi" in path`: LiFT's copy adds the shape.
    """

    branch: str  # "yi" | "llama": which of VILA's two branches loads this LLM
    legacy: bool
    dummy_prefix: bool  # the SentencePiece model's own normalizer_spec.add_dummy_prefix

    @property
    def prepend_scheme(self) -> str:
        if not self.legacy:
            return "first"
        return "always" if self.dummy_prefix else "never"

    @property
    def add_prefix_space(self) -> bool:  # transformers: True & legacy=False: "first", True: "always", False: "never"
        return self.prepend_scheme != "never"


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken as saved: {"content": ..., "lstrip": ...}
        return value.get("content")
    return value if isinstance(value, str) else None


class VilaSlowTokenizer:
    """VILA's tokenizer as VILA's builder loads it (transformers 4.37 `LlamaTokenizer`, use_fast=False), restated on
    the sentencepiece library: the reference the converted tokenizer is held to. What it does, per transformers
    v4.37.2 models/llama/tokenization_llama.py (`get_spm_processor`, `tokenize`, `_tokenize`,
    `build_inputs_with_special_tokens`) and tokenization_utils.py (`tokenize`: the text is split on added and
    special tokens first):
      legacy=False: the model's add_dummy_prefix is turned off; '▁' + text (any '▁' in the text read as a space);
        a piece that starts with '▁' or ' ' is encoded after the unk token's text, which is then cut off (so the
        model adds nothing and merges nothing across the start); a leading lone '▁' before a special token goes.
      legacy=True: each piece is encoded by the model as it is.
    Then BOS / EOS as add_bos_token / add_eos_token say (defaults True / False)."""

    def __init__(self, model_file: Path, config: dict[str, Any], legacy: bool) -> None:
        spm, model_pb2 = _sentencepiece()
        proto = model_pb2.ModelProto()
        proto.ParseFromString(model_file.read_bytes())
        self.dummy_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        if not legacy:
            proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.legacy = legacy
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))
        # LlamaTokenizer's defaults where the files name none
        named = {k: _token_content(config[k] if k in config else default) for k, default in
                 (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", None))}
        self.unk = named["unk_token"] or "<unk>"
        special = [*named.values(), *(_token_content(t) for t in config.get("additional_special_tokens") or [])]
        self.special = {t for t in special if t}
        self.added: dict[str, int] = {}
        self.strip: dict[str, tuple[bool, bool]] = {}  # AddedToken lstrip / rstrip
        for index, token in (config.get("added_tokens_decoder") or {}).items():
            content = _token_content(token)
            if content:
                self.added[content] = int(index)
                if isinstance(token, dict):
                    self.strip[content] = (bool(token.get("lstrip")), bool(token.get("rstrip")))
        for token in sorted(self.special - set(self.added)):
            piece = self.sp.piece_to_id(token)
            if self.sp.id_to_piece(piece) != token:
                raise ModelLoadError(f"llm/tokenizer_config.json names special token {token!r}, which is not a piece "
                                     "of llm/tokenizer.model")
            self.added[token] = piece
        import re

        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")")
        self._unk_len = len(self.sp.encode(self.unk))
        self.bos_id = self.added.get(named["bos_token"] or "")
        self.eos_id = self.added.get(named["eos_token"] or "")

    def _chunks(self, text: str) -> list[str]:
        parts = self._split.split(text) if self.added else [text]
        for i, part in enumerate(parts):
            if part in self.strip:
                lstrip, rstrip = self.strip[part]
                if lstrip and i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if rstrip and i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        return [p for p in parts if p]

    def ids(self, text: str) -> list[int]:
        if not self.legacy and text:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        out: list[int] = []
        for chunk in self._chunks(text):
            if chunk in self.added:
                out.append(self.added[chunk])
            elif self.legacy or not chunk.startswith((SPIECE_UNDERLINE, " ")):
                out += self.sp.encode(chunk)
            else:
                out += self.sp.encode(self.unk + chunk)[self._unk_len:]
        if (not self.legacy and len(out) > 1 and self.sp.id_to_piece(out[0]) == SPIECE_UNDERLINE
                and self._piece(out[1]) in self.special):
            out = out[1:]
        return [self.bos_id] * (self.add_bos and self.bos_id is not None) + out + \
            [self.eos_id] * (self.add_eos and self.eos_id is not None)

    def _piece(self, token_id: int) -> str:
        for content, i in self.added.items():
            if i == token_id:
                return content
        return self.sp.id_to_piece(token_id)


def _sentencepiece() -> tuple[Any, Any]:
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise ModelLoadError(f"llm/tokenizer.model is a SentencePiece model: reading it as VILA does needs the "
                             f"sentencepiece and protobuf packages ({exc})") from None
    return spm, sentencepiece_model_pb2


def vila_tokenizer_settings(text_config: Any, tokenizer_config: dict[str, Any],
                            dummy_prefix: bool) -> TokenizerSettings:
    """VILA's branch for this LLM. Yi-34B's shape selects the Yi branch as in VILA; so does a SentencePiece model
    without a dummy prefix (Yi's tokenizer family: Llama-2's has one), which is what a smaller Yi-style base shows.
    VILA's third test, "yi" somewhere in the folder's path, is about where files happen to sit and is not used.
    In the Yi branch legacy comes from tokenizer_config.json; transformers 4.37 reads a missing one as True."""
    shape = (getattr(text_config, "num_hidden_layers", None), getattr(text_config, "num_attention_heads", None))
    if shape == YI_34B_LAYERS_HEADS or not dummy_prefix:
        legacy = tokenizer_config.get("legacy")
        return TokenizerSettings("yi", True if legacy is None else bool(legacy), dummy_prefix)
    return TokenizerSettings("llama", False, dummy_prefix)


@dataclass
class LlmTokenizer:
    """llm/'s tokenizer: the fast one the converted checkpoint ships, and (for a SentencePiece release) VILA's slow
    one it must reproduce."""

    tokenizer: Any
    settings: TokenizerSettings | None = None
    reference: VilaSlowTokenizer | None = None
    checked: int = 0

    @classmethod
    def read(cls, llm: Path, text_config: Any) -> LlmTokenizer:
        from transformers import AutoTokenizer

        model_file = llm / "tokenizer.model"
        if not model_file.is_file():  # a tokenizer.json-only release: VILA loads this very file, nothing to reproduce
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(llm))
            except Exception as exc:  # noqa: BLE001 - any loader failure means: no usable tokenizer
                raise ModelLoadError(f"cannot load the tokenizer in {llm}: {exc}") from None
            return cls(_with_image_token(tokenizer))
        config_file = llm / "tokenizer_config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"{llm} has tokenizer.model but no tokenizer_config.json: VILA's builder finds no "
                                 "tokenizer without it, and add_bos_token / legacy come from it")
        config = _json(config_file, "tokenizer config")
        if (llm / "special_tokens_map.json").is_file():  # transformers 4.x: its entries win over tokenizer_config's
            config.update(_json(llm / "special_tokens_map.json", "special tokens map"))
        _, model_pb2 = _sentencepiece()
        proto = model_pb2.ModelProto()
        try:
            proto.ParseFromString(model_file.read_bytes())
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ModelLoadError(f"cannot read {model_file} as a SentencePiece model: {exc}") from None
        settings = vila_tokenizer_settings(text_config, config, bool(proto.normalizer_spec.add_dummy_prefix))
        reference = VilaSlowTokenizer(model_file, config, settings.legacy)
        with tempfile.TemporaryDirectory() as tmp:
            src, saved = Path(tmp) / "src", Path(tmp) / "saved"
            src.mkdir()
            for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
                if (llm / name).is_file():  # only these: a tokenizer.json beside them is not what VILA loads
                    shutil.copy(llm / name, src / name)
            from transformers import LlamaTokenizer

            try:
                tokenizer = LlamaTokenizer.from_pretrained(str(src), legacy=settings.legacy,
                                                           add_prefix_space=settings.add_prefix_space)
            except Exception as exc:  # noqa: BLE001
                raise ModelLoadError(f"cannot convert {model_file} to a fast tokenizer: {exc}") from None
            # what the engines will load: saved, settings pinned, loaded back
            _with_image_token(tokenizer).save_pretrained(str(saved))
            made = cls(None, settings, reference)
            made.pin(saved)
            made.tokenizer = AutoTokenizer.from_pretrained(str(saved))
        return made

    def pin(self, folder: Path) -> None:
        """Write the settings into a saved tokenizer_config.json: transformers rebuilds the pre-tokenizer from them
        on loading (its defaults are legacy=False, add_prefix_space=True)."""
        if self.settings is None:
            return
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config.update(legacy=self.settings.legacy, add_prefix_space=self.settings.add_prefix_space)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False))

    def check(self, template: str, tokenizer: Any = None) -> int:
        """Every text VILA's tokenizer sees for LiFT's prompts in `template` (prompt.tokenizer_probes) gives the
        same ids here as in VILA's slow tokenizer; refuses naming the first piece that does not."""
        if self.reference is None:
            return 0
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        probes = tokenizer_probes(CHAT_TEMPLATES[template])
        for name, text in probes:
            got, want = list(tokenizer(text).input_ids), self.reference.ids(text)
            if got != want:
                k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                shown = lambda ids: tokenizer.convert_ids_to_tokens(ids[max(0, k - 2):k + 4])  # noqa: E731
                raise ModelLoadError(
                    f"llm/ tokenizer: the converted tokenizer does not reproduce VILA's slow SentencePiece tokenizer "
                    f"({self.settings.branch} branch, legacy={self.settings.legacy}) on {name}: "
                    f"{_excerpt(text, tokenizer, got, k)!r} gives ...{shown(got)}... here but ...{shown(want)}... in "
                    f"VILA (token {k} of {len(want)})")
        self.checked = len(probes)
        return self.checked

    def provenance(self) -> dict[str, Any]:
        if self.settings is None:
            return {"source": "llm/tokenizer.json", "checked_pieces": 0}
        return {"source": "llm/tokenizer.model (SentencePiece)", "vila_branch": self.settings.branch,
                "legacy": self.settings.legacy, "sentencepiece_dummy_prefix": self.settings.dummy_prefix,
                "prepend_scheme": self.settings.prepend_scheme, "checked_pieces": self.checked}


def _excerpt(text: str, tokenizer: Any, ids: list[int], k: int) -> str:
    """The text around token k (for a long piece, where the difference is)."""
    if len(text) <= 90:
        return text
    at = len(tokenizer.decode(ids[:k]))
    start = max(0, min(at - 40, len(text) - 80))
    return ("..." if start else "") + text[start:start + 80] + ("..." if start + 80 < len(text) else "")


def _with_image_token(tokenizer: Any) -> Any:
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


# ---- the LoRA release ----------------------------------------------------------------------------------
@dataclass
class _LoraModule:
    a: Any = None
    b: Any = None


class LoraRelease:
    """LiFT's LoRA release, checked up front (before any output is written)."""

    def __init__(self, lora_dir: Path) -> None:
        import torch

        self.dir = lora_dir
        if not lora_dir.is_dir():
            raise ModelLoadError(f"LoRA folder not found: {lora_dir}")
        cfg = _json(lora_dir / "adapter_config.json", "LoRA adapter config")
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ModelLoadError(f"{lora_dir}: adapter type {cfg.get('peft_type')!r} is not a LoRA")
        if cfg.get("use_dora"):
            raise ModelLoadError(f"{lora_dir}: DoRA adapters cannot be merged by this converter")
        try:
            self.r = int(cfg["r"])
            self.alpha = float(cfg["lora_alpha"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{lora_dir}/adapter_config.json lacks a valid r / lora_alpha") from None
        self.rslora = bool(cfg.get("use_rslora"))
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        self.rank_pattern: dict[str, int] = cfg.get("rank_pattern") or {}
        self.alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}

        weights = lora_dir / "adapter_model.safetensors"
        if not weights.is_file():
            weights = lora_dir / "adapter_model.bin"
        if not weights.is_file():
            raise ModelLoadError(f"missing LoRA weights: {lora_dir}/adapter_model.safetensors")
        self.modules: dict[str, _LoraModule] = {}  # "llm.model.layers.0.self_attn.q_proj" -> A, B
        pat = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
        for key, t in _iter_tensors(weights):
            m = pat.match(key)
            if m is None:
                raise ModelLoadError(f"{weights.name}: tensor {key!r} is not a LoRA A/B matrix (embedding LoRA, "
                                     "modules_to_save or biases are not supported)")
            mod = _canonical_key(m.group("mod"))
            if mod is None:
                raise ModelLoadError(f"{weights.name}: LoRA tensor {key!r} targets no part of VILA ({', '.join(PARTS)})")
            entry = self.modules.setdefault(mod, _LoraModule())
            setattr(entry, m.group("ab").lower(), t)
        if not self.modules:
            raise ModelLoadError(f"{weights} holds no LoRA tensors")
        for mod, e in self.modules.items():
            if e.a is None or e.b is None:
                raise ModelLoadError(f"LoRA module {mod} has lora_{'A' if e.a is None else 'B'} missing")
            if e.a.dim() != 2 or e.b.dim() != 2 or e.a.shape[0] != e.b.shape[1]:
                raise ModelLoadError(f"LoRA module {mod}: A {tuple(e.a.shape)} and B {tuple(e.b.shape)} do not chain")

        non_lora_path = lora_dir / "non_lora_trainables.bin"
        if not non_lora_path.is_file():
            raise ModelLoadError(f"missing {non_lora_path} (LiFT's releases ship it: the non-LoRA weights trained "
                                 "alongside, an empty dict when the projector was frozen, as in LiFT's)")
        try:
            raw = torch.load(str(non_lora_path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot read {non_lora_path}: {exc}") from None
        self.replacements: dict[str, Any] = {}
        for key, t in raw.items():
            canon = _canonical_key(key)
            if canon is None:
                raise ModelLoadError(f"non_lora_trainables.bin: {key!r} names no part of VILA ({', '.join(PARTS)})")
            self.replacements[canon] = t

    def scale(self, module: str) -> float:
        r, alpha = self.r, self.alpha
        for pattern, value in self.rank_pattern.items():  # peft: a pattern matches a suffix of the name
            if re.match(rf"(.*\.)?({pattern})$", module):
                r = int(value)
                break
        for pattern, value in self.alpha_pattern.items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        return alpha / math.sqrt(r) if self.rslora else alpha / r


def merge_lora_weight(weight: Any, a: Any, b: Any, scale: float, fan_in_fan_out: bool = False) -> Any:
    """W + scale * B @ A, computed in float32 and returned in W's dtype."""
    delta = (b.float() @ a.float()) * scale
    if fan_in_fan_out:
        delta = delta.T
    if tuple(delta.shape) != tuple(weight.shape):
        raise ModelLoadError(f"LoRA update {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
    return (weight.float() + delta).to(weight.dtype)


# ---- conversion ----------------------------------------------------------------------------------------
def _check_layout(base: Path) -> dict[str, Any]:
    if not base.is_dir():
        raise ModelLoadError(f"VILA folder not found: {base}")
    top = _json(base / "config.json", "VILA top-level config")
    for part in PARTS:
        if not (base / part).is_dir():
            raise ModelLoadError(f"missing part {part}/ in {base} (VILA-1.5 layout: llm/, vision_tower/, mm_projector/)")
        _json(base / part / "config.json", f"{part} config")
        _weight_files(base / part)
    return top


def convert_vila(base_dir: str | Path, out_dir: str | Path, lora_dir: str | Path | None = None, *,
                 chat_template: str | None = None,
                 progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert (and merge); raises ModelLoadError naming the missing or mismatched part."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlavaConfig, LlavaProcessor

    from service.families.vila.projector import num_output_tokens, projector_shapes

    say = progress or (lambda _msg: None)
    base, out = Path(base_dir), Path(out_dir)
    if out.resolve() == base.resolve():
        raise ModelLoadError("--out must differ from --base (the converter does not convert in place)")
    top = _check_layout(base)
    proj_type = _json(base / "mm_projector" / "config.json", "projector config").get("mm_projector_type")
    if proj_type != "mlp_downsample":
        raise ModelLoadError(f"projector type {proj_type!r}: only VILA-1.5's 'mlp_downsample' is supported")
    if top.get("image_aspect_ratio", "resize") != "resize":
        raise ModelLoadError(f"image_aspect_ratio {top.get('image_aspect_ratio')!r}: only 'resize' is supported")
    if top.get("s2"):
        raise ModelLoadError("s2 (multi-scale) vision towers are not supported")
    tower = read_vision_tower(base, top)
    # VILA's VisionTower: getattr(args, "mm_vision_select_layer", -2)
    feature_layer = int(top.get("mm_vision_select_layer", -2))
    intern_vit.kept_layers(feature_layer, int(tower.config.num_hidden_layers))  # refuses a layer the tower lacks
    lora = LoraRelease(Path(lora_dir)) if lora_dir is not None else None

    text_cfg = LlamaConfig.from_pretrained(str(base / "llm"))
    vision_cfg = tower.config
    expected_proj = projector_shapes(vision_cfg.hidden_size, text_cfg.hidden_size)

    llm_tokenizer = LlmTokenizer.read(base / "llm", text_cfg)
    tokenizer = llm_tokenizer.tokenizer
    image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    text_vocab = int(text_cfg.vocab_size)
    padded_vocab = max(text_vocab, math.ceil((image_token_id + 1) / VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    template = chat_template or choose_template(text_cfg.to_dict(), vision_cfg.model_type,
                                                set(tokenizer.all_special_tokens) | set(tokenizer.get_vocab()))
    if template not in CHAT_TEMPLATES:
        raise ModelLoadError(f"unknown chat template {template!r}; known: {', '.join(CHAT_TEMPLATES)}")
    llm_tokenizer.check(template)  # before anything is written
    report = ConversionReport(out, template, image_token_id, text_vocab, padded_vocab)

    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.safetensors"), out / "model.safetensors.index.json", out / "config.json"]:
        stale.unlink(missing_ok=True)

    pending_lora = dict(lora.modules) if lora else {}
    pending_repl = dict(lora.replacements) if lora else {}
    seen_proj: set[str] = set()
    seen_tower: set[str] = set()
    shards = [(part, f) for part in PARTS for f in _weight_files(base / part)]
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for n, (part, path) in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        say(f"[{n}/{len(shards)}] {part}/{path.name}")
        tensors: dict[str, Any] = {}
        for key, t in _iter_tensors(path):
            local = tower.local_key(key) if part == "vision_tower" else key
            full = f"{part}.{local}"
            if full in pending_repl:
                new = pending_repl.pop(full)
                if tuple(new.shape) != tuple(t.shape):
                    raise ModelLoadError(f"non_lora_trainables.bin: {full} has shape {tuple(new.shape)}, "
                                         f"the base has {tuple(t.shape)}")
                t = new.to(t.dtype)
                report.replaced_tensors.append(full)
            module = full.removesuffix(".weight")
            if module in pending_lora:
                e = pending_lora.pop(module)
                try:
                    t = merge_lora_weight(t, e.a, e.b, lora.scale(module), lora.fan_in_fan_out)
                except ModelLoadError as exc:
                    raise ModelLoadError(f"LoRA for {module}: {exc.message} (LoRA made for another base?)") from None
                report.merged_lora_modules.append(module)
            if part == "vision_tower" and tower.expected is not None:
                if local not in tower.expected:
                    raise ModelLoadError(f"vision_tower has an unexpected tensor {local!r} (not one of VILA's "
                                         f"{tower.kind} tensors)")
                if tuple(t.shape) != tower.expected[local]:
                    raise ModelLoadError(f"vision_tower {local} has shape {tuple(t.shape)}, expected "
                                         f"{tower.expected[local]} for its config.json")
                seen_tower.add(local)
            if part == "mm_projector":
                if local not in expected_proj:
                    raise ModelLoadError(f"mm_projector has an unexpected tensor {local!r}")
                if tuple(t.shape) != expected_proj[local]:
                    raise ModelLoadError(f"mm_projector {local} has shape {tuple(t.shape)}, expected "
                                         f"{expected_proj[local]} for vision width {vision_cfg.hidden_size} and "
                                         f"LLM width {text_cfg.hidden_size}")
                seen_proj.add(local)
            if part == "llm" and key in ("model.embed_tokens.weight", "lm_head.weight"):
                if t.shape[0] != text_vocab:
                    raise ModelLoadError(f"llm {key} has {t.shape[0]} rows but the LLM config says vocab {text_vocab}")
                if padded_vocab > text_vocab:
                    t = torch.cat([t, t.new_zeros(padded_vocab - text_vocab, t.shape[1])])
            tensors[full] = t.contiguous()
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        report.num_tensors += len(tensors)
        del tensors
    missing_proj = sorted(set(expected_proj) - seen_proj)
    if missing_proj:
        raise ModelLoadError(f"mm_projector lacks {missing_proj}")
    missing_tower = sorted(set(tower.expected or ()) - seen_tower)
    if missing_tower:
        raise ModelLoadError(f"vision_tower lacks {len(missing_tower)} tensors, e.g. {missing_tower[:3]}")
    if pending_lora:
        raise ModelLoadError(f"the LoRA targets {len(pending_lora)} weights the base does not have, e.g. "
                             f"{sorted(pending_lora)[:3]} (LoRA made for another base?)")
    if pending_repl:
        raise ModelLoadError(f"non_lora_trainables.bin has {len(pending_repl)} tensors the base does not have, "
                             f"e.g. {sorted(pending_repl)[:3]}")
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}, indent=1))

    image_processor = tower.image_processor(base / "vision_tower")
    patch_size = vision_image_size(vision_cfg) // vision_grid(vision_cfg)
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                   vision_feature_select_strategy=tower.select_strategy,
                   image_token=IMAGE_TOKEN).save_pretrained(str(out))  # the tokenizer's files too
    llm_tokenizer.pin(out)
    llm_tokenizer.check(template, AutoTokenizer.from_pretrained(str(out)))  # what the engines will load
    report.tokenizer = llm_tokenizer.provenance()
    if (base / "llm" / "generation_config.json").is_file():
        shutil.copy(base / "llm" / "generation_config.json", out / "generation_config.json")
    (out / "lift_critic.json").write_text(json.dumps({
        "family": "vila", "converted_from": str(base.resolve()),
        "lora": str(Path(lora_dir).resolve()) if lora_dir else None, "chat_template": template,
        "merged_lora_modules": len(report.merged_lora_modules), "replaced_tensors": report.replaced_tensors,
        "tokenizer": report.tokenizer,
    }, indent=1))

    text_cfg.vocab_size = padded_vocab
    text_cfg.architectures = ["LlamaForCausalLM"]
    dtype = text_cfg.dtype or "float16"
    config = LlavaConfig(vision_config=vision_cfg.to_dict(), text_config=text_cfg.to_dict(),
                         image_token_index=image_token_id,
                         vision_feature_layer=feature_layer,
                         vision_feature_select_strategy=tower.select_strategy,
                         projector_hidden_act="gelu", multimodal_projector_bias=True,
                         tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
                         image_seq_length=num_output_tokens(vision_grid(vision_cfg)))
    config.architectures = [ARCHITECTURE]
    setattr(config, FAMILY_KEY, "vila")
    setattr(config, CHAT_TEMPLATE_KEY, template)
    setattr(config, TEXT_VOCAB_KEY, text_vocab)
    setattr(config, PROJECTOR_KEY, proj_type)
    config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(str(out))  # last: the folder is a model only once everything else is there
    say(f"wrote {out} ({report.num_tensors} tensors, template {template}, "
        f"{len(report.merged_lora_modules)} LoRA modules merged)")
    return report


__all__ = ["ConversionReport", "LoraRelease", "VisionTower", "convert_vila", "merge_lora_weight", "read_vision_tower"]

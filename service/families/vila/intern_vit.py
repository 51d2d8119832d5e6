"""InternViT-6B-448 as VILA1.5-40b uses it: what VILA's own source says, and the name/config translations.

Read in NVlabs/VILA at 1c88211 (2024-05-13, the VILA-1.5 code of the 40B release; 54c9706, 2024-08, differs
only in formatting):
- Tower: llava/model/multimodal_encoder/intern_encoder.py `InternVisionTower` = VILA's generic `VisionTower`
  (vision_encoder.py) around `InternVisionModel` (intern/modeling_intern_vit.py, VILA's own copy).
- Which features: `VisionTower.feature_select` takes `hidden_states[mm_vision_select_layer]`, then
  "patch" drops token 0 (InternViT's CLS), "cls_patch" keeps it. The 40B release scripts
  (scripts/v1_5/release/40b/{1_mm_align,2_pretrain,3_sft}.sh) pass `--mm_vision_select_layer -1` and no
  select feature, so llava/train/args.py's default "patch" holds: the LAST layer's output with the CLS
  dropped, 32 x 32 = 1,024 patch tokens -> mlp_downsample (2 x 2) -> 256 tokens per frame (8 frames: 2,048).
  "cls_patch" cannot work with mlp_downsample at all: `DownSampleBlock` reshapes n tokens to a
  sqrt(n) x sqrt(n) grid and 1,025 is no square. (The 13B's SigLIP is the mirror case: no CLS, so only
  "cls_patch" works there.) `hidden_states[0]` is the embedding output and `hidden_states[i]` layer i's;
  InternViT has no final norm, so layer -1 is used as it comes out.
- Preprocessing: VILA's own `InternVisionPreprocessor`, NOT the CLIPImageProcessor shipped with InternViT's
  weights (that one centre-crops): torchvision `Resize((448, 448), BICUBIC)` on the PIL image (aspect ratio
  not kept, no crop), `ToTensor`, `Normalize` with ImageNet's mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225) (SigLIP uses 0.5 / 0.5). `mm_utils.process_image` first resizes to the
  processor's `size` with PIL's default bicubic: the same operation. VILA hardcodes 448, which is the
  tower's image_size; the converter uses the tower's image_size (so tiny towers work alike).
- Blocks (VILA's copy): pre-norm, RMSNorm everywhere (eps 1e-6, `norm1`/`norm2`; the copy has no
  `norm_type`), fused `attn.qkv` Linear (bias = qkv_bias, False for 6B) split as (3, heads, head_dim),
  RMSNorm over the whole width on q and k (`qk_normalization`), scale head_dim^-0.5, `attn.proj` (with
  bias), layer scales `ls1`/`ls2`, MLP fc1 -> exact GELU -> fc2. InternViT-6B: width 3200, 25 heads of 128,
  MLP 12800, 45 layers, patch 14, 448 px (VILA's scripts name -448px-V1-2; -V1-5 has the same shapes).

Both engines run an InternViT someone else maintains: vLLM's `intern_vit.InternVisionModel`, whose tensor
names are VILA's own (so the converted checkpoint keeps VILA's names), and transformers' port
`InternVLVisionModel` (model_type "internvl_vision"), whose config the converted checkpoint stores and whose
names the reference maps to and from (`to_transformers` / `from_transformers`).

No torch at import: the converter's checks and the family read this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from service.errors import ModelLoadError

VILA_MODEL_TYPE = "intern_vit_6b"  # vision_tower/config.json of VILA's release
HF_MODEL_TYPE = "internvl_vision"  # transformers' InternVLVisionConfig: what the converted config.json holds
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
QK_NORM_EPS = 1e-6  # transformers' port fixes its q/k RMSNorm eps here; VILA's uses layer_norm_eps


def transformers_vision_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """VILA's vision_tower/config.json (its InternVisionConfig) -> kwargs for transformers' InternVLVisionConfig.

    Defaults are those of VILA's InternVisionConfig. Refuses what the two implementations would compute
    differently, so that a converted checkpoint always means the same model in both engines."""
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        cfg = dict(
            hidden_size=hidden, num_attention_heads=heads, intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]), image_size=int(raw["image_size"]),
            patch_size=int(raw["patch_size"]), num_channels=int(raw.get("num_channels", 3)),
            attention_bias=bool(raw.get("qkv_bias", False)), use_qk_norm=bool(raw.get("qk_normalization", True)),
            hidden_act=str(raw.get("hidden_act", "gelu")), layer_norm_eps=float(raw.get("layer_norm_eps", 1e-6)),
            layer_scale_init_value=float(raw.get("initializer_factor", 0.1)),
            norm_type="rms_norm",
            use_mean_pooling=True,  # = no final LayerNorm (InternViT has none)
            use_absolute_position_embeddings=True, use_mask_token=False,
            hidden_dropout_prob=0.0, attention_dropout=0.0, projection_dropout=0.0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"InternViT vision tower config lacks a valid field: {exc}") from None
    if raw.get("norm_type", "rms_norm") != "rms_norm":
        raise ModelLoadError(f"InternViT norm_type {raw.get('norm_type')!r}: VILA-1.5's InternViT is RMSNorm only")
    if hidden % heads:
        raise ModelLoadError(f"InternViT width {hidden} is not divisible by its {heads} heads")
    if cfg["image_size"] % cfg["patch_size"]:
        raise ModelLoadError(f"InternViT image_size {cfg['image_size']} is not a multiple of patch_size "
                             f"{cfg['patch_size']}")
    if cfg["use_qk_norm"] and abs(cfg["layer_norm_eps"] - QK_NORM_EPS) > 1e-12:
        raise ModelLoadError(f"InternViT layer_norm_eps {cfg['layer_norm_eps']}: only {QK_NORM_EPS} is supported "
                             "with qk_normalization (transformers' port fixes the q/k norm's eps)")
    return cfg


def vila_tensor_shapes(cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of VILA's InternVisionModel (names as in its vision_tower/ files) for a config from
    `transformers_vision_config`: the converter checks towers against it, the tiny builder draws from it."""
    c, mlp, p = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["patch_size"])
    grid = int(cfg["image_size"]) // p
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.class_embedding": (1, 1, c),
        "embeddings.patch_embedding.weight": (c, int(cfg.get("num_channels", 3)), p, p),
        "embeddings.patch_embedding.bias": (c,),
        "embeddings.position_embedding": (1, grid * grid + 1, c),
    }
    for i in range(int(cfg["num_hidden_layers"])):
        layer = f"encoder.layers.{i}."
        shapes.update({
            layer + "norm1.weight": (c,), layer + "norm2.weight": (c,), layer + "ls1": (c,), layer + "ls2": (c,),
            layer + "attn.qkv.weight": (3 * c, c), layer + "attn.proj.weight": (c, c), layer + "attn.proj.bias": (c,),
            layer + "mlp.fc1.weight": (mlp, c), layer + "mlp.fc1.bias": (mlp,),
            layer + "mlp.fc2.weight": (c, mlp), layer + "mlp.fc2.bias": (c,),
        })
        if cfg.get("attention_bias"):
            shapes[layer + "attn.qkv.bias"] = (3 * c,)
        if cfg.get("use_qk_norm"):
            shapes[layer + "attn.q_norm.weight"] = (c,)
            shapes[layer + "attn.k_norm.weight"] = (c,)
    return shapes


# ---- VILA names <-> transformers' InternVLVisionModel names (the reference's module tree) ----------------
_EMBEDDINGS = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
    "embeddings.position_embedding": "embeddings.position_embeddings",
}
_LAYER = {
    "norm1.weight": "layernorm_before.weight", "norm2.weight": "layernorm_after.weight",
    "ls1": "lambda_1", "ls2": "lambda_2",
    "attn.proj.weight": "attention.projection_layer.weight", "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight", "attn.k_norm.weight": "attention.k_norm.weight",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_VILA_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^attention\.([qkv])_proj\.(weight|bias)$")


def to_transformers(name: str, tensor: Any) -> list[tuple[str, Any]]:
    """One VILA tower tensor -> transformers' name(s); the fused qkv becomes q_proj, k_proj, v_proj (VILA
    splits its output as (3, heads, head_dim): the first third of the rows is q). Unknown names raise."""
    if name in _EMBEDDINGS:
        return [(_EMBEDDINGS[name], tensor)]
    m = _VILA_LAYER.match(name)
    if m:
        i, rest = m.groups()
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = tensor.chunk(3, dim=0)
            return [(f"encoder.layer.{i}.attention.{x}_proj.{kind}", t) for x, t in zip("qkv", (q, k, v))]
        if rest in _LAYER:
            return [(f"encoder.layer.{i}.{_LAYER[rest]}", tensor)]
    raise ModelLoadError(f"InternViT tensor {name!r} is not one of VILA's InternVisionModel")


def from_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' InternVLVisionModel state dict -> VILA's names (q, k, v fused back into qkv)."""
    import torch

    embeddings = {v: k for k, v in _EMBEDDINGS.items()}
    layer = {v: k for k, v in _LAYER.items()}
    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    for name, t in state.items():
        if name in embeddings:
            out[embeddings[name]] = t
            continue
        m = _HF_LAYER.match(name)
        if m is None:
            raise ModelLoadError(f"transformers InternViT tensor {name!r} has no VILA name")
        i, rest = m.groups()
        mq = _HF_QKV.match(rest)
        if mq:
            qkv.setdefault((i, mq.group(2)), {})[mq.group(1)] = t
        elif rest in layer:
            out[f"encoder.layers.{i}.{layer[rest]}"] = t
        else:
            raise ModelLoadError(f"transformers InternViT tensor {name!r} has no VILA name")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelLoadError(f"InternViT layer {i}: {kind} of q/k/v incomplete ({sorted(parts)})")
        out[f"encoder.layers.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def kept_layers(feature_layer: int, num_layers: int) -> int:
    """How many blocks produce `hidden_states[feature_layer]` (index 0 is the embedding output)."""
    keep = num_layers + feature_layer + 1 if feature_layer < 0 else feature_layer
    if not 1 <= keep <= num_layers:
        raise ModelLoadError(f"mm_vision_select_layer {feature_layer} selects no block of a {num_layers}-layer tower")
    return keep


def layer_index(name: str) -> int | None:
    """The block number of a VILA tower tensor name (`encoder.layers.N.`), else None."""
    m = _VILA_LAYER.match(name)
    return int(m.group(1)) if m else None


__all__ = ["HF_MODEL_TYPE", "IMAGENET_MEAN", "IMAGENET_STD", "VILA_MODEL_TYPE", "from_transformers", "kept_layers",
           "layer_index", "to_transformers", "transformers_vision_config", "vila_tensor_shapes"]

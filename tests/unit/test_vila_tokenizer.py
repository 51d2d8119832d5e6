"""The converted VILA checkpoint's tokenizer gives exactly the ids VILA's own tokenizer gives, on every piece of
LiFT's prompts, for both kinds of SentencePiece `llm/` folder the real releases ship (tokenizer.model +
tokenizer_config.json + special_tokens_map.json, no tokenizer.json):

  13B (Llama-2 style: dummy prefix on)        VILA loads it use_fast=False, legacy=False, BOS added
  40B (Yi style: no dummy prefix, ChatML      VILA loads it use_fast=False, legacy as its file says (true in the
       markers as user-defined pieces)        Yi family's files), no BOS

How VILA loads them is LiFT's copy of VILA's builder, the code LiFT-Critic was trained and run with
(CodeGoat24/LiFT llava/model/language_model/builder.py, `build_llm_and_tokenizer`; transformers==4.37.2 in its
pyproject.toml); how it splits the prompt around images is the same repository's llava/mm_utils.py
`tokenizer_image_token`, written out below. The oracle here is `sentencepiece` itself, not the code under test.
transformers 5 has no slow Llama tokenizer any more: with LIFT_TRANSFORMERS4_PYTHON pointing at a Python that has
transformers 4.37.2 + sentencepiece + protobuf, the last tests also hold everything to the real slow tokenizer
(`python -m venv V && V/bin/pip install transformers==4.37.2 tokenizers==0.15.2 sentencepiece protobuf`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sentencepiece as spm

from service.errors import ModelLoadError
from service.families.vila.convert import convert_vila
from service.families.vila.prompt import CHAT_TEMPLATES, lift_query, tokenizer_probes
from service.rubric import DIMENSIONS, LABELS

STYLES = {"13b": "siglip", "40b": "internvit"}
TEMPLATE = {"13b": "vicuna_v1", "40b": "hermes-2"}


@pytest.fixture(scope="module", params=list(STYLES))
def style(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, style: str) -> tuple[Path, Path]:
    """(VILA-layout tiny release, its converted checkpoint)."""
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp(f"vila-tok-{style}")
    src = build_tiny_vila(root / "src", seed=2, vision=STYLES[style])
    convert_vila(src, root / "critic")
    return src, root / "critic"


@pytest.fixture(scope="module")
def family(release: tuple[Path, Path]):
    from service.families import load_family

    return load_family(release[1])


def sentencepiece_ids(src: Path, text: str) -> list[int]:
    """What the release's own tokenizer.model gives, with the BOS its tokenizer_config.json asks for."""
    sp = spm.SentencePieceProcessor(model_file=str(src / "llm" / "tokenizer.model"))
    config = json.loads((src / "llm" / "tokenizer_config.json").read_text())
    return [sp.bos_id()] * bool(config["add_bos_token"]) + sp.encode(text)


def lift_tokenizer_image_token(prompt: str, tokenize, bos_id: int | None, image_id: int) -> list[int]:
    """LiFT's llava/mm_utils.py `tokenizer_image_token` (lstrip=False), written out: each chunk between `<image>`
    marks tokenized on its own; when the first chunk starts with BOS, that BOS is kept once and the first token of
    every chunk is cut (the separator, [image] * (offset + 1), is cut by the same offset)."""
    chunks = [tokenize(c) for c in prompt.split("<image>")]
    offset = 1 if chunks[0][:1] == [bos_id] else 0
    ids = chunks[0][:offset]
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(image_id)
        ids += chunk[offset:]
    return ids


# ---- the release -----------------------------------------------------------------------------------------
def test_llm_folder_is_sentencepiece_only(release: tuple[Path, Path], style: str) -> None:
    from sentencepiece import sentencepiece_model_pb2

    src, _ = release
    llm = src / "llm"
    assert sorted(p.name for p in llm.iterdir() if "token" in p.name) == [
        "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((llm / "tokenizer.model").read_bytes())
    config = json.loads((llm / "tokenizer_config.json").read_text())
    assert proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE and proto.trainer_spec.byte_fallback
    assert not proto.normalizer_spec.remove_extra_whitespaces and proto.normalizer_spec.name == "identity"
    if style == "13b":
        assert proto.normalizer_spec.add_dummy_prefix and config["add_bos_token"] and config["legacy"] is False
        assert [proto.pieces[i].piece for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    else:
        assert not proto.normalizer_spec.add_dummy_prefix and not config["add_bos_token"] and config["legacy"] is True
        user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        assert [(p.piece, p.type == user_defined) for p in proto.pieces[:5]] == [
            ("<unk>", False), ("<|startoftext|>", False), ("<|endoftext|>", False), ("<|im_start|>", True),
            ("<|im_end|>", True)]
        assert json.loads((llm / "special_tokens_map.json").read_text())["eos_token"]["content"] == "<|im_end|>"


# ---- the converted tokenizer == sentencepiece, piece by piece ---------------------------------------------
def test_every_prompt_piece_and_label_as_sentencepiece(release: tuple[Path, Path], family, style: str) -> None:
    """System text, the newline after each image, caption + question + assistant start for every question and
    four kinds of caption, each label after the assistant start, the '. ' after it and a reason."""
    src, critic = release
    tok = family.tokenizer
    probes = tokenizer_probes(CHAT_TEMPLATES[TEMPLATE[style]])
    assert len(probes) == 2 + 3 * 4 + 3 * 3 * 3
    for name, text in probes:
        assert list(tok(text).input_ids) == sentencepiece_ids(src, text), name
    provenance = json.loads((critic / "lift_critic.json").read_text())["tokenizer"]
    assert provenance["checked_pieces"] == len(probes)
    assert (provenance["vila_branch"], provenance["prepend_scheme"]) == (
        ("llama", "first") if style == "13b" else ("yi", "never"))


def test_the_pieces_look_as_vila_trained_on_them(family, style: str) -> None:
    """Spelled out: Llama-2 puts '▁' before each piece (so '\\n' after an image is '▁', <0x0A>) and the label is
    '▁Good'; Yi puts none (the '\\n' is its own piece; 'assistant' and 'Good' have no '▁'): the extra '▁' that
    transformers' default fast conversion of a Yi model adds everywhere is not there."""
    tok = family.tokenizer
    tokens = lambda text: tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    head, newline, last = family.template.render(lift_query("a red car", "video_fidelity", 2)).split("<image>")
    labels = {k: tok.convert_ids_to_tokens(v) for k, v in family.label_token_ids().items()}
    if style == "13b":
        assert tokens(newline) == ["▁", "<0x0A>"] and tokens(head)[0] == "▁A"
        assert labels["Good"] == ["▁Good"] and labels["Bad"] == ["▁Bad"] and labels["Normal"][0] == "▁"
    else:
        assert tokens(newline) == ["\n"] and tokens(head)[0] == "<|im_start|>" and tokens(head)[1][0] == "s"
        assert tokens(last)[-3:] == ["<|im_start|>", "assistant", "\n"] and tokens(last)[0] == "\n"
        assert labels["Good"] == ["Good"] and labels["Bad"] == ["Bad"] and not labels["Normal"][0].startswith("▁")


def test_family_prompt_is_vilas_tokenizer_image_token(release: tuple[Path, Path], family) -> None:
    """The ids the engines send == LiFT's tokenizer_image_token over sentencepiece's ids; the label ids == what
    sentencepiece gives for the label inside the last piece, after the assistant start."""
    src, _ = release
    bos = family.tokenizer.bos_token_id if family.template.name == "vicuna_v1" else None
    for dim in DIMENSIONS:
        for caption in ("a red car", "two  dogs, 3 cats & café"):
            prompt = family.template.render(lift_query(caption, dim.name, 8))
            want = lift_tokenizer_image_token(prompt, lambda t: sentencepiece_ids(src, t), bos, family.image_token_id)
            assert family.prompt_ids(caption, dim.name, 8) == want
    last = family.template.render(lift_query("a red car", "motion_smoothness", 1)).split("<image>")[-1]
    base = sentencepiece_ids(src, last)
    for label, ids in family.label_token_ids().items():
        full = sentencepiece_ids(src, last + family.template.answer_lead + label)
        assert full[:len(base)] == base and ids == full[len(base):], label


# ---- how VILA's branch is chosen; what the converter refuses ----------------------------------------------
def _rewrite_config(src: Path, **changes: object) -> None:
    path = src / "llm" / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2))


@pytest.fixture(scope="module")
def yi_legacy_false(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Yi-style release whose tokenizer_config.json says legacy false (VILA's Yi branch then reads it so):
    VILA's slow tokenizer puts one '▁' in front of each text, none after a special token."""
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp("vila-yi-legacy-false")
    src = build_tiny_vila(root / "src", seed=2, vision="internvit")
    _rewrite_config(src, legacy=False, additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    convert_vila(src, root / "critic")
    return src, root / "critic"


def test_yi_release_that_says_legacy_false(yi_legacy_false: tuple[Path, Path]) -> None:
    from service.families import load_family

    src, critic = yi_legacy_false
    family = load_family(critic)
    tok = family.tokenizer
    tokens = lambda text: tok.convert_ids_to_tokens(tok(text).input_ids)  # noqa: E731
    assert tokens("\n") == ["▁", "\n"]  # the prefix legacy=False adds, which this model itself never adds
    head = tokens("<|im_start|>system\n")
    assert head[0] == "<|im_start|>" and head[1][0] == "s"  # none before (nor after) a special token
    sp = spm.SentencePieceProcessor(model_file=str(src / "llm" / "tokenizer.model"))
    assert sp.encode("\n", out_type=str) == ["\n"]
    assert json.loads((critic / "lift_critic.json").read_text())["tokenizer"]["prepend_scheme"] == "first"


def test_refuses_a_tokenizer_it_cannot_reproduce(tmp_path: Path) -> None:
    """A SentencePiece model that drops extra whitespace (unlike Llama-2's and Yi's): the fast tokenizer keeps the
    space that ends vicuna_v1's system text, VILA's would not. Refused, naming the piece; nothing written."""
    from service.tiny_critics.vila import build_tiny_vila

    src = build_tiny_vila(tmp_path / "src", seed=2, vision="siglip")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["USER: a red car ASSISTANT: Good. the video"] * 200), model_type="bpe",
        model_prefix=str(tmp_path / "ws"), vocab_size=300, hard_vocab_limit=False, byte_fallback=True, unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, remove_extra_whitespaces=True, minloglevel=2)
    shutil.copy(tmp_path / "ws.model", src / "llm" / "tokenizer.model")
    with pytest.raises(ModelLoadError) as err:
        convert_vila(src, tmp_path / "out")
    message = err.value.message
    assert "does not reproduce VILA's slow SentencePiece tokenizer" in message
    assert "the system text before the first <image>" in message and "legacy=False" in message
    assert not (tmp_path / "out").exists()


def test_transformers_default_conversion_of_a_yi_model_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What converting a Yi-style model with transformers' defaults gives ('▁' prepended everywhere: the 40B would
    score sequences it was never trained on) is caught by the check, not shipped."""
    from service.families.vila import convert
    from service.tiny_critics.vila import build_tiny_vila

    src = build_tiny_vila(tmp_path / "src", seed=2, vision="internvit")
    monkeypatch.setattr(convert, "vila_tokenizer_settings", lambda *_: convert.TokenizerSettings("yi", True, True))
    with pytest.raises(ModelLoadError) as err:
        convert_vila(src, tmp_path / "out")
    assert "on the system text before the first <image>" in err.value.message
    assert "'▁" in err.value.message.split("here but")[0]  # the '▁' VILA never sees
    assert not (tmp_path / "out").exists()


def test_sentencepiece_release_without_tokenizer_config_is_refused(tmp_path: Path) -> None:
    from service.tiny_critics.vila import build_tiny_vila

    src = build_tiny_vila(tmp_path / "src", seed=2, vision="internvit")
    (src / "llm" / "tokenizer_config.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer_config.json"):
        convert_vila(src, tmp_path / "out")


# ---- against the real slow tokenizer (transformers 4.37, when a Python that has it is named) ---------------
TRANSFORMERS4 = os.environ.get("LIFT_TRANSFORMERS4_PYTHON")
needs_transformers4 = pytest.mark.skipif(
    not TRANSFORMERS4, reason="set LIFT_TRANSFORMERS4_PYTHON to a Python with transformers 4.37 (slow tokenizers)")

# LiFT's build_llm_and_tokenizer, the two branches (the real 40B takes the Yi one by its 60 layers x 56 heads;
# the tiny one is named here since it has 2 layers)
_SLOW = """
import json, sys
import transformers
from transformers import AutoTokenizer
assert transformers.__version__.startswith("4."), transformers.__version__
jobs = json.loads(sys.stdin.read())
out = []
for job in jobs:
    kwargs = {"legacy": False} if job["branch"] == "llama" else {}
    tok = AutoTokenizer.from_pretrained(job["llm"], model_max_length=4096, padding_side="right", use_fast=False,
                                        **kwargs)
    out.append([tok(text).input_ids for text in job["texts"]])
print(json.dumps({"version": transformers.__version__, "ids": out}))
"""


def slow_ids(jobs: list[dict[str, object]]) -> list[list[list[int]]]:
    done = subprocess.run([TRANSFORMERS4, "-c", _SLOW], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["ids"]


@needs_transformers4
def test_converted_equals_transformers_4_slow_tokenizer(release: tuple[Path, Path], family, style: str) -> None:
    """Every probe, the whole prompt as VILA splits it, and the converter's own restatement of the slow tokenizer:
    all equal to transformers 4.37's LlamaTokenizer(use_fast=False) loaded as LiFT's builder loads it."""
    from service.families.vila.convert import LlmTokenizer

    src, _ = release
    texts = [text for _, text in tokenizer_probes(CHAT_TEMPLATES[TEMPLATE[style]])]
    texts += family.template.render(lift_query("a red car", "semantic_consistency", 3)).split("<image>")
    want = slow_ids([{"llm": str(src / "llm"), "branch": "llama" if style == "13b" else "yi", "texts": texts}])[0]
    reference = LlmTokenizer.read(src / "llm", _text_config(src)).reference
    for text, ids in zip(texts, want):
        assert list(family.tokenizer(text).input_ids) == ids, text
        assert reference.ids(text) == ids, text


@needs_transformers4
def test_yi_legacy_false_equals_transformers_4_slow_tokenizer(yi_legacy_false: tuple[Path, Path]) -> None:
    from service.families import load_family

    src, critic = yi_legacy_false
    tok = load_family(critic).tokenizer
    texts = [text for _, text in tokenizer_probes(CHAT_TEMPLATES["hermes-2"])] + ["\n", "<|im_end|> y\n"]
    want = slow_ids([{"llm": str(src / "llm"), "branch": "yi", "texts": texts}])[0]
    for text, ids in zip(texts, want):
        assert list(tok(text).input_ids) == ids, text


def test_no_piece_starts_with_a_space() -> None:
    """The one place a fast tokenizer cannot follow VILA's legacy=False slow one: a text that starts with a space
    (slow: '▁' then '▁x'; fast: '▁x', since its Metaspace adds no '▁' before one already there; measured against
    transformers 4.37). No text VILA tokenizes for LiFT does: the pieces start with the system text or the
    newline after an image, and LiFT's caption is stripped before the question is appended."""
    for name in CHAT_TEMPLATES:
        assert not any(text.startswith((" ", "▁")) for _, text in tokenizer_probes(CHAT_TEMPLATES[name]))
        for caption in ("  padded caption  ", ""):
            pieces = CHAT_TEMPLATES[name].render(lift_query(caption, "video_fidelity", 8)).split("<image>")
            assert not any(piece.startswith((" ", "▁")) for piece in pieces)


def _text_config(src: Path):
    from transformers import LlamaConfig

    return LlamaConfig.from_pretrained(str(src / "llm"))


def test_labels_are_single_pieces_where_the_tokenizer_knows_them(family) -> None:
    ids = family.label_token_ids()
    assert set(ids) == set(LABELS) and len(ids["Good"]) == 1 and len(ids["Bad"]) == 1 and len(ids["Normal"]) > 1

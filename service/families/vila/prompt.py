"""VILA-1.5's prompts: LiFT's query, the two chat templates LiFT-Critic uses, VILA's piece-wise tokenization.

No torch here. The strings follow VILA's `llava/conversation.py` (conv_vicuna_v1, hermes_2) exactly, because a
critic only answers well in the format it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.errors import InvalidRequest, ModelLoadError
from service.families.vila import IMAGE_TOKEN
from service.rubric import DIMENSIONS, LABELS, Dimension, user_text


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    head: str  # everything before the user's message
    tail: str  # everything after it, up to where the assistant's answer starts
    # What the answer starts with in training text: vicuna_v1 joins "ASSISTANT:" and the answer with a space
    # (SeparatorStyle.TWO: role + ": " + message), hermes-2 starts right after "<|im_start|>assistant\n".
    answer_lead: str

    def render(self, query: str) -> str:
        return self.head + query + self.tail


_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")

CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    # SeparatorStyle.TWO, sep=" ": system + " " + "USER: " + msg + " " + "ASSISTANT:"
    "vicuna_v1": ChatTemplate("vicuna_v1", _VICUNA_SYSTEM + " USER: ", " ASSISTANT:", " "),
    # SeparatorStyle.MPT, sep="<|im_end|>": system + sep + role + msg + sep + role
    "hermes-2": ChatTemplate(
        "hermes-2",
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n",
        "<|im_end|><|im_start|>assistant\n",
        "",
    ),
}


def chat_template(name: str) -> ChatTemplate:
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ModelLoadError(f"unknown VILA chat template {name!r}; known: {', '.join(CHAT_TEMPLATES)}") from None


def lift_query(caption: str, dimension: Dimension | str, num_frames: int) -> str:
    """LiFT's user turn: one `<image>` and a newline per frame, then the caption and the question."""
    if IMAGE_TOKEN in caption:
        # VILA splits the prompt on `<image>`: a caption carrying one would smuggle in an extra image slot.
        raise InvalidRequest(f"the prompt must not contain {IMAGE_TOKEN!r}", param="prompt")
    return f"{IMAGE_TOKEN}\n" * num_frames + user_text(caption, dimension)


class _Tokenizer(Protocol):
    bos_token_id: int | None

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def tokenize_with_images(text: str, tokenizer: _Tokenizer, image_token_id: int) -> list[int]:
    """Token ids the way VILA's `tokenizer_image_token` makes them.

    Each text piece between `<image>` marks is tokenized on its own (which can differ from tokenizing the whole
    string: a Llama tokenizer prefixes every piece with a space), the pieces are joined with one image token,
    and only the first piece keeps the BOS the tokenizer adds.
    """
    ids: list[int] = []
    for k, piece in enumerate(text.split(IMAGE_TOKEN)):
        piece_ids = list(tokenizer(piece).input_ids)
        if k:
            ids.append(image_token_id)
            if tokenizer.bos_token_id is not None and piece_ids[:1] == [tokenizer.bos_token_id]:
                piece_ids = piece_ids[1:]
        ids.extend(piece_ids)
    return ids


# Captions for checking a tokenizer on LiFT's prompts: plain words, digits and punctuation, runs of spaces, and text
# outside the vocabulary (byte fallback), since user captions carry all of these.
PROBE_CAPTIONS = (
    "a red car driving on the road",
    "A cat, 2 dogs & 1 bird: flying at 10:30 pm!",
    "two  people   dancing in the rain",
    "café au lait, 東京の夜 and a 🚲",
)
# What a reason looks like after "<Label>. " (the tokens after ". " depend on what follows it).
PROBE_REASON = "The video shows a cat walking smoothly."


def tokenizer_probes(template: ChatTemplate) -> list[tuple[str, str]]:
    """Every text VILA's tokenizer sees for LiFT's prompts in `template`, each named for an error message.

    VILA tokenizes the pieces between `<image>` marks (`tokenize_with_images`): the system text before the first
    image, the newline after each image, and the last piece (caption + question + assistant start). The answer
    is learnt inside that last piece, so each label is probed there too, with the `. ` after it and a reason.
    """
    probes: list[tuple[str, str]] = []
    for i, dim in enumerate(DIMENSIONS):
        for j, caption in enumerate(PROBE_CAPTIONS):
            head, newline, last = template.render(lift_query(caption, dim, 2)).split(IMAGE_TOKEN)
            if i == j == 0:
                probes += [("the system text before the first <image>", head),
                           ("the newline after an <image>", newline)]
            where = f"{dim.name}, caption {caption!r}"
            probes.append((f"caption + question + assistant start ({where})", last))
            if j == 0:
                for label in LABELS:
                    answer = last + template.answer_lead + label
                    probes += [(f"label {label!r} after the assistant start ({where})", answer),
                               (f"label {label!r} and the '. ' after it ({where})", answer + ". "),
                               (f"label {label!r}, '. ' and a reason ({where})", f"{answer}. {PROBE_REASON}")]
    return probes


def choose_template(llm_config: dict[str, Any], vision_model_type: str, special_tokens: set[str]) -> str:
    """The template a VILA-1.5 release was trained with, from what its folders say.

    VILA's checkpoints do not record it (LiFT passes `--conv-mode`): 13B (Llama-2 + SigLIP) is vicuna_v1,
    40B (Yi-34B + InternViT) is hermes-2, recognisable by its ChatML tokens or its InternViT tower.
    """
    if "<|im_start|>" in special_tokens or vision_model_type.startswith("intern"):
        return "hermes-2"
    return "vicuna_v1"

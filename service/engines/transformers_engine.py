"""The reference engine: the same checkpoint and prompts through a plain transformers forward.

Label probabilities are computed exactly as the vLLM engine computes them (whole-sequence label scoring over
unconstrained log-probs, restricted to the labels and renormalised), from this engine's own logits. It is what
the vLLM engine is held to, and a fallback for hosts without vLLM. One forward at a time (a lock): it is a
reference, not a server for load.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from service.engines.base import (
    CriticQuery,
    DimensionAnswer,
    GeneratedText,
    PooledHidden,
    ProbeResult,
    SamplingOptions,
    clean_reason,
    hidden_at,
    select_label,
)
from service.errors import EngineError, EngineNotReady
from service.families.base import ChatPrompt, CriticFamily, label_prefixes, sequence_probabilities
from service.media import VideoFrames


class TransformersEngine:
    name = "transformers"

    def __init__(self, model_dir: str | Path, family: CriticFamily, *, dtype: str = "float32", device: str = "cpu",
                 num_threads: int | None = None, positions: str = "mrope") -> None:
        self.model_dir = str(model_dir)
        self.family = family
        # pool(): "sequential" = every token at its index in all three M-RoPE sections (VideoAlign's forward)
        self.positions = positions
        self.dtype = dtype
        self.device = device
        self.num_threads = num_threads
        self.model: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.model is not None

    async def start(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        loader = getattr(self.family, "load_hf_model", None)
        if loader is not None:  # families transformers can't build from config alone (VILA)
            model = loader(dtype=getattr(torch, self.dtype))
        else:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=getattr(torch, self.dtype))
        self.model = model.to(self.device).eval()
        self._label_ids = self.family.label_token_ids()
        self._prefixes = label_prefixes(self._label_ids)

    async def stop(self) -> None:
        self.model = None

    async def generate(self, query: CriticQuery) -> list[DimensionAnswer]:
        if not self.ready:
            raise EngineNotReady("the transformers engine is not loaded")
        return await asyncio.to_thread(self._generate_sync, query)

    def _generate_sync(self, query: CriticQuery) -> list[DimensionAnswer]:
        with self._lock:
            try:
                return [self._answer(d, query) for d in query.dimensions]
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"transformers engine failed: {type(exc).__name__}: {str(exc)[:300]}") from exc

    # ---- primitives (service.critics.runner), computed as the vLLM engine computes them ----
    async def probe(self, chat: ChatPrompt, video: VideoFrames, candidates: dict[str, list[int]]) -> ProbeResult:
        return await self._locked(self._probe_sync, chat, video, candidates)

    async def generate_text(self, chat: ChatPrompt, video: VideoFrames, *, max_tokens: int, temperature: float = 0.0,
                            seed: int | None = None, logprob_token_ids: list[int] | None = None) -> GeneratedText:
        return await self._locked(self._generate_text_sync, chat, video, max_tokens, temperature, seed,
                                  logprob_token_ids or [])

    async def pool(self, chat: ChatPrompt, video: VideoFrames, token_ids: list[int]) -> PooledHidden:
        return await self._locked(self._pool_sync, chat, video, list(token_ids))

    async def _locked(self, fn: Any, *args: Any) -> Any:
        if not self.ready:
            raise EngineNotReady("the transformers engine is not loaded")

        def run() -> Any:
            with self._lock:
                try:
                    return fn(*args)
                except (RuntimeError, ValueError) as exc:
                    raise EngineError(f"transformers engine failed: {type(exc).__name__}: {str(exc)[:300]}") from exc

        return await asyncio.to_thread(run)

    def _inputs(self, chat: ChatPrompt, video: VideoFrames) -> dict[str, Any]:
        inputs = self.family.hf_chat(chat, video)  # type: ignore[attr-defined]
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}

    def _probe_sync(self, chat: ChatPrompt, video: VideoFrames, candidates: dict[str, list[int]]) -> ProbeResult:
        import torch

        inputs = self._inputs(chat, video)
        logprobs: dict[tuple[int, ...], dict[int, float]] = {}
        with torch.inference_mode():
            for prefix, next_tokens in label_prefixes(candidates).items():
                lp = torch.log_softmax(self.model(**_extend(inputs, list(prefix))).logits[0, -1].float(), dim=-1)
                logprobs[prefix] = {t: float(lp[t]) for t in next_tokens}
        sequence_logprobs = {c: sum(logprobs[tuple(ids[:k])][ids[k]] for k in range(len(ids)))
                             for c, ids in candidates.items()}
        return ProbeResult(sequence_probabilities(candidates, logprobs), sequence_logprobs,
                           prompt_tokens=int(inputs["input_ids"].shape[1]))

    def _pool_sync(self, chat: ChatPrompt, video: VideoFrames, token_ids: list[int]) -> PooledHidden:
        """The backbone's last hidden state (after its final norm: what the lm_head, or a reward head, reads)."""
        import torch

        inputs = self._inputs(chat, video)
        if self.positions == "sequential":
            n = inputs["input_ids"].shape[1]
            inputs["position_ids"] = torch.arange(n, device=inputs["input_ids"].device).view(1, 1, n).expand(3, 1, n)
        with torch.inference_mode():
            states = self.model.model(**inputs).last_hidden_state[0].float()
        ids = inputs["input_ids"][0].tolist()
        return PooledHidden(hidden=hidden_at(ids, states, token_ids), prompt_tokens=len(ids))

    def _generate_text_sync(self, chat: ChatPrompt, video: VideoFrames, max_tokens: int, temperature: float,
                            seed: int | None, logprob_token_ids: list[int]) -> GeneratedText:
        import torch

        inputs = self._inputs(chat, video)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=temperature > 0,
                                      temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                                      output_logits=True, return_dict_in_generate=True)
        new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        steps = []
        for logits in out.logits[:len(new)]:  # raw logits, as vLLM's default raw log-probs
            lp = torch.log_softmax(logits[0].float(), dim=-1)
            steps.append({t: float(lp[t]) for t in logprob_token_ids})
        tokenizer = getattr(self.family, "tokenizer")
        eos = set(_as_list(getattr(self.model.generation_config, "eos_token_id", None)))
        # vLLM's text leaves the stop token out; so does this
        shown = new[:-1] if new and new[-1] in eos else new
        return GeneratedText(text=tokenizer.decode(shown, skip_special_tokens=True), token_ids=new,
                             step_logprobs=steps, prompt_tokens=int(inputs["input_ids"].shape[1]))

    def _answer(self, dimension: str, query: CriticQuery) -> DimensionAnswer:
        import torch

        inputs = self.family.hf_prompt(query.caption, dimension, query.video)
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        logprobs: dict[tuple[int, ...], dict[int, float]] = {}
        with torch.inference_mode():
            for prefix, next_tokens in self._prefixes.items():
                logits = self.model(**_extend(inputs, list(prefix))).logits[0, -1].float()
                lp = torch.log_softmax(logits, dim=-1)
                logprobs[prefix] = {t: float(lp[t]) for t in next_tokens}
            probabilities = sequence_probabilities(self._label_ids, logprobs)
            label = select_label(probabilities, query.sampling, dimension)
            if not query.sampling.reason:  # reward-only: the label round is the whole score
                text = label
            elif query.sampling.free_answer:  # LiFT's decoding: the whole answer from the prompt on
                text = self._generate(inputs, [], query.sampling, min_new_tokens=0).strip()
            else:
                reason = clean_reason(self._reason(inputs, label, query.sampling))
                text = f"{label}. {reason}".rstrip()
        return DimensionAnswer(dimension=dimension, label=label, probabilities=probabilities,
                               text=text, prompt_tokens=int(inputs["input_ids"].shape[1]))

    def _reason(self, inputs: dict[str, Any], label: str, sampling: SamplingOptions) -> str:
        # The label and its "." forced (the vLLM engine appends the same tokens), then free generation of the
        # reason; min 1 new token: a reason is never empty (both engines)
        forced = self._label_ids[label] + self.family.reason_prefix_ids(label)
        return self._generate(inputs, forced, sampling, min_new_tokens=1)

    def _generate(self, inputs: dict[str, Any], forced: list[int], sampling: SamplingOptions, *,
                  min_new_tokens: int) -> str:
        import torch

        tokenizer = getattr(self.family, "tokenizer")
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        extended = _extend(inputs, forced)
        out = self.model.generate(**extended, max_new_tokens=sampling.max_reason_tokens, min_new_tokens=min_new_tokens,
                                  do_sample=sampling.temperature > 0,
                                  temperature=sampling.temperature if sampling.temperature > 0 else None,
                                  top_p=None, top_k=None)
        new = out[0, extended["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True)


def _extend(inputs: dict[str, Any], suffix: list[int]) -> dict[str, Any]:
    """Append tokens to a processor's batch of one: ids, a 1 in the attention mask, 0 in per-token type ids."""
    import torch

    if not suffix:
        return inputs
    n = inputs["input_ids"].shape[1]
    out = dict(inputs)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (1, n):
            if key == "input_ids":
                tail = torch.tensor([suffix], dtype=value.dtype, device=value.device)
            elif key == "attention_mask":
                tail = torch.ones((1, len(suffix)), dtype=value.dtype, device=value.device)
            else:
                tail = torch.zeros((1, len(suffix)), dtype=value.dtype, device=value.device)
            out[key] = torch.cat([value, tail], dim=1)
    return out


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]

"""The production engine: vLLM's in-process AsyncLLM (continuous batching, prefix caching).

Per video, one request first (it computes the prefix the three questions share), then two rounds, each
dimension's concurrently:
1. label scoring: for each question, one 1-token request per distinct label prefix asking for the
   unconstrained log-probs of exactly the label tokens (`logprob_token_ids`), so a label the tokenizer splits
   into several tokens is scored as its whole sequence;
2. the answer: the chosen label and its `.` (tokenized as in the answer's text, family.reason_prefix_ids) are
   appended to the prompt (as the transformers engine does) and the reason is generated over printable tokens only (a static mask: `allowed_token_ids`), at least one token, at
   most max_reason_tokens: every answer is `<Label>. <reason>`. (The grammar that forced the same format cost
   ~30 % of this round on CPU.)
The frames are decoded once; all requests about one video share its prefix (system + frames + caption), which
vLLM's prefix cache serves after the first computes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

from service.engines.base import (
    REASON_UNPRINTABLE,
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
from service.engines.lifeline import mark_engine_owner
from service.engines.memory import KVCachePlan, plan_kv_cache
from service.errors import EngineDead, EngineError, EngineNotReady, EngineStartError
from service.families.base import ChatPrompt, CriticFamily, PromptInputs, label_prefixes, sequence_probabilities
from service.media import VideoFrames

log = logging.getLogger("lift.engine")
# vLLM's prefix cache reuses whole KV blocks only. With the CPU backend's default of 128 tokens, every request
# after a video's first recomputed up to 127 tokens of shared prefix, and where those reached back into the
# frames' tokens the vision encoder ran again for that request: 1.45x slower per video on the realistic critic
# (benchmarks/profile_vllm_path.py), more the heavier the vision tower. 32 is the smallest block the CPU
# attention kernel takes; GPUs default to 16.
CPU_BLOCK_SIZE = 32
_UNPRINTABLE = re.compile(REASON_UNPRINTABLE)
# A critic read by a reward head on hidden states (service.critics.spec.HeadChannel; VideoAlign): the checkpoint
# runs as a pooling model (vLLM's embedding adapter over the generative architecture, no extra layers), every
# prompt token's final hidden state returned unnormalised (`token_embed`, ALL pooling); the head is ours.
POOLING_ENGINE_ARGS: dict[str, Any] = {"runner": "pooling", "convert": "embed",
                                       "pooler_config": {"pooling_type": "ALL", "use_activation": False}}


def pooling_engine_args(positions: str = "mrope") -> dict[str, Any]:
    """POOLING_ENGINE_ARGS; with positions "sequential", vLLM's Qwen2-VL with every token at its index in all
    three M-RoPE sections (service.families.videoalign.vllm_model), registered in each engine process by vLLM."""
    if positions == "mrope":
        return dict(POOLING_ENGINE_ARGS)
    from service.families.videoalign import ARCHITECTURE, VLLM_MODEL_PATH

    return {**POOLING_ENGINE_ARGS, "hf_overrides": {"architectures": [ARCHITECTURE]},
            "model_class_overrides": {ARCHITECTURE: VLLM_MODEL_PATH}}


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        family: CriticFamily,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        max_num_seqs: int = 64,
        max_num_frames: int = 16,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        kv_cache_gb: float | None = None,
        block_size: int | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        limit_mm_per_prompt: dict[str, int] | None = None,
        extra_engine_args: dict[str, Any] | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.family = family
        self._args = dict(
            model=self.model_dir, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size, seed=seed, enable_prefix_caching=True,
            # sampling is decided per request here, not by the checkpoint's generation_config.json
            generation_config="vllm",
            limit_mm_per_prompt=limit_mm_per_prompt
            or getattr(family, "mm_limits", lambda n: {"video": 1, "image": 0})(max_num_frames),
        )
        if block_size is None and _is_cpu():
            block_size = CPU_BLOCK_SIZE
        if block_size is not None:
            self._args["block_size"] = block_size
        if enforce_eager is None:
            enforce_eager = _is_cpu()
        self._args["enforce_eager"] = enforce_eager
        self._args.update(extra_engine_args or {})
        # memory is decided at start (service.engines.memory), from the work unless a setting says otherwise
        self._kv_cache_gb = kv_cache_gb
        self._gpu_memory_utilization = gpu_memory_utilization
        self.memory_plan: KVCachePlan | None = None
        self._engine: Any = None
        self._label_ids: dict[str, list[int]] = {}
        self._prefixes: dict[tuple[int, ...], set[int]] = {}
        self._reason_prefix_ids: dict[str, list[int]] = {}
        self._reason_token_ids: list[int] = []

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self.dead

    @property
    def dead(self) -> bool:
        """Started, then lost (EngineCore or its worker exited): vLLM does not restart it."""
        return self._engine is not None and bool(getattr(self._engine, "errored", False))

    @property
    def block_size(self) -> int | None:
        """The KV block size the started engine uses (prefix reuse is per whole block)."""
        if self._engine is None:
            return self._args.get("block_size")
        return int(self._engine.vllm_config.cache_config.block_size)

    @property
    def dtype(self) -> str:
        """The dtype the started engine runs in ('auto' resolved by vLLM), else the one asked."""
        if self._engine is None:
            return str(self._args["dtype"])
        return str(self._engine.vllm_config.model_config.dtype).removeprefix("torch.")

    @property
    def engine_args(self) -> dict[str, Any]:
        return dict(self._args)

    @property
    def pooling(self) -> bool:
        """Runs as a pooling model (POOLING_ENGINE_ARGS): `pool` only, nothing generated."""
        return self._args.get("runner") == "pooling"

    async def start(self) -> None:
        if self._engine is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if not self.pooling:  # a pooling engine generates nothing: no labels, no reason tokens
            self._label_ids = self.family.label_token_ids()
            self._prefixes = label_prefixes(self._label_ids)
            tokenizer = self.family.tokenizer  # type: ignore[attr-defined]
            self._reason_prefix_ids = {label: self.family.reason_prefix_ids(label) for label in self._label_ids}
            self._reason_token_ids = printable_token_ids(tokenizer)
        self.memory_plan = plan_kv_cache(
            self.model_dir, on_cpu=_is_cpu(), max_model_len=self._args["max_model_len"],
            max_num_seqs=self._args["max_num_seqs"], dtype=self._args["dtype"], kv_cache_gb=self._kv_cache_gb,
            gpu_memory_utilization=self._gpu_memory_utilization)
        log.info("vLLM engine memory: %s", self.memory_plan.detail,
                 extra={"fields": {"kv_cache_bytes": self.memory_plan.kv_cache_bytes, "source": self.memory_plan.source}})
        args = AsyncEngineArgs(**{**self.memory_plan.engine_args(), **self._args})  # extra_engine_args win
        mark_engine_owner()  # the engine's processes die with this one, however it ends (lifeline.py)
        # engine construction blocks for tens of seconds (weights, KV cache, worker start): keep the loop free
        try:
            self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        except Exception as exc:  # noqa: BLE001 - vLLM's root cause is in its worker's log; say where, in one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise EngineStartError(
                f"the vLLM engine failed to start: {type(exc).__name__}: {first} (vLLM's log above, on stderr, "
                f"has the cause; {self.memory_plan.detail})") from None
        log.info("vLLM engine ready: %s", self.model_dir)

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)

    async def generate(self, query: CriticQuery) -> list[DimensionAnswer]:
        if self.dead:
            raise EngineDead("the vLLM engine died; this process will exit to be restarted")
        if not self.ready:
            raise EngineNotReady("the vLLM engine is not running")
        prompts = {d: self.family.vllm_prompt(query.caption, d, query.video) for d in query.dimensions}
        dims = list(prompts)
        # vLLM's prefix cache serves only requests scheduled after the one that computed the blocks: sent all at
        # once (and under load, with other videos' requests) every request about this video would compute its
        # frames again. So one request goes first and computes the long shared prefix (system, frames, caption);
        # the others then prefill only their question and label tails.
        first = await self._run(prompts[dims[0]], [], self._label_params(()))
        return list(await asyncio.gather(*(
            self._answer(d, prompts[d], query.sampling, known={(): first} if i == 0 else None)
            for i, d in enumerate(dims))))

    # ---- primitives (service.critics.runner) ----
    async def probe(self, chat: ChatPrompt, video: VideoFrames, candidates: dict[str, list[int]]) -> ProbeResult:
        from vllm import SamplingParams

        self._check_running()
        prompt = self.family.vllm_chat(chat, video)  # type: ignore[attr-defined]
        prefixes = label_prefixes(candidates)
        # the shared prefix (system, frames, question) first: the other prefixes' requests then hit the cache
        order = sorted(prefixes, key=len)
        first = await self._run(prompt, list(order[0]), SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=sorted(prefixes[order[0]]), detokenize=False))
        rest = await asyncio.gather(*(self._run(prompt, list(p), SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=sorted(prefixes[p]), detokenize=False))
            for p in order[1:]))
        logprobs: dict[tuple[int, ...], dict[int, float]] = {}
        for prefix, out in zip(order, [first, *rest]):
            step = out.outputs[0].logprobs[0]
            logprobs[prefix] = {tok: step[tok].logprob for tok in prefixes[prefix]}
        probabilities = sequence_probabilities(candidates, logprobs)
        sequence_logprobs = {c: sum(logprobs[tuple(ids[:k])][ids[k]] for k in range(len(ids)))
                             for c, ids in candidates.items()}
        return ProbeResult(probabilities, sequence_logprobs, prompt_tokens=len(first.prompt_token_ids or []),
                           cached_tokens=first.num_cached_tokens or 0)

    async def generate_text(self, chat: ChatPrompt, video: VideoFrames, *, max_tokens: int, temperature: float = 0.0,
                            seed: int | None = None, logprob_token_ids: list[int] | None = None) -> GeneratedText:
        from vllm import SamplingParams

        self._check_running()
        prompt = self.family.vllm_chat(chat, video)  # type: ignore[attr-defined]
        # logprob_token_ids: the full-vocabulary log-probs of exactly these ids at every step (no top-k bound)
        out = await self._run(prompt, [], SamplingParams(
            max_tokens=max_tokens, temperature=temperature, seed=seed, logprob_token_ids=logprob_token_ids or None))
        completion = out.outputs[0]
        steps: list[dict[int, float]] = []
        for step in completion.logprobs or []:
            steps.append({tok: lp.logprob for tok, lp in step.items() if tok in set(logprob_token_ids or [])})
        return GeneratedText(text=completion.text, token_ids=list(completion.token_ids), step_logprobs=steps,
                             prompt_tokens=len(out.prompt_token_ids or []), cached_tokens=out.num_cached_tokens or 0)

    async def pool(self, chat: ChatPrompt, video: VideoFrames, token_ids: list[int]) -> PooledHidden:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        self._check_running()
        if not self.pooling:
            raise EngineError("this vLLM engine generates; a reward head needs one started as a pooling model "
                              "(extra_engine_args POOLING_ENGINE_ARGS; Critic.from_pretrained does so for it)")
        prompt = self.family.vllm_chat(chat, video)  # type: ignore[attr-defined]
        request = TokensPrompt(prompt_token_ids=prompt.token_ids, multi_modal_data=prompt.vllm_mm_data)
        request_id = uuid.uuid4().hex
        final = None
        try:
            async for output in self._engine.encode(request, PoolingParams(task="token_embed", use_activation=False),
                                                    request_id):
                final = output
        except asyncio.CancelledError:
            await self._engine.abort(request_id)
            raise
        except Exception as exc:  # noqa: BLE001 - as _run: the engine's failure, not the client's
            if self.dead:
                raise EngineDead(f"the vLLM engine died: {type(exc).__name__}") from exc
            raise EngineError(f"vLLM engine failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
        if final is None:
            raise EngineError("vLLM engine returned no output")
        # the ids as the model saw them (media placeholders expanded), one hidden state per id
        ids = list(final.prompt_token_ids)
        states = final.outputs.data
        return PooledHidden(hidden=hidden_at(ids, states, token_ids), prompt_tokens=len(ids))

    def _check_running(self) -> None:
        if self.dead:
            raise EngineDead("the vLLM engine died; this process will exit to be restarted")
        if not self.ready:
            raise EngineNotReady("the vLLM engine is not running")

    def _label_params(self, prefix: tuple[int, ...]) -> Any:
        """One step, the unconstrained log-probs of exactly the tokens that extend `prefix` towards a label."""
        from vllm import SamplingParams

        return SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=sorted(self._prefixes[prefix]),
                              detokenize=False)

    async def _answer(self, dimension: str, prompt: PromptInputs, sampling: SamplingOptions,
                      known: dict[tuple[int, ...], Any] | None = None) -> DimensionAnswer:
        from vllm import SamplingParams

        known = known or {}
        prefixes = list(self._prefixes)
        missing = [prefix for prefix in prefixes if prefix not in known]
        ran = await asyncio.gather(*(self._run(prompt, list(prefix), self._label_params(prefix)) for prefix in missing))
        by_prefix = {**known, **dict(zip(missing, ran))}
        outs = [by_prefix[prefix] for prefix in prefixes]
        logprobs = {}
        for prefix, out in zip(prefixes, outs):
            step = out.outputs[0].logprobs[0]
            logprobs[prefix] = {tok: step[tok].logprob for tok in self._prefixes[prefix]}
        probabilities = sequence_probabilities(self._label_ids, logprobs)
        label = select_label(probabilities, sampling, dimension)

        if not sampling.reason:  # reward-only: the label round is the whole score
            cached = [o.num_cached_tokens or 0 for o in outs]
            return DimensionAnswer(
                dimension=dimension, label=label, probabilities=probabilities, text=label,
                prompt_tokens=len(outs[0].prompt_token_ids or []), cached_tokens=cached[0],
                extra={"cached_tokens_all": cached, "prompt_tokens_all": [len(o.prompt_token_ids or []) for o in outs],
                       "label_requests": len(prefixes)})
        if sampling.free_answer:  # LiFT's decoding: the whole answer from the prompt on, nothing forced
            out = await self._run(prompt, [], SamplingParams(
                max_tokens=sampling.max_reason_tokens, temperature=sampling.temperature, seed=sampling.seed))
            text = out.outputs[0].text.strip()
        else:
            out = await self._run(prompt, self._label_ids[label] + self._reason_prefix_ids[label], SamplingParams(
                max_tokens=sampling.max_reason_tokens, min_tokens=1, temperature=sampling.temperature,
                seed=sampling.seed, allowed_token_ids=self._reason_token_ids))
            text = f"{label}. {clean_reason(out.outputs[0].text)}".rstrip()
        cached = [o.num_cached_tokens or 0 for o in outs] + [out.num_cached_tokens or 0]
        prompt_lengths = [len(o.prompt_token_ids or []) for o in [*outs, out]]
        return DimensionAnswer(
            dimension=dimension, label=label, probabilities=probabilities, text=text,
            prompt_tokens=len(out.prompt_token_ids or []), cached_tokens=cached[0],
            extra={"cached_tokens_all": cached, "prompt_tokens_all": prompt_lengths, "label_requests": len(prefixes)},
        )

    async def _run(self, prompt: PromptInputs, suffix: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        request = TokensPrompt(prompt_token_ids=prompt.token_ids + suffix, multi_modal_data=prompt.vllm_mm_data)
        request_id = uuid.uuid4().hex
        final = None
        try:
            async for output in self._engine.generate(request, params, request_id):
                final = output
        except asyncio.CancelledError:
            await self._engine.abort(request_id)
            raise
        except Exception as exc:  # the engine died or refused: a service-side failure, not the client's
            if self.dead:
                raise EngineDead(f"the vLLM engine died: {type(exc).__name__}") from exc
            raise EngineError(f"vLLM engine failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
        if final is None or not final.outputs:
            raise EngineError("vLLM engine returned no output")
        return final


def printable_token_ids(tokenizer: Any) -> list[int]:
    """Tokens a reason may use: those that decode to printable text (no control bytes, no broken UTF-8, no
    special tokens), plus end-of-sequence so that a reason can end before its bound."""
    special = set(tokenizer.all_special_ids)
    allowed = [i for i in range(len(tokenizer)) if i not in special
               and (text := tokenizer.decode([i])) and not _UNPRINTABLE.search(text)]
    if tokenizer.eos_token_id is not None:
        allowed.append(int(tokenizer.eos_token_id))
    return allowed


def _is_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()
    except Exception:  # noqa: BLE001 - platform probing must not stop engine construction
        return os.environ.get("VLLM_TARGET_DEVICE") == "cpu"

"""Critic throughput: the original LiFT way vs the vLLM engine, same critic, same kind of videos, one run, for two critics.

Critics (both qwen2_vl, random weights, built offline): `tiny` (256 visual tokens, a 2-layer 128-wide LLM: per-
request overhead sets the pace) and `realistic` (`lift make-tiny-critic --preset realistic`: LiFT-Critic-13B's
token proportions, 8 frames x ~200 visual tokens, LiFT's questions, ~40-token answers, a 4-layer 256-wide LLM,
the vision tower ~10 % of a question's compute as in the 13B critic).
For each:
(a) original: transformers, the video decoded again for every question, the three questions one after
    another, batch 1, `generate` of the whole answer: sampled at T=0.2 as LiFT's seed does, and greedy;
(b) the vLLM engine through `Critic.score` (decode once, three questions together, prefix computed once,
    continuous batching) at concurrency 1, 8 and 32, greedy, the same maximum of new tokens; each run on videos of
    its own (a second pass over the same frames would measure the prefix cache, not the engine).
(b') the same at concurrency 32 with vLLM's CPU worker bound to every core (VLLM_CPU_OMP_THREADS_BIND): by default
    vLLM keeps one core for its scheduler, half of a 2-core host; shown beside, not used for the speedup.
Prints a table per critic, then one `speedup=<b at 32 over a, T=0.2>` line per critic, the realistic one last.

`--critic cosmos-reason1|videoscore2|unifiedreward|videoalign` (service/critics/; default lift, the comparison
above): that critic's tiny Qwen2.5-VL model (`build_tiny_qwen2_5_vl(critic=NAME)`: fine-tuned to write
videoscore2's and unifiedreward's answer formats, random otherwise); videoalign's a tiny random VideoReward release
in its layout (`build_tiny_videoalign_release`, a tiny Qwen2-VL + LoRA + rm_head) converted by
`convert_videoalign` as `lift convert-videoalign` does, then
(a) its ORIGINAL inference loop as its repository runs it (docs/critics/NAME.md), written here: transformers,
    one video at a time, `processor.apply_chat_template` + `processor(...)` + `model(...)` / `model.generate`,
    the video decoded its own way. cosmos-reason1 (Cosmos-RL's reward service): every k-th frame (<= 160, even
    count, fps / k), smart_resize to the 9,216-token budget, bicubic; one forward; softmax over the "Yes" and
    "No" logits. videoscore2 (vs2_inference.py): frames at 2 fps as qwen-vl-utils picks and resizes them (our
    FrameRule / PixelRule of the spec, i.e. the training limits), `generate(output_scores=True,
    return_dict_in_generate=True)` sampled at T = 0.7 as the script, its regex, its soft score from the scores
    at each digit's step. unifiedreward (point_score_APS_video_generation.py): 16 frames int(i * N / 16) read with
    OpenCV, written as JPEGs, reopened as 16 PIL images; greedy generate; Pref-GRPO's regex. videoalign
    (inference.py's VideoVLMRewardInference.reward): prepare_batch's chat (the video, then build_prompt's text with
    the caption), its vision_process fetch_video (decord, its smart_nframes at 2 fps with linspace indices: our
    FrameRule; smart_resize between 128*28*28 and 200,704 pixels: our PixelRule; torchvision bicubic with
    antialias), the processor with do_rescale, one forward of its Qwen2VLRewardModelBT (reproduced by
    service/families/videoalign/reference.py: position_ids None, rm_head read at the three reward tokens), _norm
    with inference_config, Overall = VQ + MQ + TA.
(b) our engine: `Critic.from_pretrained(..., engine="vllm", critic=NAME)` at concurrency 32 over fresh videos,
    the same maximum of new tokens and the original's temperature (videoscore2 0.7, unifiedreward greedy;
    cosmos-reason1 and videoalign generate nothing).
Prints one table (rows (a) and (b); videos, wall s, videos/s, p50/p95 latency) and `speedup=<b over a> critic=NAME`.
Both ways get one warm-up video first (not timed). Logs go to stderr, the table alone to stdout. On a shared host
pass `--original-threads 1`: torch's two OpenMP threads beside another busy process slow the tiny model's
loop 4-28x (measured on the 2-core VM, 2026-12-06), which would inflate the speedup.

Usage: python benchmarks/critic_throughput.py [--videos 48] [--baseline-videos 24] [--max-new-tokens 40]
                                              [--critics tiny,realistic]
       python benchmarks/critic_throughput.py --critic videoscore2 [--videos 96] [--baseline-videos 16]
                                              [--max-new-tokens 64] [--original-threads 1] [--model-dir DIR]
       (--critic: cosmos-reason1, videoscore2, unifiedreward or videoalign)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import string
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # the table alone on stdout
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

CAPTION = "a coloured square moving"


def make_videos(folder: Path, n: int, first: int = 0) -> list[Path]:
    """`n` distinct H.264 videos (numbered from `first`). A run never re-scores another run's videos: the engine
    keeps every video's KV blocks in its prefix cache, so a second pass over the same frames measures the cache."""
    from service.synthetic_videos import COLOURS, moving_square, unique_background, write_video

    colours = list(COLOURS)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"v{i}", moving_square(num_frames=24, height=96, width=128, colour=colours[i % len(colours)],
                                                          background=unique_background(i), seed=i, jitter=0.1 * (i % 3)),
                        codec="h264_mp4")
            for i in range(first, first + n)]


def original_way(model_dir: Path, videos: list[Path], max_new_tokens: int, temperature: float,
                 dtype: str = "float32") -> float:
    """LiFT's evaluation loop: per question, decode the video and generate the answer; batch 1."""
    import torch
    from transformers import AutoModelForImageTextToText

    from service.families.qwen2_vl import Qwen2VLFamily
    from service.media import decode_video
    from service.rubric import DIMENSION_NAMES

    family = Qwen2VLFamily(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # LiFT ran its loop on the GPU
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype="auto" if dtype == "auto" else getattr(torch, dtype)).to(device).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for video in videos:
            for dim in DIMENSION_NAMES:
                frames = decode_video(video, 8)
                inputs = {k: v.to(device) if hasattr(v, "to") else v
                          for k, v in family.hf_prompt(CAPTION, dim, frames).items()}
                if temperature > 0:
                    model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
                else:
                    model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return time.perf_counter() - t0


async def engine_way(model_dir: Path, videos: dict[int, list[Path]], max_new_tokens: int, all_cores: bool = False,
                     dtype: str = "float32", critic_name: str = "lift", temperature: float | None = None,
                     parse_failure_value: float | None = None, responses: list | None = None) -> dict:
    """Videos per concurrency, each list its own (none scored twice), plus one more for the warm-up under -1.
    `critic_name` other than lift: that critic (service/critics/); `responses` collects the timed runs' answers."""
    from service.critic import Critic
    from service.protocol import ScoreOptions

    critic = Critic.from_pretrained(model_dir, engine="vllm", dtype=dtype, max_model_len=4096, max_num_seqs=256,
                                    critic=critic_name, parse_failure_value=parse_failure_value)
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if all_cores:  # read by the worker when it starts
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{(os.cpu_count() or 1) - 1}"
    try:
        await critic.start()
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    opts = ScoreOptions(max_reason_tokens=max_new_tokens, temperature=temperature)
    await critic.score(videos[-1][0], "warm up", opts)  # first-request costs
    results = {}
    for conc in sorted(c for c in videos if c > 0):
        sem = asyncio.Semaphore(conc)
        latencies: list[float] = []

        async def one(video: Path) -> None:
            async with sem:
                t = time.perf_counter()
                response = await critic.score(video, CAPTION, opts)
                latencies.append(time.perf_counter() - t)
                if responses is not None:
                    responses.append(response)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(v) for v in videos[conc]))
        results[conc] = (time.perf_counter() - t0, sorted(latencies))
    await critic.stop()
    return results


# ---- the other critics (--critic NAME): each one's original loop, written here from docs/critics/NAME.md ----
OTHER_CRITICS = ("cosmos-reason1", "videoscore2", "unifiedreward", "videoalign")
# their defaults: videos for the engine (three waves of 32), for the original loop, max new tokens (the tiny
# models' answers are 10-60 tokens; the scripts allow 1,024 / 4,096)
CRITIC_DEFAULTS = {"videos": 96, "baseline_videos": 16, "max_new_tokens": 64}
# the decoding of each original: vs2_inference.py samples at T = 0.7; UnifiedReward's request says do_sample False
# (greedy here); Cosmos and VideoAlign generate nothing. The engine is run at the same temperature.
ORIGINAL_TEMPERATURE = {"cosmos-reason1": None, "videoscore2": 0.7, "unifiedreward": 0.0, "videoalign": None}
# the tiny model's family, as the table's title names it
TINY_FAMILY = {"videoalign": "qwen2_vl"}


@dataclass
class Answer:
    """One video's answer in an original loop: the critic's value(s), its answer's tokens, whether it parsed."""

    value: object
    text: str = ""
    parsed: bool = True


def _all_frames(video: Path):
    """Every frame, uint8 (T, H, W, 3), and the video's fps: what Cosmos-RL's service receives (a THWC tensor)."""
    import decord

    reader = decord.VideoReader(str(video), ctx=decord.cpu(0))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), float(reader.get_avg_fps())


def cosmos_original(model, processor, video: Path, caption: str, max_new_tokens: int, scratch: Path) -> Answer:
    """Cosmos-RL reward service (`CosmosReason1Reward`): stride to <= 160 frames, even count, smart_resize to a
    9,216-token clip budget, bicubic PIL frames; system prompt, the video then the caption; one forward; softmax
    over just the "Yes" and "No" logits at the answer's first position; the reward is P("No")."""
    import torch
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from service.critics.cosmos_reason1 import MAX_FRAMES, SYSTEM_PROMPT, TARGET_NUM_TOKENS

    frames, video_fps = _all_frames(video)
    interval = max(1, (len(frames) - 1) // MAX_FRAMES + 1)
    frames, sample_fps = frames[::interval], video_fps / interval
    if len(frames) % 2:
        frames = frames[:-1]
    height, width = smart_resize(frames.shape[1], frames.shape[2], factor=28, min_pixels=16 * 28 * 28 * 2,
                                 max_pixels=TARGET_NUM_TOKENS * 28 * 28 * 2 // len(frames))
    clip = [Image.fromarray(f).resize((width, height), resample=Image.Resampling.BICUBIC) for f in frames]
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [{"type": "video", "video": clip, "fps": sample_fps},
                                             {"type": "text", "text": caption}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[clip], fps=sample_fps, do_sample_frames=False,
                       return_tensors="pt").to(model.device)
    logits = model(**inputs).logits[0, -1, :]
    yes = processor.tokenizer.encode("Yes", add_special_tokens=False)[0]
    no = processor.tokenizer.encode("No", add_special_tokens=False)[0]
    p_no = torch.softmax(torch.tensor([logits[yes].item(), logits[no].item()]), dim=0)[1].item()
    return Answer(value=p_no)


def videoscore2_original(model, processor, video: Path, caption: str, max_new_tokens: int, scratch: Path) -> Answer:
    """VideoScore2's vs2_inference.py: the video at 2 fps (qwen-vl-utils' frame count and smart_resize; torchvision
    bicubic with antialias), its query with the caption in $t2v_prompt, `generate` with output_scores sampled at
    T = 0.7, its regex (first match), and per dimension its soft score: at the step that wrote the digit after the
    dimension's label, the likeliest of "1".."5" times its probability renormalised over the five."""
    import decord
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    from service.critics.videoscore2 import DIMENSION_LABELS, OFFICIAL_PATTERN, QUERY_TEMPLATE, SPEC

    reader = decord.VideoReader(str(video), ctx=decord.cpu(0))
    indices = SPEC.media.frames.indices(len(reader), float(reader.get_avg_fps()))
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)  # TCHW
    height, width = SPEC.media.pixels.frame_size(frames.shape[2], frames.shape[3], len(indices))
    frames = resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    query = string.Template(QUERY_TEMPLATE).substitute(t2v_prompt=caption)
    messages = [{"role": "user", "content": [{"type": "video", "video": str(video), "fps": 2.0},
                                             {"type": "text", "text": query}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[frames], fps=2.0, do_sample_frames=False, padding=True,
                       return_tensors="pt").to(model.device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True,
                         do_sample=True, temperature=ORIGINAL_TEMPERATURE["videoscore2"])
    start = inputs["input_ids"].shape[1]
    gen_ids = out.sequences[0, start:].tolist()
    answer = processor.batch_decode(out.sequences[:, start:], skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)[0]
    if not OFFICIAL_PATTERN.search(answer):
        return Answer(value=None, text=answer, parsed=False)
    soft = {dim: _vs2_soft_score(processor.tokenizer, gen_ids, out.scores, label + ":")
            for dim, label in DIMENSION_LABELS.items()}
    return Answer(value=soft, text=answer)


def _vs2_soft_score(tokenizer, gen_ids: list[int], scores, label: str) -> float | None:
    import torch

    written = tokenizer.decode(gen_ids, skip_special_tokens=False)
    found = re.search(r"(?:\(\d+\)\s*|\n\s*)?" + re.escape(label), written, re.IGNORECASE)
    digit = re.search(r"\d", written[found.end():]) if found else None
    if digit is None:
        return None
    target = written[: found.end() + digit.start() + 1]
    step = next((i for i in range(len(gen_ids))
                 if tokenizer.decode(gen_ids[: i + 1], skip_special_tokens=False) == target), -1)
    if step < 0:
        return None
    logp = torch.log_softmax(scores[step][0].float(), dim=-1)
    p = {}
    for s in "12345":
        ids = tokenizer.encode(s, add_special_tokens=False)
        if len(ids) == 1:
            p[s] = float(torch.exp(logp[ids[0]]))
    total = sum(p.values())
    if not total:  # every digit masked by the sampler's top-k
        return None
    best = max(p, key=lambda s: p[s])
    return round(int(best) * p[best] / total, 4)


def unifiedreward_original(model, processor, video: Path, caption: str, max_new_tokens: int,
                           scratch: Path) -> Answer:
    """UnifiedReward 2.0's point_score_APS_video_generation.py: frames int(i * N / 16) read in order with OpenCV
    (N its frame count), each written as a JPEG and reopened as an RGB PIL image; 16 images then the prompt in one
    user turn; greedy `generate`; Pref-GRPO's "(\\w+) Score (1-5): X" regex, the last match per name."""
    import cv2
    from PIL import Image

    from service.critics.unifiedreward import NUM_FRAMES, PROMPT_TEMPLATE

    capture = cv2.VideoCapture(str(video))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = {int(i * total / NUM_FRAMES) for i in range(NUM_FRAMES)}
    paths: list[Path] = []
    index = 0
    while len(paths) < NUM_FRAMES:
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            paths.append(scratch / f"video_frame_{index:03d}.jpg")
            cv2.imwrite(str(paths[-1]), frame)
        index += 1
    capture.release()
    images = [Image.open(path).convert("RGB") for path in paths]
    messages = [{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                             {"type": "text", "text": PROMPT_TEMPLATE.replace("{prompt}", caption)}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=images, return_tensors="pt").to(model.device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)[0]
    found = dict(re.findall(r"(\w+) Score \(1-5\):\s*([0-5](?:\.\d+)?)", answer))
    parsed = all(name in found for name in ("Alignment", "Physics", "Style"))
    return Answer(value={k: float(v) for k, v in found.items()}, text=answer, parsed=parsed)


def videoalign_original(model, processor, video: Path, caption: str, max_new_tokens: int, scratch: Path) -> Answer:
    """VideoAlign's inference.py, `VideoVLMRewardInference.reward([video], [caption], use_norm=True)` at batch 1:
    prepare_batch's chat (one user turn: the video with fps 2 / max_pixels 200,704 / sample_type "uniform", then
    build_prompt(caption), the "detailed_special" template), its vision_process.fetch_video (decord; smart_nframes
    at 2 fps rounded to an even count, torch.linspace(...).round() indices; smart_resize between 128*28*28 and
    200,704 pixels, torchvision bicubic with antialias on the uint8 frames, then .float()), the processor with
    videos_kwargs do_rescale, one forward of its reward model (position_ids None, rm_head at the three reward
    tokens: (1, 3)), `_norm` by inference_config, Overall = VQ + MQ + TA."""
    import decord
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    from service.critics.videoalign import (DETAILED_PROMPT_WITH_SPECIAL_TOKEN, EVAL_DIMS, FPS, MAX_FRAME_PIXELS,
                                            NORMALISATION, SPEC)

    reader = decord.VideoReader(str(video), ctx=decord.cpu(0))
    indices = SPEC.media.frames.indices(len(reader), float(reader.get_avg_fps()))
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)  # TCHW uint8
    height, width = SPEC.media.pixels.frame_size(frames.shape[2], frames.shape[3], len(indices))
    frames = resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    text = DETAILED_PROMPT_WITH_SPECIAL_TOKEN.format(text_prompt=caption)  # build_prompt
    messages = [{"role": "user", "content": [{"type": "video", "video": f"file://{video}", "fps": FPS,
                                              "max_pixels": MAX_FRAME_PIXELS, "sample_type": "uniform"},
                                             {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[chat], videos=[frames], padding=True, return_tensors="pt", do_sample_frames=False,
                       videos_kwargs={"do_rescale": True}).to(model.device)
    logits = model(**inputs)["logits"]  # (1, 3): VQ, MQ, TA
    rewards = {}
    for i, dim in enumerate(EVAL_DIMS):
        mean, std = NORMALISATION[dim]
        rewards[EVAL_DIMS[dim]] = (logits[0, i].item() - mean) / std  # _norm
    rewards["Overall"] = rewards["VQ"] + rewards["MQ"] + rewards["TA"]
    return Answer(value=rewards)


ORIGINAL_LOOPS = {"cosmos-reason1": cosmos_original, "videoscore2": videoscore2_original,
                  "unifiedreward": unifiedreward_original, "videoalign": videoalign_original}


def critic_original_way(name: str, model_dir: Path, videos: list[Path], warm_up: Path, max_new_tokens: int,
                        scratch: Path, dtype: str = "float32",
                        threads: int | None = None) -> tuple[float, list[float], list[Answer]]:
    """The critic's own loop, one video at a time (decode, prompt, forward or generate, parse); one warm-up video
    first, `threads` torch threads (None: torch's default, one per core). Returns the wall time, the per-video
    latencies (sorted) and the answers."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if threads:
        torch.set_num_threads(threads)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = AutoProcessor.from_pretrained(model_dir)
    if name == "videoalign":  # its Qwen2VLRewardModelBT: Qwen2-VL + rm_head, its own forward (reference.py)
        from service.families.videoalign.reference import VideoAlignRewardModel

        model = VideoAlignRewardModel.from_converted(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype="auto" if dtype == "auto" else getattr(torch, dtype)).to(device).eval()
    loop = ORIGINAL_LOOPS[name]
    scratch.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    latencies, answers = [], []
    with torch.no_grad():
        loop(model, processor, warm_up, "warm up", max_new_tokens, scratch)
        t0 = time.perf_counter()
        for video in videos:
            t = time.perf_counter()
            answers.append(loop(model, processor, video, CAPTION, max_new_tokens, scratch))
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    return wall, sorted(latencies), answers


def tiny_model_for(name: str, folder: Path) -> Path:
    """The critic's tiny Qwen2.5-VL model in `folder`: reused when `folder` holds one built for this critic.
    videoalign: a tiny VideoReward release (built in a temporary folder) converted into `folder`."""
    if name == "videoalign":
        return tiny_videoalign_for(folder)
    from service.tiny_critics import qwen2_5_vl

    trained = name if name in getattr(qwen2_5_vl, "TRAINED_CRITICS", ()) else None
    record = folder / "lift_critic.json"
    if record.is_file() and json.loads(record.read_text()).get("trained_format") == trained \
            and (folder / "config.json").is_file():
        print(f"reusing the tiny {name} model in {folder}", file=sys.stderr, flush=True)
        return folder
    t = time.perf_counter()
    out = qwen2_5_vl.build_tiny_qwen2_5_vl(folder, seed=0, critic=name)
    print(f"built the tiny {name} model in {time.perf_counter() - t:.0f} s ({folder})", file=sys.stderr, flush=True)
    return out


def tiny_videoalign_for(folder: Path) -> Path:
    """A tiny random VideoReward release in its layout, converted as `lift convert-videoalign` does (float32) into
    `folder`; reused when `folder` holds a videoalign conversion."""
    from service.families.videoalign.convert import convert_videoalign
    from service.tiny_critics.videoalign import build_tiny_videoalign_release

    record = folder / "lift_critic.json"
    if record.is_file() and json.loads(record.read_text()).get("critic") == "videoalign" \
            and (folder / "config.json").is_file():
        print(f"reusing the tiny videoalign model in {folder}", file=sys.stderr, flush=True)
        return folder
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        release = build_tiny_videoalign_release(Path(tmp), seed=0)
        out = convert_videoalign(release, folder, dtype="float32").out_dir
    print(f"built and converted the tiny videoalign release in {time.perf_counter() - t:.0f} s ({folder})",
          file=sys.stderr, flush=True)
    return Path(out)


def _answer_tokens(tokenizer, texts: list[str]) -> float:
    """Mean tokens of the answers' text (both ways counted alike: the stripped text tokenized again)."""
    return sum(len(tokenizer(t.strip(), add_special_tokens=False).input_ids) for t in texts) / max(1, len(texts))


def run_other_critic(name: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    videos = args.videos or CRITIC_DEFAULTS["videos"]
    baseline = args.baseline_videos or CRITIC_DEFAULTS["baseline_videos"]
    max_new_tokens = args.max_new_tokens or CRITIC_DEFAULTS["max_new_tokens"]
    generating = ORIGINAL_TEMPERATURE[name] is not None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = tiny_model_for(name, Path(args.model_dir) if args.model_dir else tmp_path / name)
        # every run its own videos: the original's warm-up and timed ones, the engine's warm-up and timed ones
        original_videos = make_videos(tmp_path / "videos", baseline + 1, 0)
        engine_videos = make_videos(tmp_path / "videos", videos + 1, baseline + 1)
        t = time.perf_counter()
        wall_a, lat_a, answers_a = critic_original_way(name, model_dir, original_videos[1:], original_videos[0],
                                                       max_new_tokens, tmp_path / "frames", args.dtype,
                                                       args.original_threads)
        print(f"original loop: {baseline} videos in {wall_a:.1f} s ({time.perf_counter() - t:.0f} s with loading)",
              file=sys.stderr, flush=True)
        responses: list = []
        t = time.perf_counter()
        runs = asyncio.run(engine_way(model_dir, {-1: engine_videos[:1], 32: engine_videos[1:]}, max_new_tokens,
                                      dtype=args.dtype, critic_name=name, temperature=ORIGINAL_TEMPERATURE[name],
                                      parse_failure_value=1.0 if generating else None, responses=responses))
        wall_b, lat_b = runs[32]
        print(f"engine: {videos} videos in {wall_b:.1f} s ({time.perf_counter() - t:.0f} s with start and stop)",
              file=sys.stderr, flush=True)
        answers = ""
        if generating:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            texts_b = [next(iter(r.dimensions.values())).rationale or "" for r in responses]
            parsed_b = sum(all(d.parsed for d in r.dimensions.values()) for r in responses)
            answers = (f"; answers: original {_answer_tokens(tokenizer, [a.text for a in answers_a]):.1f} tokens, "
                       f"{sum(a.parsed for a in answers_a)}/{len(answers_a)} parsed; engine "
                       f"{_answer_tokens(tokenizer, texts_b):.1f} tokens, {parsed_b}/{len(responses)} parsed")
            for label, text in (("original", answers_a[0].text), ("engine", texts_b[0])):
                print(f"first {label} answer: {text!r}", file=sys.stderr, flush=True)
        decoding = ("one forward, no generation" if not generating else
                    f"max new tokens {max_new_tokens}, " + (f"T={ORIGINAL_TEMPERATURE[name]} sampled"
                                                            if ORIGINAL_TEMPERATURE[name] else "greedy"))
        threads = f"{args.original_threads} torch thread(s)" if args.original_threads else "torch's default threads"
        family = TINY_FAMILY.get(name, "qwen2_5_vl")
        lines = [f"critic throughput, {name} (tiny {family}), {decoding}, {os.cpu_count()} CPU cores, "
                 f"{args.dtype}, original on {threads}{answers}",
                 f"{'way':<40}{'videos':>8}{'wall s':>9}{'videos/s':>11}{'p50 s':>9}{'p95 s':>9}",
                 _row("(a) original loop, transformers, bs=1", wall_a, lat_a),
                 _row("(b) vLLM engine, concurrency 32", wall_b, lat_b)]
    print("\n".join(lines))
    print(f"speedup={(len(lat_b) / wall_b) / (len(lat_a) / wall_a):.2f} critic={name}")


def _row(label: str, wall: float, latencies: list[float]) -> str:
    n = len(latencies)
    p50, p95 = latencies[n // 2], latencies[min(n - 1, int(0.95 * n))]
    return f"{label:<40}{n:>8}{wall:>9.2f}{n / wall:>11.3f}{p50:>9.2f}{p95:>9.2f}"


def engine_row(label: str, wall: float, latencies: list[float]) -> str:
    """One table row of an engine run: videos, videos/s, p50 and p95 latency (`latencies` sorted)."""
    n = len(latencies)
    p50, p95 = latencies[n // 2], latencies[min(n - 1, int(0.95 * n))]
    return f"{label:<40}{n:>8}{n / wall:>11.3f}{p50:>9.2f}{p95:>9.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--critic", default="lift", choices=("lift", *OTHER_CRITICS),
                    help="lift (default): LiFT's loop on --critics' presets; otherwise that critic's own loop vs "
                         "the engine at concurrency 32, on its tiny model (Qwen2.5-VL; videoalign: a converted "
                         "tiny VideoReward release, Qwen2-VL)")
    ap.add_argument("--videos", type=int, default=None,
                    help=f"per engine run (default 48; --critic other than lift: {CRITIC_DEFAULTS['videos']})")
    ap.add_argument("--baseline-videos", type=int, default=None,
                    help=f"for the original loop (default 24; other critics: {CRITIC_DEFAULTS['baseline_videos']})")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help=f"both ways (default 40; other critics: {CRITIC_DEFAULTS['max_new_tokens']}; "
                         f"cosmos-reason1 and videoalign generate nothing)")
    ap.add_argument("--critics", default="tiny,realistic",
                    help="lift only: comma-separated presets, in the order measured")
    ap.add_argument("--original-threads", type=int, default=None,
                    help="--critic other than lift: torch threads of the original loop (default: torch's, one per "
                         "core, as a user runs it; 1 on a shared host, where two OpenMP threads and another "
                         "process on the same cores slow a tiny model's forward many times over)")
    ap.add_argument("--model-dir", default=None,
                    help="--critic other than lift: the tiny model's folder, reused if built for that critic, "
                         "else built there (default: a temporary folder, built every run)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="both ways in this dtype (bfloat16: the service's CPU default, AMX/AVX512-BF16 kernels)")
    ap.add_argument("--no-all-cores", action="store_true", help="skip the (b') row")
    args = ap.parse_args()
    if args.critic != "lift":
        run_other_critic(args.critic, args)
        return
    args.videos = 48 if args.videos is None else args.videos
    args.baseline_videos = 24 if args.baseline_videos is None else args.baseline_videos
    args.max_new_tokens = 40 if args.max_new_tokens is None else args.max_new_tokens

    from service.tiny_critics import build_tiny_critic

    tables, speedups = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # every run its own videos: the original's, then per engine run and concurrency (plus a warm-up video)
        plan = [("original", -2, args.baseline_videos), ("engine", -1, 1), ("engine", 1, args.videos),
                ("engine", 8, args.videos), ("engine", 32, args.videos)]
        if not args.no_all_cores:
            plan += [("all cores", -1, 1), ("all cores", 32, args.videos)]
        first, sets = 0, {}
        for way, conc, n in plan:
            sets.setdefault(way, {})[conc] = make_videos(tmp_path, n, first)
            first += n
        for preset in args.critics.split(","):
            model_dir = build_tiny_critic(tmp_path / preset, family="qwen2_vl", seed=0, preset=preset)
            # the original loop caches nothing between videos, so both of its runs may use the same videos
            base = {t: original_way(model_dir, sets["original"][-2], args.max_new_tokens, t, args.dtype) for t in (0.2, 0.0)}
            runs = asyncio.run(engine_way(model_dir, sets["engine"], args.max_new_tokens, dtype=args.dtype))
            all_cores = None if args.no_all_cores else asyncio.run(
                engine_way(model_dir, sets["all cores"], args.max_new_tokens, all_cores=True, dtype=args.dtype))
            lines = [f"\ncritic throughput, {preset} qwen2_vl critic, 8 frames, max new tokens {args.max_new_tokens}, "
                     f"{os.cpu_count()} CPU cores, {args.dtype}",
                     f"{'way':<40}{'videos':>8}{'videos/s':>11}{'p50 s':>9}{'p95 s':>9}"]
            for t, wall in base.items():
                label = f"(a) original, bs=1, {'T=0.2 sampled' if t else 'greedy'}"
                lines.append(f"{label:<40}{args.baseline_videos:>8}{args.baseline_videos / wall:>11.3f}"
                             f"{wall / args.baseline_videos:>9.2f}{'':>9}")
            lines += [engine_row(f"(b) vLLM engine, greedy, concurrency {conc}", *run) for conc, run in runs.items()]
            if all_cores:
                lines.append(engine_row("(b') same, c=32, worker on all cores", *all_cores[32]))
            wall32, lat32 = runs[32]
            tables.append("\n".join(lines))
            speedups.append(f"speedup={(len(lat32) / wall32) / (args.baseline_videos / base[0.2]):.2f} critic={preset}")
            print(tables[-1], file=sys.stderr, flush=True)  # progress; the summary goes to stdout at the end
    print("\n".join(tables))
    print("\n".join(speedups))


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    main()

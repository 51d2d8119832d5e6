"""Figures of the miniature run: rule score and critic reward per round, before/after sample frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_round(logs: Mapping[str, Sequence[Mapping[str, Any]]], rule_rounds: Mapping[str, Sequence[Mapping[str, float]]],
                   out_dir: Path) -> list[Path]:
    """rewards_per_round.png (the critic's mean reward, from each loop_log.jsonl) and
    rule_score_per_round.png (the hidden rules' mean score per dimension); LiFT solid, flat control dashed."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, rows in logs.items():
        ax.plot([r["round"] for r in rows], [r["mean_reward"] for r in rows], marker="o",
                linestyle="-" if name.startswith("lift") else "--", label=name)
    ax.set_xlabel("round (0 = pre-trained generator)")
    ax.set_ylabel("critic reward (mean, fine-tuning prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "rewards_per_round.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=100)
    for ax, d in zip(axes, DIMS):
        for name, rows in rule_rounds.items():
            ax.plot(range(len(rows)), [r[d] for r in rows], marker="o",
                    linestyle="-" if name.startswith("lift") else "--", label=name)
        ax.set_title(d)
        ax.set_xlabel("round")
        ax.set_ylabel("hidden-rule score (mean)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "rule_score_per_round.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def plot_frames(judge_dirs: Mapping[str, Path], out_dir: Path, seed: int, *, videos: int = 4, frames: int = 5,
                scale: int = 3) -> Path:
    """before_after.png: for a few held-out samples (same prompt and seed), rows of frames from the base
    generator, the LiFT run and the flat control of `seed`, upscaled `scale`x (nearest)."""
    from PIL import Image, ImageDraw

    from finetune.data import read_jsonl
    from finetune.video_io import read_frames

    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in ("base", f"lift-s{seed}", f"flat-s{seed}") if n in judge_dirs]
    manifests = {n: read_jsonl(judge_dirs[n] / "manifest.jsonl") for n in names}
    first = manifests[names[0]]
    step = max(1, len(first) // videos)
    picks = list(range(0, len(first), step))[:videos]
    rows: list[tuple[str, np.ndarray]] = []
    for i in picks:
        for n in names:
            row = manifests[n][i]
            f = read_frames(row["video"])
            idx = np.linspace(0, len(f) - 1, frames).round().astype(int)
            rows.append((f"{n}: {row['prompt']}", np.concatenate(list(f[idx]), axis=1)))
    h, w = rows[0][1].shape[:2]
    label_w = 190
    canvas = Image.new("RGB", (label_w + w * scale, len(rows) * (h * scale + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, strip) in enumerate(rows):
        y = k * (h * scale + 4)
        canvas.paste(Image.fromarray(strip).resize((w * scale, h * scale), Image.NEAREST), (label_w, y))
        draw.text((4, y + h * scale // 2 - 6), label, fill="black")
    path = out_dir / "before_after.png"
    canvas.save(path)
    return path

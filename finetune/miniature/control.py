"""The flat-weight control of a LiFT run: the same loop and the same critic, every reward made equal.

Each round's samples are scored by the served critic exactly as in the LiFT run; then every sample's
weight is replaced by the round's mean reward (the critic's own value stays in `critic_reward`). Training
on that is plain self-training at the same mean weight: what it changes is drift, not preference, so the
gap between LiFT and this control is what the critic's reward did.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from finetune.data import read_jsonl
from finetune.loop import Labeler


@dataclass
class FlatRewardLabeler:
    inner: Labeler

    def __call__(self, manifest: Path, labels: Path) -> None:
        self.inner(manifest, labels)
        rows = read_jsonl(labels)
        ok = [r for r in rows if "error" not in r and isinstance(r.get("reward"), (int, float))]
        if not ok or all("critic_reward" in r for r in ok):
            return  # nothing scored, or flattened by an earlier (resumed) run
        for r in ok:
            r.setdefault("critic_reward", r["reward"])
            r.setdefault("critic_expected_reward", r.get("expected_reward"))
        mean = sum(float(r["critic_reward"]) for r in ok) / len(ok)
        for r in ok:
            r["reward"] = mean
            r["expected_reward"] = mean
        tmp = labels.with_name(f".{labels.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, labels)

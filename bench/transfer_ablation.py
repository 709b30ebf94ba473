"""The article's transfer-learning comparison, measured on the built-in synthetic corpus.

    .venv/bin/python bench/transfer_ablation.py [--out DIR] [--epochs 12] [--seed 0]

SoundNet-8's released weights cannot be downloaded here, so the source domain is built the same way the
original was used: SoundNet-8 is first pretrained on environmental sound (six generated classes,
edgeser/data/synth_env.py), saved in the PyTorch-port state_dict layout, and loaded through the real
loader (edgeser/models/soundnet_weights.py). The speech-emotion corpus is then learned four ways, with the
same epochs, lr and speaker-independent split:

  scratch             random init, all layers train
  last_layer          pretrained trunk frozen, linear layer on pooled conv7 features only
  full                pretrained, all layers train from the start
  transfer_attention  pretrained, attention head, frozen trunk then progressive unfreezing (top blocks first),
                      loss 0.7 CE + 0.3 MMD(environmental-sound features, speech features)

It prints UA and macro-F1 on the held-out speakers (the last line is JSON). Nothing is tuned to match the
article's numbers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeser.data.dataset import Corpus, Split, load_corpus
from edgeser.data.synth import synthesize_corpus
from edgeser.data.synth_env import ENV_CLASSES, synthesize_env
from edgeser.data.audio import load_audio
from edgeser.models.soundnet import SoundNet8
from edgeser.recipe import Recipe
from edgeser.stages.common import Context
from edgeser.stages.teacher import train_teacher
from edgeser.targets import load_target
from edgeser.train import evaluate, fit

STRATEGIES = ["scratch", "last_layer", "full", "transfer_attention"]


def pretrain_on_environment(env_dir: Path, out: Path, epochs: int, seed: int) -> dict:
    """SoundNet-8 trained to classify the environmental sounds; trunk saved as a port state_dict."""
    xs, ys = [], []
    for ci, kind in enumerate(ENV_CLASSES):
        for p in sorted((env_dir / kind).glob("*.wav")):
            xs.append(load_audio(p))
            ys.append(ci)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = len(y) // 5
    val, train = order[:n_val], order[n_val:]
    corpus = Corpus(list(ENV_CLASSES), {"train": Split(x[train], y[train], ["env"] * len(train)),
                                        "val": Split(x[val], y[val], ["env"] * n_val)})
    torch.manual_seed(seed)
    model = SoundNet8(len(ENV_CLASSES))
    cfg = Recipe.model_validate({"data": {"synth": {}}, "teacher": {"epochs": epochs, "lr": 1e-3}}).teacher
    fit(model, corpus, cfg, lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb), seed=seed)
    state = {}
    for i, block in enumerate(model.trunk, start=1):
        conv, bn = block[0], block[1]
        state[f"conv{i}.0.weight"] = conv.weight.detach().unsqueeze(-1).clone()  # Conv2d layout (out, in, k, 1)
        state[f"conv{i}.0.bias"] = conv.bias.detach().clone()
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            state[f"conv{i}.1.{name}"] = getattr(bn, name).detach().clone()
    torch.save(state, out)
    return {"val_ua": evaluate(model, corpus.splits["val"], corpus.classes)["ua"], "clips": len(y)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="edgeser-ablation-"))
    t0 = time.time()
    manifest = synthesize_corpus(work / "ser", seed=args.seed, clips_per_class=240, n_speakers=12)
    env_dir = synthesize_env(work / "env", clips_per_class=60, seed=args.seed)
    weights = work / "soundnet8_env_port.pt"
    pre = pretrain_on_environment(env_dir, weights, args.pretrain_epochs, args.seed)
    print(f"pretrained SoundNet-8 on {pre['clips']} environmental clips: val UA {100 * pre['val_ua']:.1f}% "
          f"({time.time() - t0:.0f}s)", flush=True)
    rows = []
    for strategy in STRATEGIES:
        recipe = Recipe.model_validate({
            "seed": args.seed, "data": {"manifest": str(manifest)},
            "teacher": {"epochs": args.epochs, "lr": 1e-3, "strategy": strategy,
                        "pretrained": None if strategy == "scratch" else str(weights),
                        "source_audio": str(env_dir), "freeze_epochs": 2, "unfreeze_every": 1}})
        ctx = Context(recipe=recipe, target=load_target("cpu"), run_dir=work / strategy)
        ctx.corpus = load_corpus(manifest, recipe.data)
        t = time.time()
        model, info = train_teacher(ctx, strategy)
        m = evaluate(model, ctx.corpus.splits["test"], ctx.corpus.classes)
        rows.append({"strategy": strategy, "ua": round(m["ua"], 4), "macro_f1": round(m["macro_f1"], 4),
                     "best_epoch": info["best_epoch"], "loss": info["loss"], "seconds": round(time.time() - t, 1)})
        print(f"{strategy:>20}: UA {100 * m['ua']:5.1f}%  macro-F1 {100 * m['macro_f1']:5.1f}%  "
              f"({rows[-1]['seconds']}s, best epoch {info['best_epoch']})", flush=True)
    print()
    print(f"| strategy | UA % | macro-F1 % |\n|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {100 * r['ua']:.1f} | {100 * r['macro_f1']:.1f} |")
    print(f"test speakers: {sorted(set(ctx.corpus.splits['test'].speakers))}, "
          f"{len(ctx.corpus.splits['test'].y)} clips; total {time.time() - t0:.0f}s")
    print(json.dumps({"pretrain_val_ua": round(pre["val_ua"], 4), "rows": rows}))


if __name__ == "__main__":
    main()

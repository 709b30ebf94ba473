"""Stage 1: the corpus. Generate the built-in synthetic one or read a manifest; split by speaker."""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgeser import distributed as dist
from edgeser.data.dataset import load_corpus
from edgeser.fileio import atomic_path, write_json
from edgeser.stage_spec import Stage
from edgeser.stages.common import Context


def synth_corpus(ctx: Context):
    """Generate the synthetic corpus once per settings into RUN/data/synth (reused when settings match)."""
    from edgeser.data.synth import synthesize_corpus

    s = ctx.recipe.data.synth
    out = ctx.run_dir / "data" / "synth"
    settings = s.model_dump() | {"clip_seconds": ctx.recipe.data.clip_seconds}
    stamp = out / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and (out / "manifest.csv").is_file():
        return out / "manifest.csv"
    task = ctx.progress.add_task("data: synthesising voices", total=None) if ctx.progress else None

    def on_clip(done, total):
        if ctx.progress:
            ctx.progress.update(task, completed=done, total=total)

    with atomic_path(out) as tmp:
        synthesize_corpus(tmp, seed=s.seed, clips_per_class=s.clips_per_class, n_speakers=s.n_speakers,
                          clip_seconds=s.clip_seconds, on_clip=on_clip)
        write_json(tmp / "settings.json", settings)
    if ctx.progress:
        ctx.progress.remove_task(task)
    return out / "manifest.csv"


def open_store(ctx: Context):
    """The run's audio store: data.store, or RUN/data/store."""
    from edgeser.data.store import AudioStore

    d = ctx.recipe.data
    # under torchrun only rank 0 writes; the other ranks read what it decoded
    return AudioStore(d.store if d.store is not None else ctx.run_dir / "data" / "store", d.sample_rate,
                      writable=dist.is_main())


def run(ctx: Context) -> dict:
    d = ctx.recipe.data
    # under torchrun rank 0 writes the synthetic corpus; the others wait for it, then read it (distributed.py)
    manifest = d.manifest if d.manifest is not None else dist.on_main(lambda: synth_corpus(ctx))

    def load(progress):
        task = progress.add_task("data: decoding audio into the store", total=None) if progress else None
        store = open_store(ctx)
        corpus = load_corpus(manifest, d, store=store,
                             on_file=(lambda i, n: progress.update(task, completed=i, total=n)) if progress else None)
        if progress:
            progress.remove_task(task)
        return corpus, store.decoded

    # rank 0 decodes what the store lacks; then every rank reads the same store (nothing left to decode)
    if dist.is_enabled():
        decoded = dist.on_main(lambda: load(ctx.progress)[1])
        corpus = load(None)[0]
    else:
        corpus, decoded = load(ctx.progress)
    ctx.corpus = corpus
    # data.augment.generative: WaveGAN clips for the train split's minority classes (val and test untouched)
    from edgeser.data.oversample import grow_minority

    g = d.augment.generative
    corpus, generative = grow_minority(corpus, g, int(d.clip_seconds * d.sample_rate), ctx.recipe.seed + g.seed,
                                       ctx.run_dir / "data" / "generative", ctx.progress)
    ctx.corpus = corpus
    where = {"manifest": recorded_path(manifest, ctx.run_dir)}
    if d.root is not None:  # the recipe's data.root is relative to where compress ran: record it as resolvable too
        where["root"] = recorded_path(d.root, ctx.run_dir)
    store = {"path": recorded_path(open_store(ctx).root, ctx.run_dir), "decoded_now": decoded}
    return ctx.finish("data", where | {"store": store} | corpus.summary() | {"generative": generative})


def recorded_path(path, run_dir) -> str:
    """A path as the run folder records it, so that it resolves from anywhere (edgeser/run_manifest.py
    run_path): relative to the run folder when it lies inside it (the folder can move, or be downloaded by a
    CI job, with its synthetic corpus), else absolute. Lexical (no symlink resolution): what lies under the
    run folder as the user sees it travels with it."""
    p, run = Path(os.path.abspath(path)), Path(os.path.abspath(run_dir))
    return p.relative_to(run).as_posix() if p.is_relative_to(run) else str(p)


def _digest(ctx: Context) -> str:
    from edgeser.resume import corpus_digest

    return corpus_digest(ctx.corpus)


# data always runs (it re-reads the manifest and finds every file in the store); its key is the corpus's digest
# (store keys, labels, speakers), so a changed file changes every key after it (its metrics.json names the run
# folder, which would make a moved run look changed)
STAGE = Stage("data", run, sections=("data",), always_run=True, digest=_digest)

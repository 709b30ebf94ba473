"""Knowledge distillation, shared by the distill, prune and QAT stages: the KD set, the objectives, the loop.

The KD set is the train split followed by augmented views of it, with the teacher's logits on every row (and
on the validation utterances, and its hint features when asked). The logits are cached on disk (the prune
fine-tune and QAT runs reuse distill's file), and the whole set is kept in memory for the process, so the
views are made and the teacher hashed once per run, not once per training loop. Running the big raw-waveform
teacher on every batch would cost several times the student's own training.

Every function takes explicit arguments: no recipe sections, no run context.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from edgeser import distributed as dist
from edgeser.checkpoint import Stochastic, generators
from edgeser.data.dataset import Corpus, Split
from edgeser.device import model_device
from edgeser.fileio import load_state, save_state, sha256
from edgeser.models.io import load_teacher
from edgeser.models.student import Student
from edgeser.train import fit, kd_loss, label_loss, label_loss_name, predict, predict_split, torch_threads


@dataclass
class KDSet:
    corpus: Corpus  # its train split holds the original rows followed by the augmented views
    logits: torch.Tensor  # the teacher's, one row per train row
    val_logits: torch.Tensor  # the teacher's on the validation utterances (select: teacher_kl)
    hints: dict[int, torch.Tensor]  # time-pooled teacher block features per train row, by block (1-based)
    views: int  # augmented copies of the train split


VIEW_CHUNK = 512  # rows augmented at once: bounds the memory of making views, whatever the corpus size


def kd_views(train: Split, views: int, augment_fn, seed: int = 0, store=None, key: str = "") -> Split:
    """The train split followed by `views` augmented copies (deterministic for the recipe's seed); where the
    split keeps whole utterances (data.train_crops: random), each copy is a new random crop of them. Copies are
    made VIEW_CHUNK rows at a time. With `store` (data/store.py) they are written to its views/<hash>.npy once
    (`key` names the augmentation settings) and read from there a batch at a time; without, held in memory."""
    from edgeser.data.dataset import crop_starts, read_crops, utterance_lengths
    from edgeser.data.rows import RowFile, Stack, rows_digest

    gen, n, rows = torch.Generator().manual_seed(seed), train.x.shape[1], len(train.y)
    lengths = None if train.full is None else utterance_lengths(train.full)

    def chunks():
        for _ in range(views):
            for a in range(0, rows, VIEW_CHUNK):
                idx = torch.arange(a, min(rows, a + VIEW_CHUNK))
                x = (train.x[idx] if train.full is None else
                     read_crops(train.full, idx, crop_starts(lengths, idx, n, gen), n))
                yield augment_fn(x)

    target = None if train.target is None else train.target.repeat(views + 1, 1)
    y, speakers = train.y.repeat(views + 1), list(train.speakers) * (views + 1)
    if store is None or views == 0:
        x = torch.cat([train.x if isinstance(train.x, torch.Tensor) else train.x[:], *chunks()])
        return Split(x, y, speakers, target=target)
    digest = hashlib.sha256(f"{rows_digest(train.x)}:{views}:{seed}:{key}:{VIEW_CHUNK}".encode()).hexdigest()
    path = store.view_path(digest)
    if not path.is_file():
        from edgeser.data.store import RowWriter

        w = RowWriter(path, rows * views, n)
        try:
            for x in chunks():
                w.write(x)
        except BaseException:
            w.abort()
            raise
        w.close()
    return Split(Stack([train.x, RowFile(path, digest)]), y, speakers, target=target)


def view_count(aug_views: int, min_kd_rows: int, n_train: int) -> int:
    """Augmented KD views: aug_views, raised (at most 32) until n_train x (1 + views) >= min_kd_rows."""
    need = math.ceil(min_kd_rows / max(1, n_train)) - 1 if min_kd_rows else 0
    return max(aug_views, min(32, need))


_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 of the teacher file
# the last KD set made in this process, by key, with its corpus and logits file (another run dir makes its own)
_MEMO: dict[str, tuple[object, Path, KDSet]] = {}


def _file_sha(path: Path) -> str:
    st = os.stat(path)
    k = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        _HASHES[k] = sha256(path)
    return _HASHES[k]


def kd_set(corpus: Corpus, teacher_path: Path, cache: Path, *, views: int, augment_fn: Callable, seed: int,
           augment_key: str, hint_layers: list[int], store=None) -> KDSet:
    """The KD set of `corpus` for the teacher at teacher_path. `cache`: the logits file (read, or written by
    rank 0 when missing or made for other inputs); `augment_key` names the augmentation settings in its key.
    `store` (data/store.py): the augmented views are written there and read a batch at a time (kd_views).
    Under torchrun every rank makes the same views and reads rank 0's logits."""
    x0 = corpus.splits["train"]
    from edgeser.data.rows import rows_digest

    # the train audio by content (store keys, or the tensor's bytes), so other clips of the same count re-run it
    key = (f"{_file_sha(teacher_path)}:{rows_digest(x0.x)}:{views}:{seed}:{len(x0.y) * (views + 1)}:"
           f"{augment_key}:{list(hint_layers)}:val")
    memo = _MEMO.get(key)
    if memo is not None and memo[0] is corpus and memo[1] == Path(cache) and Path(cache).is_file():
        return memo[2]
    if store is not None:  # under torchrun rank 0 writes the views file; the others then read it
        dist.on_main(lambda: kd_views(x0, views, augment_fn, seed, store, augment_key) and None)
    train = kd_views(x0, views, augment_fn, seed, store, augment_key)
    blob = None
    if dist.is_main():  # under torchrun rank 0 reads or (re)computes the cache; the others then read its file
        blob = load_state(cache) if cache.is_file() else None
        if blob is None or blob.get("key") != key:
            teacher = load_teacher(teacher_path)
            blob = {"key": key, "logits": predict(teacher, train.x),
                    "val_logits": predict_split(teacher, corpus.splits["val"]),
                    "hints": {str(i): predict(lambda x, i=i: teacher.block_features(x, [i])[i], train.x)
                              for i in (hint_layers if hasattr(teacher, "block_features") else [])}}
            save_state(cache, blob)
    dist.barrier()
    if blob is None:
        blob = load_state(cache)
        if blob.get("key") != key:
            raise RuntimeError(f"{cache}: rank {dist.rank()} computed another teacher-logit key than rank 0")
    out = KDSet(dataclasses.replace(corpus, splits={**corpus.splits, "train": train}), blob["logits"],
                blob["val_logits"], {int(k): v for k, v in blob.get("hints", {}).items()}, views)
    _MEMO.clear()
    _MEMO[key] = (corpus, Path(cache), out)
    return out


def teacher_fidelity(teacher_val_logits: torch.Tensor, val: Split):
    """select() for distill and prune (select: teacher_kl): minus the mean KL(teacher || student) of the softmax
    outputs over the validation utterances, so the kept epoch is the one closest to the teacher."""
    want = F.log_softmax(teacher_val_logits, 1)

    def score(model) -> float:
        got = F.log_softmax(predict_split(model, val), 1)
        return -float(F.kl_div(got, want, log_target=True, reduction="batchmean"))

    return score


def _mel(model, x, mel_augment):
    """The model's log-mel of x (x: PCM, or already a log-mel, e.g. SMOTE rows), with mel_augment applied in
    training."""
    mel = model.frontend(x) if x.dim() == 2 else x
    return mel_augment(mel) if mel_augment is not None and model.training else mel


def _logits(model, x, mel_augment):
    """model(x), with mel_augment on its log-mel in training: through the float student's log-mel input, or
    the quantised student's classify(). The models themselves hold no augmentation."""
    if mel_augment is None or not model.training:
        return model(x)
    mel = _mel(model, x, mel_augment)
    return model.classify(mel) if hasattr(model, "classify") else model(mel)


def kd_objective(teacher_logits: torch.Tensor, temperature: float, alpha: float, hints=None, hint_weight=0.0,
                 labels=None, mel_augment=None, wave_augment=None):
    """Logit KD, plus (when `hints` = {block: (teacher features (N, C), regressor)}) feature distillation:
    MSE between the L2-normalised regressed student features and the teacher's, on real rows only.
    `labels` (train.label_loss): the label term against vote distributions instead of CE. `mel_augment`: applied
    to the model's log-mel in training (frequency masking)."""

    def loss(model, x, y, idx):
        if wave_augment is not None and x.dim() == 2:  # student-side: the teacher's logits are of the view as is
            x = wave_augment(x)
        if not hints:
            return kd_loss(_logits(model, x, mel_augment), teacher_logits[idx], y, temperature, alpha, labels, idx)
        logits, pooled = model.forward_features(x if mel_augment is None else _mel(model, x, mel_augment))
        total = kd_loss(logits, teacher_logits[idx], y, temperature, alpha, labels, idx)
        real = idx < len(next(iter(hints.values()))[0])
        if real.any():
            for feats, reg in hints.values():
                s = F.normalize(reg(pooled[real.to(pooled.device)]), dim=1)
                want = F.normalize(feats[idx[real]].to(s.device), dim=1)
                total = total + hint_weight / len(hints) * F.mse_loss(s, want, reduction="sum") / int(real.sum())
        return total

    return Stochastic(loss, generators(mel_augment, wave_augment))


def live_kd_objective(source, temperature: float, alpha: float, gen: torch.Generator, crop_min: float,
                      min_samples: int, labels=None, mel_augment=None, wave_augment=None):
    """KD from `source` computed on the batch itself (QAT from its FP32 student): each batch is first cut to a
    random crop of crop_min..1 of its length, so the quantised model learns the source's decisions on short
    input too, not only at the training clip length."""
    source.eval()

    def loss(model, x, y, idx):
        n = x.shape[1]
        frac = crop_min + (1 - crop_min) * float(torch.rand((), generator=gen))
        m = max(min_samples, min(n, int(n * frac)))
        start = int(torch.randint(0, n - m + 1, (), generator=gen))
        xc = x[:, start : start + m]
        if wave_augment is not None:  # the source sees the same input: the model learns its decisions on it
            xc = wave_augment(xc)
        if model_device(source) != xc.device:  # on CUDA the FP32 source runs beside the model (kd_fit moves it back)
            source.to(xc.device)
        with torch.no_grad():
            target = source(xc)
        return kd_loss(_logits(model, xc, mel_augment), target, y, temperature, alpha, labels, idx)

    return Stochastic(loss, [gen, *generators(mel_augment, wave_augment)])


def smote_rows(model: Student, train: Split, logits: torch.Tensor, seed: int) -> tuple[Split, torch.Tensor]:
    """SMOTE in the student's feature space (its log-mel): synthetic minority-class rows, each with the
    teacher logits of its nearest real same-class row as KD target."""
    from edgeser.data.augment import smote

    feats = predict(model.frontend, train.x)
    syn, y = smote(feats, train.y, torch.Generator().manual_seed(seed))
    targets = torch.empty(len(y), logits.shape[1])
    for c in y.unique():
        real, fake = (train.y == c).nonzero()[:, 0], (y == c).nonzero()[:, 0]
        near = torch.cdist(syn[fake].flatten(1), feats[real].flatten(1)).argmin(1)
        targets[fake] = logits[real[near]]
    return Split(syn, y, ["smote"] * len(y)), targets


def kd_fit(model, kd: KDSet, cfg, *, temperature: float, alpha: float, seed: int, desc: str, smote: bool = False,
           freq_mask: bool = False, clipping_db: float = 0.0, clipping_p: float = 0.5, hint_weight: float = 0.0,
           use_hints: bool = False, kd_source=None, live_alpha: float | None = None, crop_min: float = 1.0,
           progress=None, checkpoint=None, **kw) -> dict:
    """Train `model` (cfg: the stage's train.Train options) by KD from the KD set's teacher logits, or live
    from `kd_source` on random crops of the same views (live_kd_objective, with live_alpha and crop_min).

    freq_mask: frequency masking of the model's log-mel during training; clipping_db / clipping_p: the model's
    input clipped (data.augment.clip_peaks), its targets those of the unclipped view; smote: SMOTE rows in the
    log-mel space (the float student only: QAT's front-end is quantised, so it sees real audio only). use_hints:
    feature distillation from the KD set's hint features, through new linear regressors. `kw` goes to
    train.fit."""
    corpus, logits = kd.corpus, kd.logits
    extra = None
    if smote:
        extra, extra_logits = smote_rows(model, corpus.splits["train"], logits, seed)
        logits = torch.cat([logits, extra_logits])
    mel_augment = None
    if freq_mask:
        from edgeser.data.augment import freq_mask as mask

        gen = torch.Generator().manual_seed(dist.rank_seed(seed))  # each rank its own masks (seed on rank 0)
        mel_augment = Stochastic(lambda mel: mask(mel, gen, fraction=0.2), [gen])
    wave_augment = None
    if clipping_db > 0:
        from edgeser.data.augment import clip_peaks

        gen_clip = torch.Generator().manual_seed(dist.rank_seed(seed) + 1)
        wave_augment = Stochastic(lambda x: clip_peaks(x, gen_clip, clipping_db, clipping_p), [gen_clip])
    hints, params = None, None
    if use_hints and kd.hints:
        torch.manual_seed(seed)
        width = model.body.head.in_features
        hints = {i: (f, torch.nn.Linear(width, f.shape[1])) for i, f in kd.hints.items()}
        params = list(model.parameters()) + [p for _, reg in hints.values() for p in reg.parameters()]
    # None: CE; else class-balanced CE (cfg.balanced) or the vote distributions (data.labels: soft)
    labels = label_loss(corpus.splits["train"], len(corpus.classes), cfg.balanced)
    objective = kd_objective(logits, temperature, alpha, hints, hint_weight, labels, mel_augment, wave_augment)
    if kd_source is not None:
        objective = live_kd_objective(kd_source, temperature, live_alpha, torch.Generator().manual_seed(seed),
                                      crop_min, min_samples=kd_source.frontend.kernel_samples, labels=labels,
                                      mel_augment=mel_augment, wave_augment=wave_augment)
    with torch_threads(1):
        info = fit(model, corpus, cfg, objective, seed=seed, progress=progress, desc=desc, extra=extra,
                   params=params, checkpoint=checkpoint, **kw)
    if kd_source is not None:
        kd_source.to("cpu")
    if labels is not None:
        info["labels"] = label_loss_name(corpus.splits["train"], labels)
    return info | {"kd_views": kd.views, "kd_rows": len(corpus.splits["train"].y),
                   "smote_rows": 0 if extra is None else len(extra.y), "hint_layers": sorted(hints or {})}

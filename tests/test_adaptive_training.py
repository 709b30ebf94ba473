"""Training that adapts to the corpus (issue 13): class-balanced label loss, epochs scaled to a minimum number of
optimiser steps, and random training crops of utterances longer than a clip."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from edgeser.data.dataset import Corpus, Split, load_corpus, random_crops
from edgeser.recipe import Data, Train
from edgeser.train import class_weights, fit, label_loss, scaled_epochs


def test_balanced_label_loss_weighs_each_class_by_its_inverse_frequency():
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    split = Split(torch.zeros(8, 4), y, ["a"] * 8)
    assert label_loss(split, 2) is None and label_loss(split, 2, balanced=False) is None  # plain CE
    loss = label_loss(split, 2, balanced=True)
    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    per_row = F.cross_entropy(logits, y, reduction="none")
    w = class_weights(y, 2)  # 8/12 for the common class, 8/4 for the rare one
    assert torch.isclose(loss(logits, y, torch.arange(8)), (per_row * w[y]).mean())
    # the rare class's rows count 3x the common class's: a mistake on it costs more than plain CE says
    rare, common = torch.tensor([6]), torch.tensor([0])
    assert torch.isclose(loss(logits[rare], y[rare], rare), 2 * per_row[6])
    assert torch.isclose(loss(logits[common], y[common], common), per_row[0] * 2 / 3)


def test_epochs_are_raised_to_min_steps_and_fit_runs_them():
    assert scaled_epochs(Train(epochs=2, min_steps=10), 4) == 3  # 2 epochs of 4 steps = 8 < 10
    assert scaled_epochs(Train(epochs=5, min_steps=10), 4) == 5  # already 20 steps
    assert scaled_epochs(Train(epochs=0, min_steps=10), 4) == 0  # 0 epochs = skip training
    assert scaled_epochs(Train(epochs=2), 1) == 2  # min_steps 0: epochs as given
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 16, generator=g), torch.tensor([0, 1] * 4)
    corpus = Corpus(["a", "b"], {"train": Split(x, y, ["s"] * 8), "val": Split(x, y, ["t"] * 8)})
    model = torch.nn.Linear(16, 2)
    out = fit(model, corpus, Train(epochs=1, min_steps=5, batch_size=4),
              lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb), seed=0)
    assert out["epochs"] == 3 and out["steps_per_epoch"] == 2 and len(out["history"]) == 3


def test_random_crops_come_from_the_utterance_and_vary():
    full = [np.arange(100, dtype=np.float32), np.arange(5, dtype=np.float32) + 1000]
    gen = torch.Generator().manual_seed(0)
    crops = [random_crops(full, torch.tensor([0, 1]), 10, gen) for _ in range(20)]
    starts = {int(c[0, 0]) for c in crops}
    for c in crops:  # a contiguous run of the long utterance; the short one zero-padded at the end
        assert torch.equal(c[0], torch.arange(int(c[0, 0]), int(c[0, 0]) + 10, dtype=torch.float32))
        assert torch.equal(c[1], torch.tensor([1000, 1001, 1002, 1003, 1004, 0, 0, 0, 0, 0], dtype=torch.float32))
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 90


def _corpus_dir(tmp_path, seconds):
    rows = ["path,label,speaker"]
    for i, (s, lab) in enumerate([(s, lab) for s in "abcdef" for lab in ("x", "y")]):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).uniform(-0.5, 0.5, int(seconds[i % 2] * 16000)),
                 16000, subtype="PCM_16")
        rows.append(f"{i}.wav,{lab},{s}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_train_split_keeps_utterances_for_random_crops_only(tmp_path):
    m = _corpus_dir(tmp_path, (0.5, 0.2))
    random = load_corpus(m, Data(manifest=m, clip_seconds=0.25, val_speakers=0.2, test_speakers=0.2))
    train = random.splits["train"]
    assert train.full is not None and len(train.full) == len(train.y)
    assert {len(w) for w in train.full} == {8000, 3200} and train.x.shape[1] == 4000
    centre = load_corpus(m, Data(manifest=m, clip_seconds=0.25, train_crops="centre", val_speakers=0.2,
                                 test_speakers=0.2))
    assert centre.splits["train"].full is None
    short = load_corpus(m, Data(manifest=m, clip_seconds=1.0, val_speakers=0.2, test_speakers=0.2))
    assert short.splits["train"].full is None  # nothing longer than a clip: nothing to crop


def test_fit_trains_on_random_crops_of_the_utterances():
    full = [np.linspace(-1, 1, 400, dtype=np.float32) * (i + 1) / 8 for i in range(8)]
    centre = torch.stack([torch.from_numpy(w[150:250]) for w in full])
    y = torch.tensor([0, 1] * 4)
    corpus = Corpus(["a", "b"], {"train": Split(centre, y, ["s"] * 8, full=full),
                                 "val": Split(centre, y, ["t"] * 8)})
    seen = []

    def loss(m, xb, yb, idx):
        seen.append((xb.clone(), idx.clone()))
        return F.cross_entropy(m(xb), yb)

    fit(torch.nn.Linear(100, 2), corpus, Train(epochs=3, batch_size=8), loss, seed=0)
    for xb, idx in seen:  # every row a 100-sample stretch of its own utterance
        for row, i in zip(xb, idx.tolist()):
            w = torch.from_numpy(full[i])
            assert any(torch.equal(row, w[s : s + 100]) for s in range(301))
    assert not all(torch.equal(xb, centre[idx]) for xb, idx in seen)  # not the centred clip every time


def test_kd_views_grow_for_small_corpora():
    from edgeser.kd import view_count

    assert view_count(2, 2000, 126) == 15  # 126 x 16 = 2016 rows
    assert view_count(2, 2000, 754) == 2  # 754 x 3 = 2262: as given
    assert view_count(2, 2000, 10) == 32  # at most 32
    assert view_count(4, 0, 10) == 4  # 0 = aug_views as given


def test_plateau_patience_is_counted_in_steps():
    from edgeser.train import plateau_epochs

    assert plateau_epochs(Train(plateau_steps=40), 4) == 10  # 4 batches per epoch: 10 epochs = 40 steps
    assert plateau_epochs(Train(plateau_steps=40), 20) == 2  # the demo's teacher: 2 epochs, as before
    assert plateau_epochs(Train(plateau_steps=40), 63) == 2  # at least 2 epochs
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 16, generator=g), torch.tensor([0, 1] * 4)
    val = Split(torch.zeros(8, 16), y, ["t"] * 8)  # constant input: val UA never improves after epoch 1
    corpus = Corpus(["a", "b"], {"train": Split(x, y, ["s"] * 8), "val": val})
    lrs = [h["lr"] for h in fit(torch.nn.Linear(16, 2), corpus, Train(epochs=12, batch_size=8, plateau_steps=6,
                                                                       lr=1e-2),
                                 lambda m, xb, yb, idx: F.cross_entropy(m(xb), yb), seed=0)["history"]]
    # patience 6 epochs (1 step each): halved after the 7th epoch without improvement, not after the 3rd
    assert lrs[:7] == [1e-2] * 7 and lrs[7] == 5e-3


def test_students_keep_the_epoch_closest_to_the_teacher(tiny_run):
    """distill (select: teacher_kl, the default) keeps the epoch whose validation outputs are closest to the
    teacher's, the untrained student (epoch 0) included; select: ua keeps the best validation UA."""
    import json

    from edgeser.recipe import Distill, Prune
    from edgeser.kd import teacher_fidelity

    assert Distill().select == "teacher_kl" and Prune().select == "teacher_kl"
    g = torch.Generator().manual_seed(0)
    val = Split(torch.randn(6, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), ["v"] * 6)
    teacher = torch.nn.Linear(32, 3)
    score = teacher_fidelity(teacher(val.x).detach(), val)
    near = torch.nn.Linear(32, 3)
    near.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        near.weight[0].add_(0.05)  # one class only: a shift of every logit alike would not change the softmax
    far = torch.nn.Linear(32, 3)
    assert score(teacher) > score(near) > score(far) and abs(score(teacher)) < 1e-6
    run_dir, _ = tiny_run
    train = json.loads((run_dir / "stages/distill/metrics.json").read_text())["train"]
    scores = [h["val_select"] for h in train["history"]]
    assert "best_val_select" in train and train["best_val_select"] >= max(scores)
    if train["best_epoch"]:
        assert scores[train["best_epoch"] - 1] == max(scores)


def test_distillation_never_keeps_the_untrained_student(tiny_run):
    """keep_initial=False: even when the model as it came in scores best (an untrained student's near-uniform
    outputs next to an uncertain teacher), a trained epoch is kept; by default (prune, QAT) it may be kept."""
    import json

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 16, generator=g), torch.tensor([0, 1] * 4)
    corpus = Corpus(["a", "b"], {"train": Split(x, y, ["s"] * 8), "val": Split(x, y, ["t"] * 8)})
    calls = []

    def select(m):  # the initial model best, then worse and worse
        calls.append(1)
        return -len(calls)

    def loss(m, xb, yb, idx):
        return F.cross_entropy(m(xb), yb)

    kept = fit(torch.nn.Linear(16, 2), corpus, Train(epochs=3, batch_size=8), loss, seed=0, select=select)
    assert kept["best_epoch"] == 0
    calls.clear()
    out = fit(torch.nn.Linear(16, 2), corpus, Train(epochs=3, batch_size=8), loss, seed=0, select=select,
              keep_initial=False)
    assert out["best_epoch"] == 1 and len(calls) == 3  # the initial model was not even scored
    run_dir, _ = tiny_run
    for stage in ("distill", "prune"):  # the prune fine-tune does not keep the just-pruned model either
        assert json.loads((run_dir / f"stages/{stage}/metrics.json").read_text())["train"]["best_epoch"] >= 1

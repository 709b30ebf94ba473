"""Annotator votes: the manifest `votes` column, the majority tie rule, and data.labels: soft (class-balanced
KL against the vote distribution) for the teacher's and the students' label term."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.data.dataset import Corpus, Split, load_corpus, load_eval_set
from edgeser.data.manifest import read_manifest
from edgeser.data.votes import distribution, format_votes, majority, parse_votes
from edgeser.recipe import Data, RecipeError, Train
from edgeser.train import class_weights, fit, kd_loss, label_loss, soft_loss

CLASSES = ["neutral", "happy", "sad", "angry"]


def test_votes_cell_round_trips():
    votes = {"neutral": 2.0, "angry": 0.5, "frustrated": 0.5}
    cell = format_votes(votes, ["neutral", "angry"])
    assert cell == "neutral:2;angry:0.5;frustrated:0.5"
    assert parse_votes(cell) == votes
    assert format_votes({"sad": 1 / 3, "happy": 2 / 3}) == "happy:0.6667;sad:0.3333"  # alphabetical, 4 decimals
    assert parse_votes("") == {} and parse_votes(None) == {} and parse_votes(" sad : 1 ; ") == {"sad": 1.0}


@pytest.mark.parametrize("cell, why", [("neutral", "not label:count"), ("neutral:x", "not a number"),
                                       ("neutral:-1", ">= 0"), ("neutral:inf", ">= 0"), ("neutral:nan", ">= 0"),
                                       ("sad:1;sad:2", "twice"), ("sad:0", "every count is 0"),
                                       (":2", "not label:count")])
def test_malformed_votes_name_the_manifest_row(tmp_path, cell, why):
    m = tmp_path / "m.csv"
    m.write_text(f"path,label,speaker,votes\na.wav,sad,s1,sad:1\nb.wav,sad,s2,\"{cell}\"\n")
    with pytest.raises(RecipeError, match=rf"m\.csv:3: votes .*{why}.*expected label:count"):
        read_manifest(m)


def test_malformed_votes_exit_2_before_anything_is_written(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label,speaker,votes\na.wav,sad,s1,sad:1\nb.wav,sad,s2,sad:one\n")
    (tmp_path / "r.yaml").write_text("data: {manifest: m.csv}\n")
    res = CliRunner().invoke(app, ["compress", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and f"{m}:3: votes" in res.output.replace("\n", ""), res.output
    assert not (tmp_path / "run").exists()


def test_majority_tie_rule():
    assert majority({"neutral": 2, "angry": 1}, "angry", CLASSES) == "neutral"  # a strict majority wins
    assert majority({"neutral": 1, "angry": 1}, "angry", CLASSES) == "angry"  # a tie goes to the row's label
    assert majority({"sad": 1, "angry": 1}, "neutral", CLASSES) == "sad"  # else to the first in data.classes
    assert majority({"sad": 1, "angry": 1}, "neutral", ["angry", "sad"]) == "angry"
    assert majority({"sad": 1, "angry": 1}, "neutral") == "angry"  # no data.classes: alphabetical
    assert majority({"sad": 0.6666, "angry": 0.6667}, "sad", CLASSES) == "sad"  # 1/3 + 1/3 ties 2/3
    assert majority({}, "sad", CLASSES) == "sad"
    assert distribution({"sad": 3, "angry": 1, "other": 4}, CLASSES, "sad") == [0, 0, 0.75, 0.25]
    assert distribution({"other": 4}, CLASSES, "sad") == [0, 0, 1, 0]  # nothing kept: one-hot on the label


def _corpus_dir(tmp_path):
    """Three speakers (one per split); rows chosen to exercise the tie rule, label_map and missing votes."""
    rows = [("s1", "angry", "neutral:1;angry:1"),  # tie with the row's label: angry, though neutral comes first
            ("s1", "neutral", "sad:1;angry:1"),  # tie without it: sad, first in data.classes
            ("s2", "angry", "neutral:2;angry:1"),  # strict majority: neutral
            ("s2", "sad", "sad:3;frustrated:1"),  # a vote outside the classes is dropped from the distribution
            ("s3", "sad", ""),  # no votes: its label, one-hot
            ("s3", "happy", "excited:1;sad:1"),  # label_map excited -> happy: tie with the row's label
            ("s3", "angry", "angry:2;sad:1")]
    lines = ["path,label,speaker,votes"]
    for i, (spk, label, votes) in enumerate(rows):
        t = np.arange(4000) / 16000
        sf.write(tmp_path / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (150 + 30 * i) * t)).astype(np.float32), 16000)
        lines.append(f"{i}.wav,{label},{spk},{votes}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


EXPECTED = {"s1": (["angry", "sad"], [[0.5, 0, 0, 0.5], [0, 0, 0.5, 0.5]]),
            "s2": (["neutral", "sad"], [[2 / 3, 0, 0, 1 / 3], [0, 0, 1, 0]]),
            "s3": (["sad", "happy", "angry"], [[0, 0, 1, 0], [0, 0.5, 0.5, 0], [0, 0, 1 / 3, 2 / 3]])}


@pytest.mark.parametrize("mode", ["majority", "soft"])
def test_corpus_labels_follow_the_votes(tmp_path, mode):
    m = _corpus_dir(tmp_path)
    cfg = Data(manifest=m, classes=CLASSES, label_map={"excited": "happy"}, clip_seconds=0.25, labels=mode)
    c = load_corpus(m, cfg)
    for split in c.splits.values():
        labels, targets = EXPECTED[split.speakers[0]]
        assert [CLASSES[i] for i in split.y] == labels
        if mode == "soft":
            assert torch.allclose(split.target, torch.tensor(targets, dtype=torch.float32), atol=1e-4)
        else:
            assert split.target is None
    every, _ = load_eval_set(m, cfg, CLASSES)  # `verify --data` scores the same majority labels
    assert [CLASSES[i] for i in every.y] == [lab for s in ("s1", "s2", "s3") for lab in EXPECTED[s][0]]


def test_soft_needs_votes(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label,speaker\na.wav,sad,s1\nb.wav,angry,s2\nc.wav,sad,s3\n")
    with pytest.raises(RecipeError, match="data.labels: soft needs annotator votes"):
        load_corpus(m, Data(manifest=m, labels="soft"))


def test_soft_loss_is_cross_entropy_for_one_hot_targets_and_differs_for_split_votes():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = F.one_hot(y, 4).float()
    assert torch.allclose(soft_loss(logits, one_hot), F.cross_entropy(logits, y))
    split = one_hot.clone()
    split[0] = torch.tensor([0.5, 0.5, 0, 0])
    assert not torch.allclose(soft_loss(logits, split), F.cross_entropy(logits, y))
    # through label_loss: balanced classes (weights 1) and one-hot targets give plain cross-entropy
    train = Split(torch.zeros(4, 8), torch.tensor([0, 1, 2, 3]), ["a"] * 4, target=torch.eye(4))
    idx = torch.tensor([0, 1, 2, 3])
    assert torch.allclose(label_loss(train, 4)(logits[:4], train.y, idx), F.cross_entropy(logits[:4], train.y))
    assert label_loss(Split(train.x, train.y, train.speakers), 4) is None  # no targets: plain cross-entropy


def test_class_balancing_weighs_a_rare_class_up():
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    w = class_weights(y, 3)
    assert torch.allclose(w, torch.tensor([8 / 12, 8 / 4, 0.0])) and torch.isclose(w[y].mean(), torch.tensor(1.0))
    train = Split(torch.zeros(8, 8), y, ["a"] * 8, target=F.one_hot(y, 3).float())
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    loss = label_loss(train, 3)
    rare, common = torch.tensor([6]), torch.tensor([0])
    assert torch.isclose(loss(logits[rare], y[rare], rare), 2 * F.cross_entropy(logits[rare], y[rare]))
    assert torch.isclose(loss(logits[common], y[common], common), F.cross_entropy(logits[common], y[common]) * 2 / 3)
    extra = torch.tensor([8, 9])  # rows past the split (SMOTE): one-hot on their label, same class weights
    ones = torch.tensor([1, 1])
    assert torch.isclose(loss(logits[:2], ones, extra), 2 * F.cross_entropy(logits[:2], ones))


def test_kd_label_term_uses_the_vote_targets():
    g = torch.Generator().manual_seed(2)
    s, t, y = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.tensor([0, 1, 2, 0])
    train = Split(torch.zeros(4, 8), y, ["a"] * 4, target=torch.tensor([[0.5, 0.5, 0]] * 4))
    labels, idx = label_loss(train, 3), torch.arange(4)
    assert torch.isclose(kd_loss(s, t, y, 4.0, 0.0, labels, idx), labels(s, y, idx))
    assert torch.isclose(kd_loss(s, t, y, 4.0, 1.0, labels, idx), kd_loss(s, t, y, 4.0, 1.0))
    assert not torch.isclose(kd_loss(s, t, y, 4.0, 0.3, labels, idx), kd_loss(s, t, y, 4.0, 0.3))


def test_teacher_and_student_objectives_train_on_vote_targets():
    """The teacher's loss and the distillation objective take the soft label term, and fit passes row indices
    (the augmented views repeat the targets)."""
    from edgeser.models.soundnet import SoundNet8
    from edgeser.recipe import Teacher
    from edgeser.kd import kd_objective, kd_views
    from edgeser.transfer import teacher_loss

    torch.manual_seed(0)
    x, y = torch.randn(6, 800) * 0.1, torch.tensor([0, 1, 2, 0, 1, 2])
    target = torch.tensor([[0.6, 0.4, 0], [0, 1, 0], [0, 0.5, 0.5]] * 2)
    views = kd_views(Split(x, y, ["a"] * 6, target=target), 1, lambda v: v + 0.01)
    assert torch.equal(views.target, torch.cat([target, target])) and len(views.y) == 12
    labels = label_loss(views, 3)
    m = SoundNet8(3, width_mult=0.25)
    idx = torch.arange(4)
    got = teacher_loss(Teacher(), None, 0, labels)(m.eval(), views.x[idx], views.y[idx], idx)
    assert torch.isclose(got, labels(m(views.x[idx]), views.y[idx], idx))

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(800, 3))
    corpus = Corpus(["a", "b", "c"], {"train": views, "val": Split(x, y, ["b"] * 6)})
    out = fit(model, corpus, Train(epochs=1, batch_size=4), kd_objective(torch.randn(12, 3), 2.0, 0.5, labels=labels),
              seed=0)
    assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"])


def test_soft_labels_through_teacher_and_distillation(tmp_path):
    """The data, teacher and distill stages on a tiny synthetic corpus given votes, with SMOTE rows (one class
    made rare) that train on one-hot targets."""
    import csv
    import json

    from rich.console import Console

    from tests.conftest import TINY
    from edgeser.data.synth import synthesize_corpus
    from edgeser.pipeline import compress
    from edgeser.recipe import validate

    synthesize_corpus(tmp_path / "c", seed=0, clips_per_class=12, n_speakers=6, clip_seconds=1.0)
    rows = list(csv.DictReader(open(tmp_path / "c/manifest.csv")))
    labels = sorted({r["label"] for r in rows})
    rare = [r for r in rows if r["label"] == labels[0]][::3]
    rows = [r for r in rows if r["label"] != labels[0]] + rare
    with open(tmp_path / "c/votes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "votes"])
        w.writeheader()
        for i, r in enumerate(rows):
            other = labels[i % len(labels)]
            w.writerow(r | {"votes": "" if i % 3 == 0 else f"{r['label']}:2;{other}:1" if other != r["label"]
                            else f"{r['label']}:1"})
    recipe = validate({**TINY, "data": {"manifest": str(tmp_path / "c/votes.csv"), "clip_seconds": 1.0,
                                        "labels": "soft", "augment": {"smote": True}},
                       "distill": {"epochs": 1, "batch_size": 16, "aug_views": 0}})
    distill = compress(recipe, tmp_path / "run", console=Console(quiet=True), show_progress=False,
                       until="distill")["train"]
    teacher = json.loads((tmp_path / "run/stages/teacher/metrics.json").read_text())["train"]
    assert teacher["loss"] == "soft-label kl (class-balanced)"
    assert distill["labels"] == "soft-label kl (class-balanced)" and distill["smote_rows"] > 0
    assert all(np.isfinite(h["loss"]) for h in teacher["history"] + distill["history"])

"""edgeser/kd.py: the log-mel augmentation goes through the KD objective, not through an attribute patched onto
the model, and gives the same numbers as the model's own training-only hook; the KD set is made once per run."""
from __future__ import annotations

import torch

from edgeser import kd
from edgeser.data.augment import freq_mask
from edgeser.models.student import Student
from edgeser.quant.calibrate import calibrate
from edgeser.quant.qstudent import QuantStudent


def _mask(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return lambda mel: freq_mask(mel, gen, fraction=0.5)


def test_objective_masks_the_log_mel_like_the_model_hook():
    torch.manual_seed(0)
    s = Student(4, [8, 8, 8, 8]).train()
    x = torch.randn(3, 8000) * 0.1
    ours = kd._logits(s, x, _mask())
    s.mel_augment = _mask()  # the model's own training-only hook, with the same generator state
    hook = s(x)
    s.mel_augment = None
    assert torch.equal(ours, hook)
    assert not torch.allclose(ours, s(x))  # the mask changes the outputs: it was applied
    s.eval()
    assert torch.equal(kd._logits(s, x, _mask()), s(x))  # never at evaluation


def test_objective_masks_the_quantised_students_log_mel():
    torch.manual_seed(0)
    q = QuantStudent(Student(4, [8, 8, 8, 8]).eval())
    calibrate(q, torch.randn(8, 8000) * 0.1, 1, 8)
    q.train()
    q.set_observe(False)
    x = torch.randn(3, 8000) * 0.1
    ours = kd._logits(q, x, _mask())
    q.mel_augment = _mask()
    assert torch.equal(ours, q(x))
    q.mel_augment = None
    assert not torch.allclose(ours, q(x))


class _Seen(torch.nn.Module):
    """Logits from the mean of each input, and the inputs it was called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, 4))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x.mean(1, keepdim=True) * self.w


def test_objective_clips_the_students_input_and_keeps_the_teachers_targets():
    """The student learns the teacher's logits of the unclipped view from the clipped one (clipping_db); the
    live objective (QAT) feeds the same clipped input to its FP32 source and to the model."""
    x = torch.randn(4, 800)
    clip = lambda v: v.clamp(-0.5, 0.5)  # noqa: E731
    targets = torch.randn(4, 4)
    student = _Seen()
    loss = kd.kd_objective(targets, 1.0, 1.0, wave_augment=clip)(student, x, torch.zeros(4, dtype=torch.long),
                                                                  torch.arange(4))
    assert torch.equal(student.seen[-1], clip(x))  # the student saw the clipped view
    want = torch.nn.functional.kl_div(torch.log_softmax(student(clip(x)), 1), torch.log_softmax(targets, 1),
                                      log_target=True, reduction="batchmean")
    assert torch.allclose(loss, want)  # against the teacher's logits as cached, of the view as it was
    source, model = _Seen(), _Seen()
    live = kd.live_kd_objective(source, 1.0, 1.0, torch.Generator().manual_seed(0), 1.0, 800, wave_augment=clip)
    live(model, x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    assert torch.equal(source.seen[-1], clip(x)) and torch.equal(model.seen[-1], clip(x))


def test_smote_rows_already_log_mel_are_masked_not_re_featurised():
    torch.manual_seed(0)
    s = Student(4, [8, 8, 8, 8]).train()
    mel = s.frontend(torch.randn(2, 8000) * 0.1).detach()
    s.mel_augment = _mask()
    hook = s(mel)
    s.mel_augment = None
    assert torch.equal(kd._logits(s, mel, _mask()), hook)


def _counting_views(monkeypatch) -> list:
    """kd.kd_views wrapped to count the KD sets actually made."""
    calls, real = [], kd.kd_views
    monkeypatch.setattr(kd, "kd_views", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


ARGS = dict(views=1, augment_fn=lambda x: x * 0.5, augment_key="k", hint_layers=[])


def test_kd_set_is_made_once_per_corpus(tiny_run, tiny_corpus, tmp_path, monkeypatch):
    teacher, calls, cache = tiny_run[0] / "stages/teacher/model.pt", _counting_views(monkeypatch), tmp_path / "l.pt"
    a = kd.kd_set(tiny_corpus, teacher, cache, seed=3, **ARGS)
    b = kd.kd_set(tiny_corpus, teacher, cache, seed=3, **ARGS)
    assert a is b and len(calls) == 1 and cache.is_file()
    assert len(a.corpus.splits["train"].y) == 2 * len(tiny_corpus.splits["train"].y) == len(a.logits)
    c = kd.kd_set(tiny_corpus, teacher, cache, seed=3, **(ARGS | {"views": 2}))
    assert len(calls) == 2 and len(c.logits) == 3 * len(tiny_corpus.splits["train"].y)


def test_kd_set_for_another_logits_file_is_made_again(tiny_run, tiny_corpus, tmp_path, monkeypatch):
    """The memo never hands one run's KD set to a run whose logits file (run folder) is another."""
    teacher, calls = tiny_run[0] / "stages/teacher/model.pt", _counting_views(monkeypatch)
    kd.kd_set(tiny_corpus, teacher, tmp_path / "a.pt", seed=4, **ARGS)
    kd.kd_set(tiny_corpus, teacher, tmp_path / "b.pt", seed=4, **ARGS)
    assert len(calls) == 2 and (tmp_path / "b.pt").is_file()

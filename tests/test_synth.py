import csv
import hashlib
import inspect
import wave

import numpy as np
import pytest

from edgeser.data import synth
from edgeser.data.synth import CLASSES, speaker_params, synthesize_corpus

TINY = dict(clips_per_class=8, n_speakers=4, clip_seconds=0.5)


def _read_manifest(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _read_wav(path):
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1
        assert w.getsampwidth() == 2
        assert w.getframerate() == 16000
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    calls = []
    manifest = synthesize_corpus(root, seed=3, on_clip=lambda d, t: calls.append((d, t)), **TINY)
    return root, manifest, calls


def test_manifest_and_files(tiny):
    root, manifest, calls = tiny
    assert manifest == root / "manifest.csv"
    assert manifest.read_text().splitlines()[0] == "path,label,speaker"
    fields, rows = _read_manifest(manifest)
    assert fields == ["path", "label", "speaker"]
    assert len(rows) == 8 * len(CLASSES)
    assert len(CLASSES) >= 4 and {r["label"] for r in rows} == set(CLASSES)
    assert len({r["path"] for r in rows}) == len(rows)
    for r in rows:
        assert "\\" not in r["path"] and r["path"].startswith(f"wav/{r['speaker']}/")
        pcm = _read_wav(root / r["path"])
        assert len(pcm) == 8000 and np.abs(pcm.astype(int)).max() > 0
    speakers = {r["speaker"] for r in rows}
    assert len(speakers) == 4
    for s in speakers:  # every speaker has every class, balanced round-robin
        labels = [r["label"] for r in rows if r["speaker"] == s]
        assert sorted(labels) == sorted(CLASSES * 2)
    assert calls[-1] == (len(rows), len(rows)) and len(calls) == len(rows)
    assert not list(root.rglob("*.tmp"))


def test_rms_normalised(tiny):
    root, manifest, _ = tiny
    _, rows = _read_manifest(manifest)
    rms = np.array([np.sqrt(np.mean((_read_wav(root / r["path"]) / 32768.0) ** 2)) for r in rows])
    assert np.allclose(rms, synth.TARGET_RMS, rtol=0.02)
    # and loudness carries no label information
    means = [rms[[r["label"] == c for r in rows]].mean() for c in CLASSES]
    assert max(means) - min(means) < 0.01 * synth.TARGET_RMS


def test_deterministic(tmp_path, tiny):
    root, _, _ = tiny
    again = tmp_path / "again"
    synthesize_corpus(again, seed=3, **TINY)
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    synthesize_corpus(other, seed=4, **TINY)
    a, b = _digest(root), _digest(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".wav"))


def test_default_speakers_differ():
    n = inspect.signature(synthesize_corpus).parameters["n_speakers"].default
    assert n >= 8
    params = [speaker_params(0, i) for i in range(n)]
    assert len({p["name"] for p in params}) == n
    assert len({round(p["f0"], 3) for p in params}) == n
    assert len({round(p["formant_scale"], 4) for p in params}) == n
    males = [p["f0"] for p in params if not p["female"]]
    females = [p["f0"] for p in params if p["female"]]
    assert males and females and max(males) < min(females)
    assert speaker_params(0, 1) == speaker_params(0, 1) != speaker_params(1, 1)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_speakers=1), "n_speakers"),
    (dict(n_speakers=4, clips_per_class=3), "clips_per_class"),
    (dict(clip_seconds=0.0), "clip_seconds"),
    (dict(sample_rate=100), "sample_rate"),
    (dict(seed=-1), "seed"),
    (dict(on_clip=5), "on_clip"),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        synthesize_corpus(tmp_path, **kwargs)
    assert not (tmp_path / "manifest.csv").exists()

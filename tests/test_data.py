"""Manifest reading, speaker-independent splits, audio loading, and bad files skipped and counted."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from edgeser.data.audio import BadAudio, fix_length, load_audio
from edgeser.data.dataset import load_corpus
from edgeser.data.manifest import read_manifest, speaker_split
from edgeser.recipe import Data, RecipeError


def _tone(sr=16000, sec=0.5, f=200.0):
    t = np.arange(int(sr * sec)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_load_audio_resamples_and_mixes(tmp_path):
    p = tmp_path / "stereo48k.wav"
    x = _tone(48000, 0.5)
    sf.write(p, np.stack([x, x], 1), 48000, subtype="PCM_24")
    y = load_audio(p)
    assert y.dtype == np.float32 and len(y) == 8000 and abs(np.abs(y).max() - 0.3) < 0.02


@pytest.mark.parametrize("kind", ["empty", "silent", "nan", "not_audio", "truncated"])
def test_bad_audio_raises_with_reason(tmp_path, kind):
    p = tmp_path / f"{kind}.wav"
    if kind == "empty":
        sf.write(p, np.zeros(0, np.float32), 16000)
    elif kind == "silent":
        sf.write(p, np.zeros(8000, np.float32), 16000)
    elif kind == "nan":
        x = _tone()
        x[100] = np.nan
        sf.write(p, x, 16000, subtype="FLOAT")
    elif kind == "not_audio":
        p.write_text("this is not a wav file")
    else:
        sf.write(p, _tone(), 16000)
        p.write_bytes(p.read_bytes()[:30])
    with pytest.raises(BadAudio):
        load_audio(p)


def test_corpus_skips_and_counts_bad_files(tmp_path):
    rows = ["path,label,speaker"]
    for s in range(4):
        for lab in ("a", "b"):
            name = f"s{s}_{lab}.wav"
            sf.write(tmp_path / name, _tone(f=150 + 50 * s), 16000)
            rows.append(f"{name},{lab},spk{s}")
    (tmp_path / "junk.wav").write_text("nope")
    sf.write(tmp_path / "quiet.wav", np.zeros(4000, np.float32), 16000)
    rows += ["junk.wav,a,spk0", "quiet.wav,b,spk1", "gone.wav,a,spk2"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    c = load_corpus(tmp_path / "m.csv", Data(manifest=tmp_path / "m.csv", clip_seconds=0.5, val_speakers=0.25,
                                              test_speakers=0.25))
    assert sum(c.skipped.values()) == 3 and c.skipped["silent"] == 1
    assert sum(len(s.y) for s in c.splits.values()) == 8
    assert c.classes == ["a", "b"]


def test_speaker_split_disjoint_and_deterministic(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,speaker\n" + "".join(
        f"f{i}.wav,{'ab'[i % 2]},spk{i % 10}\n" for i in range(100)))
    items = read_manifest(tmp_path / "m.csv")
    a, b = speaker_split(items, 0.2, 0.2, seed=3), speaker_split(items, 0.2, 0.2, seed=3)
    spk = {k: {it.speaker for it in v} for k, v in a.items()}
    assert len(spk["test"]) == 2 and len(spk["val"]) == 2 and len(spk["train"]) == 6
    assert not (spk["train"] & spk["test"]) and not (spk["val"] & spk["test"]) and not (spk["train"] & spk["val"])
    assert a == b


def test_manifest_errors_name_the_file(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nx.wav,a\n")
    with pytest.raises(RecipeError, match="m.csv.*speaker"):
        read_manifest(m)
    m.write_text("path,label,speaker\n")
    with pytest.raises(RecipeError, match="no rows"):
        read_manifest(m)


def test_data_synth_cli(tmp_path):
    from edgeser.cli import app

    out = tmp_path / "synth"
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--clips-per-class", "8", "--speakers", "4",
                                   "--seconds", "0.5"])
    assert res.exit_code == 0, res.output
    lines = (out / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,speaker" and len(lines) == 1 + 4 * 8
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--clips-per-class", "0"])
    assert res.exit_code == 2 and "clips_per_class" in res.output


def test_leave_one_session_out_and_label_map(tmp_path):
    rows = ["path,label,speaker,session"]
    for sess in "12345":
        for g in "FM":
            for lab in ("neutral", "excited", "sad", "angry"):
                name = f"s{sess}{g}_{lab}.wav"
                sf.write(tmp_path / name, _tone(), 16000)
                rows.append(f"{name},{lab},{sess}{g},{sess}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = Data(manifest=tmp_path / "m.csv", clip_seconds=0.5, fold="3", label_map={"excited": "happy"},
               classes=["neutral", "happy", "sad", "angry"])
    c = load_corpus(tmp_path / "m.csv", cfg)
    assert set(c.splits["test"].speakers) == {"3F", "3M"}
    assert not set(c.splits["train"].speakers) & set(c.splits["test"].speakers)
    assert not set(c.splits["val"].speakers) & (set(c.splits["test"].speakers) | set(c.splits["train"].speakers))
    assert c.classes == ["neutral", "happy", "sad", "angry"] and len(c.splits["test"].y) == 8
    with pytest.raises(RecipeError, match="data.fold"):
        load_corpus(tmp_path / "m.csv", cfg.model_copy(update={"fold": "9"}))


@pytest.mark.parametrize("via", ["manifest-folder", "data.root"])
def test_sibling_folder_sharing_the_root_name_is_outside(tmp_path, via):
    """corpus2/ beside corpus/ is outside corpus/, though its path starts with corpus's: the check compares path
    components, not strings."""
    corpus, sibling = tmp_path / "corpus", tmp_path / "corpus2"
    (corpus / "sub").mkdir(parents=True)
    sibling.mkdir()
    sf.write(corpus / "sub/in.wav", _tone(), 16000)
    sf.write(sibling / "x.wav", _tone(), 16000)
    if via == "manifest-folder":  # the manifest's own folder is the root
        m, root, inside, escape = corpus / "m.csv", None, "sub/in.wav", "../corpus2/x.wav"
    else:  # the manifest lives elsewhere and names data.root
        (tmp_path / "lists").mkdir()
        m, root, inside, escape = tmp_path / "lists/m.csv", corpus, str(corpus / "sub/in.wav"), str(sibling / "x.wav")
    assert str(sibling / "x.wav").startswith(str(corpus))  # the trap: a string prefix says "inside"
    m.write_text(f"path,label,speaker\n{inside},a,s1\n")
    assert [it.label for it in read_manifest(m, root=root)] == ["a"]  # inside the root: accepted
    m.write_text(f"path,label,speaker\n{inside},a,s1\n{escape},b,s2\n")
    with pytest.raises(RecipeError, match=r"m\.csv:3: .*corpus2.*outside the corpus root"):
        read_manifest(m, root=root)
    assert len(read_manifest(m, allow_outside_root=True, root=root)) == 2  # allowed explicitly


@pytest.mark.parametrize("length, n, start", [
    (10, 10, 0),  # equal: unchanged
    (12, 10, 1),  # longer by an even amount: centre crop, (12 - 10) // 2 = 1 dropped each side
    (13, 10, 1),  # longer by an odd amount: the extra sample is dropped at the end
    (11, 4, 3),  # odd length, even target
    (10, 3, 3),  # even length, odd target: (10 - 3) // 2 = 3
    (2, 1, 0),  # longer by one: the crop keeps the first sample
])
def test_fix_length_centre_crops(length, n, start):
    x = np.arange(1, length + 1, dtype=np.float32)
    y = fix_length(x, n)
    assert len(y) == n and y.dtype == np.float32
    np.testing.assert_array_equal(y, x[start : start + n])
    # the rule itself: as many samples dropped before as after, one more after when the excess is odd
    before, after = int(y[0]) - 1, length - int(y[-1])
    assert before == (length - n) // 2 and after - before in (0, 1)


@pytest.mark.parametrize("length, n", [(0, 5), (1, 5), (7, 10), (4, 9), (9, 10)])
def test_fix_length_zero_pads_at_the_end(length, n):
    """Shorter clips (odd and even lengths and targets): the samples first, unchanged, then zeros."""
    x = np.arange(1, length + 1, dtype=np.float64)  # float64 in: the padded clip is float32 like every other
    y = fix_length(x, n)
    assert len(y) == n and y.dtype == np.float32
    np.testing.assert_array_equal(y[:length], x.astype(np.float32))
    np.testing.assert_array_equal(y[length:], np.zeros(n - length, np.float32))

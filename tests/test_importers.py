"""Corpus importers on tiny trees that use each corpus's real naming convention."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from edgeser.cli import app
from edgeser.data.importers import (DUPLICATE, RATING_NO_AUDIO, RATING_UNKNOWN, RATINGS_NO_MATCH, RATINGS_UNUSABLE,
                                    VOTE_MALFORMED, VOTE_REPEATED, VOTE_UNKNOWN, import_corpus)
from edgeser.data.manifest import read_manifest
from edgeser.recipe import RecipeError

BAD_NAME = "name breaks the corpus convention"


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)  # 0.1 s
    return path


def _rows(manifest: Path) -> dict[str, tuple[str, str, str]]:
    """stem -> (label, speaker, session); also checks that every path is relative and resolves to a file."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) in (["path", "label", "speaker", "session"], ["path", "label", "speaker", "session", "votes"])
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    for r in rows:
        assert not Path(r["path"]).is_absolute() and "\\" not in r["path"]
        assert (manifest.parent / r["path"]).is_file()
    return {Path(r["path"]).stem: (r["label"], r["speaker"], r["session"]) for r in rows}


EMO_EVAL_1 = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
C-E3:\tAnger;\t()
A-E3:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M003\texc\t[3.5000, 3.5000, 3.0000]
C-E1:\tHappiness;\t()
[14.8872 - 18.0175]\tSes01F_impro01_F001\tfru\t[2.0000, 3.0000, 3.5000]
[19.2900 - 20.7875]\tSes01F_impro01_M004\txxx\t[2.5000, 3.0000, 3.0000]
"""
EMO_EVAL_2 = """[1.0000 - 2.0000]\tSes02M_script01_1_F002\tsad\t[2.0000, 2.0000, 2.0000]
[3.0000 - 4.0000]\tSes02M_script01_1_M010\tang\t[2.0000, 4.0000, 4.0000]
[5.0000 - 6.0000]\tSes02M_script01_1_M011\thap\t[4.0000, 3.0000, 3.0000]
"""


def _iemocap(root: Path) -> Path:
    for sess, dialog, text, utts in [(1, "Ses01F_impro01", EMO_EVAL_1, ["F000", "M003", "F001", "M004", "M099"]),
                                     (2, "Ses02M_script01_1", EMO_EVAL_2, ["F002", "M010", "M011"])]:
        base = root / f"Session{sess}"
        (base / "dialog/EmoEvaluation/Categorical").mkdir(parents=True)
        (base / f"dialog/EmoEvaluation/{dialog}.txt").write_text(text)
        (base / f"dialog/EmoEvaluation/Categorical/{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Anger; ()\n")
        _wav(base / f"dialog/wav/{dialog}.wav")  # the whole dialog: not an utterance
        for u in utts:
            _wav(base / f"sentences/wav/{dialog}/{dialog}_{u}.wav")
    _wav(root / "Session1/sentences/wav/Ses01F_impro01/._Ses01F_impro01_F000.wav")  # AppleDouble junk
    return root


def test_iemocap(tmp_path):
    src = _iemocap(tmp_path / "IEMOCAP_full_release")
    s = import_corpus("iemocap", src, tmp_path / "m.csv")
    assert _rows(tmp_path / "m.csv") == {
        "Ses01F_impro01_F000": ("neutral", "1F", "1"),
        "Ses01F_impro01_M003": ("excited", "1M", "1"),  # speaker from the last field, not from Ses01F
        "Ses01F_impro01_F001": ("frustrated", "1F", "1"),
        "Ses02M_script01_1_F002": ("sad", "2F", "2"),
        "Ses02M_script01_1_M010": ("angry", "2M", "2"),
        "Ses02M_script01_1_M011": ("happy", "2M", "2")}
    assert s["skipped"] == {"no agreement (xxx)": 1, "no EmoEvaluation label": 1, BAD_NAME: 1}
    assert s["speakers"] == ["1F", "1M", "2F", "2M"] and s["rows"] == 6

    s = import_corpus("iemocap", src, tmp_path / "sub/m4.csv", four_class=True)
    rows = _rows(tmp_path / "sub/m4.csv")
    assert rows["Ses01F_impro01_M003"] == ("happy", "1M", "1") and "Ses01F_impro01_F001" not in rows
    assert s["labels"] == {"neutral": 1, "happy": 2, "sad": 1, "angry": 1}
    assert s["skipped"]["not one of the 4 classes"] == 1
    assert s["needs_root"] == str(src.resolve())  # the manifest is outside SRC: the recipe needs data.root
    assert rows and all(p.path.is_file() for p in read_manifest(tmp_path / "sub/m4.csv", root=src))


def test_ravdess(tmp_path):
    src = tmp_path / "ravdess"
    labels = ["neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"]
    for e in range(1, 9):
        _wav(src / "Actor_12" / f"03-01-{e:02d}-01-01-01-12.wav")
    _wav(src / "Actor_01/03-01-05-02-02-02-01.wav")
    _wav(src / "Actor_01/03-02-03-01-01-01-01.wav")  # song
    _wav(src / "Actor_01/01-01-03-01-01-01-01.wav")  # audio-video modality
    for bad in ["03-01-05-01-01-01.wav", "03-01-09-01-01-01-01.wav", "03-01-01-02-01-01-01.wav",
                "03-01-05-01-01-01-25.wav", "03-01-5-01-01-01-01.wav", "notes.wav"]:
        _wav(src / "Actor_01" / bad)
    s = import_corpus("ravdess", src, tmp_path / "m.csv")
    rows = _rows(tmp_path / "m.csv")
    assert rows == {**{f"03-01-{e:02d}-01-01-01-12": (lab, "ravdess_12", "") for e, lab in enumerate(labels, 1)},
                    "03-01-05-02-02-02-01": ("angry", "ravdess_01", "")}
    assert s["skipped"] == {BAD_NAME: 6, "song (RAVDESS vocal channel 02)": 1,
                            "not audio-only (RAVDESS modality 01/02)": 1}
    s = import_corpus("ravdess", src, tmp_path / "m4.csv", four_class=True)
    assert s["labels"] == {"neutral": 1, "happy": 1, "sad": 1, "angry": 2}


def test_crema_d(tmp_path):
    src = tmp_path / "CREMA-D"
    codes = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
    for i, code in enumerate(codes):
        _wav(src / "AudioWAV" / f"10{i + 1:02d}_DFA_{code}_XX.wav")
    _wav(src / "AudioWAV/1091_IEO_HAP_HI.wav")
    for bad in ["1000_DFA_ANG_XX.wav", "1092_DFA_ANG_XX.wav", "1001_ABC_ANG_XX.wav", "1001_DFA_SUR_XX.wav",
                "1001_DFA_ANG_ZZ.wav", "1001_DFA_ANG.wav"]:
        _wav(src / "AudioWAV" / bad)
    s = import_corpus("crema-d", src, tmp_path / "m.csv")
    assert _rows(tmp_path / "m.csv") == {**{f"10{i + 1:02d}_DFA_{c}_XX": (lab, f"10{i + 1:02d}", "")
                                            for i, (c, lab) in enumerate(codes.items())},
                                         "1091_IEO_HAP_HI": ("happy", "1091", "")}
    assert s["skipped"] == {BAD_NAME: 6} and len(s["speakers"]) == 7


def test_emodb(tmp_path):
    src = tmp_path / "emodb"
    letters = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
    for i, (letter, speaker) in enumerate(zip(letters, ["03", "08", "09", "10", "11", "15", "16"])):
        _wav(src / "wav" / f"{speaker}{'ab'[i % 2]}0{i + 1}{letter}a.wav")
    _wav(src / "wav/03b10Nc.wav")
    for bad in ["04a01Wa.wav", "03c01Wa.wav", "03a11Wa.wav", "03a01Xa.wav", "03a01W.wav"]:
        _wav(src / "wav" / bad)
    s = import_corpus("emodb", src, tmp_path / "m.csv", four_class=False)
    assert _rows(tmp_path / "m.csv") == {"03a01Wa": ("angry", "03", ""), "08b02La": ("boredom", "08", ""),
                                         "09a03Ea": ("disgust", "09", ""), "10b04Aa": ("fear", "10", ""),
                                         "11a05Fa": ("happy", "11", ""), "15b06Ta": ("sad", "15", ""),
                                         "16a07Na": ("neutral", "16", ""), "03b10Nc": ("neutral", "03", "")}
    assert s["skipped"] == {BAD_NAME: 5}


def test_folder_both_layouts(tmp_path):
    src = tmp_path / "mine"
    _wav(src / "angry/alice/take1/a.wav")  # speaker = second-level folder, however deep the file is
    _wav(src / "Happiness/bob/b.wav")  # alias, any case
    _wav(src / "sad/carol_001.wav")  # no speaker folder: its own speaker (not "carol": clip_0001 is not "clip")
    _wav(src / "neutral/nospeaker.wav")
    _wav(src / "loose.wav")
    _wav(src / "anxious/eve/e.wav")
    s = import_corpus("folder", src, src / "manifest.csv")
    assert _rows(src / "manifest.csv") == {"a": ("angry", "alice", ""), "b": ("happy", "bob", ""),
                                           "carol_001": ("sad", "sad/carol_001", ""),
                                           "nospeaker": ("neutral", "neutral/nospeaker", "")}
    assert s["skipped"] == {"folder 'anxious' is not a known label": 1, "not inside a label folder": 1}
    assert s["examples"] == {"folder 'anxious' is not a known label": ["anxious/eve/e.wav"],
                             "not inside a label folder": ["loose.wav"]}
    assert len(s["warnings"]) == 1 and "2 clip(s)" in s["warnings"][0] and "NOT speaker-independent" in s["warnings"][0]
    assert "angry/alice/take1/a.wav,angry,alice," in (src / "manifest.csv").read_text().splitlines()
def test_errors(tmp_path):
    with pytest.raises(RecipeError, match="unknown corpus"):
        import_corpus("tess", tmp_path, tmp_path / "m.csv")
    _wav(tmp_path / "src/wav/nonsense.wav")
    with pytest.raises(RecipeError, match="src.*no audio matches the emodb layout.*1 skipped"):
        import_corpus("emodb", tmp_path / "src", tmp_path / "m.csv")
    _wav(tmp_path / "src/wav/08a01Lb.wav")  # boredom only
    with pytest.raises(RecipeError, match="neutral, happy, sad or angry"):
        import_corpus("emodb", tmp_path / "src", tmp_path / "m.csv", four_class=True)
    assert not (tmp_path / "m.csv").exists()


def test_cli(tmp_path):
    from edgeser.cli import app

    src, out = _iemocap(tmp_path / "iemocap"), tmp_path / "out/manifest.csv"
    res = CliRunner().invoke(app, ["data", "import", "iemocap", str(src), "--out", str(out), "--four-class"])
    assert res.exit_code == 0, res.output
    assert "happy" in res.output and "speakers" in res.output and "no agreement" in res.output
    assert "root:" in res.output  # the manifest is outside SRC: the command prints the data.root to set
    items = read_manifest(out, root=src)
    assert len(items) == 5 and all(it.path.is_file() for it in items)
    assert {it.speaker for it in items} == {"1F", "1M", "2F", "2M"}

    missing = tmp_path / "nowhere"
    res = CliRunner().invoke(app, ["data", "import", "ravdess", str(missing), "--out", str(out)])
    assert res.exit_code == 2 and str(missing) in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["data", "import", "crema-d", str(tmp_path / "empty"), "--out", str(out)])
    assert res.exit_code == 2 and str(tmp_path / "empty") in res.output and "no audio" in res.output
    res = CliRunner().invoke(app, ["data", "import", "tess", str(src), "--out", str(out)])
    assert res.exit_code == 2 and "unknown corpus" in res.output


def _flat(src: Path, n: int = 4) -> Path:
    """SRC/<label>/clip_000i.wav: one sub-folder per class, no speaker folders, a name that names no speaker."""
    for label in ("happy", "sad", "angry"):
        for i in range(n):
            _wav(src / label / f"clip_{i:04d}.wav")
    return src


def test_folder_without_speaker_folders_warns(tmp_path):
    from edgeser.cli import app

    src, out = _flat(tmp_path / "flat"), tmp_path / "flat/manifest.csv"
    res = CliRunner().invoke(app, ["data", "import", "folder", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    _rows(out)
    rows = {r["path"]: r["speaker"] for r in csv.DictReader(out.open())}
    assert len(rows) == 12 and rows["happy/clip_0001.wav"] == "happy/clip_0001"  # not speaker "clip"
    assert len(set(rows.values())) == 12
    assert "WARNING" in res.output and "12 clip(s)" in res.output and "NOT speaker-independent" in res.output
    assert "--speaker-pattern" in res.output


def test_speaker_pattern(tmp_path):
    from edgeser.cli import app

    src = tmp_path / "c"
    for label in ("happy", "sad"):
        for spk in ("ann", "ben", "cy"):
            _wav(src / label / f"{spk}_{label}_1.wav")
    _wav(src / "sad/takes/dan_sad_2.wav")  # the pattern applies wherever the file is
    _wav(src / "sad/README_take.wav")  # upper case: no match
    out = src / "m.csv"
    res = CliRunner().invoke(app, ["data", "import", "folder", str(src), "--out", str(out),
                                   "--speaker-pattern", "^([a-z]+)_"])
    assert res.exit_code == 0, res.output
    assert {speaker for _, speaker, _ in _rows(out).values()} == {"ann", "ben", "cy", "dan"}
    assert _rows(out)["dan_sad_2"] == ("sad", "dan", "")
    assert "WARNING" not in res.output
    s = import_corpus("folder", src, out, speaker_pattern="^([a-z]+)_")
    assert s["skipped"] == {"file name does not match --speaker-pattern": 1}
    assert s["examples"] == {"file name does not match --speaker-pattern": ["sad/README_take.wav"]}
    s = import_corpus("folder", src, out, speaker_pattern="(ann)_")
    assert s["speakers"] == ["ann"] and any("at least 3" in w for w in s["warnings"])


@pytest.mark.parametrize("args, why", [(["folder", "--speaker-pattern", "(("], "not a regular expression"),
                                       (["folder", "--speaker-pattern", r"clip_\d+"], "exactly one (group)"),
                                       (["folder", "--speaker-pattern", r"(clip)_(\d+)"], "exactly one (group)"),
                                       (["emodb", "--speaker-pattern", "(.)"], "only the folder layout")])
def test_bad_speaker_pattern(tmp_path, args, why):
    from edgeser.cli import app

    src, out = _flat(tmp_path / "c"), tmp_path / "m.csv"  # clip_0000.wav: each pattern matches the names
    res = CliRunner().invoke(app, ["data", "import", args[0], str(src), "--out", str(out), *args[1:]])
    assert res.exit_code == 2 and "--speaker-pattern" in res.output and why in res.output, res.output
    assert not out.exists()


def test_files_that_are_not_audio_are_skipped_by_reason(tmp_path, monkeypatch):
    from edgeser.cli import app
    from edgeser.data import importers

    src = _flat(tmp_path / "c", n=1)
    (src / "sad/notes.wav").write_text("not audio\n")
    (src / "sad/empty.wav").touch()
    (src / "sad/text.mp3").write_text("not audio either\n")
    sf.write(src / "sad/zero.wav", np.zeros(0, dtype=np.float32), 16000)  # a header, no frames
    full = _wav(src / "angry/cut.wav").read_bytes()
    (src / "angry/cut.wav").write_bytes(full[:1000])  # its data chunk still claims 6400 bytes
    (src / "angry/head.wav").write_bytes(full[:20])  # the header itself is cut
    (src / "angry/voice.m4a").write_bytes(b"\0\0\0\x20ftypM4A ")
    (tmp_path / "outside.wav").write_bytes(full)
    (src / "angry/link.wav").symlink_to(tmp_path / "outside.wav")
    s = import_corpus("folder", src, src / "m.csv")
    assert set(_rows(src / "m.csv")) == {"clip_0000"}  # happy, sad and angry: 3 rows
    assert s["rows"] == 3 and s["skipped"] == {
        "text file, not audio": 2, "empty file (0 bytes)": 1, "no samples": 1,
        "truncated (header claims more data than the file holds)": 1, "corrupt or truncated audio header": 1,
        ".m4a audio: this libsndfile cannot decode it (convert to WAV or FLAC)": 1,
        "symlink out of the corpus root": 1}
    assert s["examples"]["text file, not audio"] == ["sad/notes.wav", "sad/text.mp3"]
    assert s["examples"]["truncated (header claims more data than the file holds)"] == ["angry/cut.wav"]

    res = CliRunner().invoke(app, ["data", "import", "folder", str(src), "--out", str(src / "m.csv")])
    assert res.exit_code == 0 and "total" in res.output
    assert "text file, not audio" in res.output and "sad/notes.wav" in res.output

    monkeypatch.setattr(importers, "_readable", lambda fmt: fmt != "WAV")  # a libsndfile without WAV
    res = CliRunner().invoke(app, ["data", "import", "folder", str(src), "--out", str(tmp_path / "none.csv")])
    assert res.exit_code == 2 and "no audio matches the folder layout" in res.output, res.output
    assert ".wav audio: this libsndfile cannot decode it" in res.output and "angry/clip_0000.wav" in res.output
    assert not (tmp_path / "none.csv").exists()


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_audio_is_imported(tmp_path, fmt):
    from edgeser.data.audio import load_audio

    src, suffix = tmp_path / "c", "." + fmt.lower()
    tone = (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    (src / "happy/ann").mkdir(parents=True)
    try:
        sf.write(src / f"happy/ann/a{suffix}", tone, 16000, format=fmt)
    except Exception as e:  # soundfile raises several types for formats it cannot write
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}: {e}")
    _wav(src / "happy/ann/b.wav")
    sf.write(src / f"happy/ann/b{suffix}", tone, 16000, format=fmt)  # b in two formats: one clip, the WAV
    s = import_corpus("folder", src, src / "m.csv")
    assert _rows(src / "m.csv") == {"a": ("happy", "ann", ""), "b": ("happy", "ann", "")}
    assert f"happy/ann/a{suffix}" in (src / "m.csv").read_text() and "happy/ann/b.wav" in (src / "m.csv").read_text()
    assert s["skipped"] == {DUPLICATE: 1} and s["examples"][DUPLICATE] == [f"happy/ann/b{suffix}"]
    assert len(load_audio(src / f"happy/ann/a{suffix}")) > 0  # the data stage reads what the import kept


def test_crema_d_wav_and_mp3_copies_count_once(tmp_path):
    src = tmp_path / "CREMA-D"
    _wav(src / "AudioWAV/1001_DFA_ANG_XX.wav")
    (src / "AudioMP3").mkdir()
    try:
        sf.write(src / "AudioMP3/1001_DFA_ANG_XX.mp3", np.zeros(1600, dtype=np.float32), 16000, format="MP3")
    except Exception as e:
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write MP3: {e}")
    sf.write(src / "AudioMP3/1002_DFA_SAD_XX.mp3", np.zeros(1600, dtype=np.float32), 16000, format="MP3")
    s = import_corpus("crema-d", src, src / "m.csv")
    assert _rows(src / "m.csv") == {"1001_DFA_ANG_XX": ("angry", "1001", ""), "1002_DFA_SAD_XX": ("sad", "1002", "")}
    assert "AudioWAV/1001_DFA_ANG_XX.wav" in (src / "m.csv").read_text() and s["rows"] == 2


def test_import_table_reads_at_80_columns_with_a_long_output_path(tmp_path, monkeypatch):
    """The summary table's title once held the output path and wrapped over three lines at 80 columns."""
    for label, spk in (("happy", "a"), ("sad", "b"), ("happy", "c"), ("sad", "c")):
        _wav(tmp_path / "src" / label / spk / f"{spk}.wav")
    out = tmp_path / ("a_long_folder_name_" * 4) / "manifest.csv"
    monkeypatch.setenv("COLUMNS", "80")
    res = CliRunner().invoke(app, ["data", "import", "folder", str(tmp_path / "src"), "--out", str(out)],
                             terminal_width=80)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].strip() == "folder import" and str(out) not in "".join(lines[:3])


def _votes(manifest: Path) -> dict[str, str]:
    """stem -> the votes cell ({} when the manifest has no votes column)."""
    with open(manifest, newline="") as f:
        return {Path(r["path"]).stem: r["votes"] for r in csv.DictReader(f) if "votes" in r}


EMO_VOTES = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]
C-E1:\tAnger;\t()
[1.0000 - 2.0000]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E1:\tNeutral state;\t()
C-E2:\tFrustration; Anger;\t(annoyed; a bit)
C-E3:\tNeutral;\t()
C-F1:\tAnger;\t()
A-E1:\tval 3; act 2; dom  2;\t()

[3.0000 - 4.0000]\tSes01F_impro01_M000\tang\t[2.0000, 4.0000, 4.0000]
C-E1:\tAnger;\t()
C-E2:\tFrustration;\t()
C-E3:\tExcited; Happiness; Excited;\t()
C-M1:\tSadness;\t()
C-E4:\tBoredom;\t()
C-E5 Anger;
C-E6:\t\t()
C-E1:\tSadness;\t()
[5.0000 - 6.0000]\tSes01F_impro01_F001\texc\t[4.0000, 4.0000, 3.0000]
C-E1:\tExcited;\t()
C-E2:\tOther:amused;\t()
[7.0000 - 8.0000]\tSes01F_impro01_M001\tsad\t[2.0000, 2.0000, 2.0000]
[9.0000 - 9.5000]\tSes01F_impro01_F002\tneu\t[2.5000, 2.5000, 2.5000]
C-E1:\tFrustration;\t()
"""


def _iemocap_votes(root: Path) -> Path:
    eva = root / "Session1/dialog/EmoEvaluation"
    eva.mkdir(parents=True)
    (eva / "Ses01F_impro01.txt").write_text(EMO_VOTES)
    for u in ("F000", "M000", "F001", "M001", "F002"):
        _wav(root / f"Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_{u}.wav")
    return root


def test_iemocap_votes(tmp_path):
    """Every evaluator's labels (k labels: 1/k each), self-ratings only on request, bad lines counted by reason."""
    src = _iemocap_votes(tmp_path / "IEMOCAP")
    s = import_corpus("iemocap", src, src / "m.csv")
    assert _votes(src / "m.csv") == {"Ses01F_impro01_F000": "neutral:2;angry:0.5;frustrated:0.5",
                                     "Ses01F_impro01_M000": "happy:0.5;excited:0.5;angry:1;frustrated:1",
                                     "Ses01F_impro01_F001": "excited:1;other:1",
                                     "Ses01F_impro01_M001": "",
                                     "Ses01F_impro01_F002": "frustrated:1"}
    assert _rows(src / "m.csv")["Ses01F_impro01_M000"] == ("angry", "1M", "1")  # the consensus label stays
    txt = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    assert s["skipped"] == {VOTE_MALFORMED: 3, VOTE_UNKNOWN: 1, VOTE_REPEATED: 1} and s["voted"] == 4
    assert s["examples"][VOTE_MALFORMED] == [f"{txt}:2", f"{txt}:16", f"{txt}:17"]  # line 2: before any utterance
    assert s["examples"][VOTE_UNKNOWN] == [f"{txt}:15"] and s["examples"][VOTE_REPEATED] == [f"{txt}:18"]
    items = {it.path.stem: dict(it.votes) for it in read_manifest(src / "m.csv")}
    assert items["Ses01F_impro01_F000"] == {"neutral": 2, "angry": 0.5, "frustrated": 0.5}
    assert items["Ses01F_impro01_M001"] == {}

    import_corpus("iemocap", src, src / "self.csv", self_ratings=True)
    got = _votes(src / "self.csv")
    assert got["Ses01F_impro01_F000"] == "neutral:2;angry:1.5;frustrated:0.5"
    assert got["Ses01F_impro01_M000"] == "happy:0.5;excited:0.5;sad:1;angry:1;frustrated:1"

    s = import_corpus("iemocap", src, src / "m4.csv", four_class=True)
    assert _votes(src / "m4.csv") == {"Ses01F_impro01_F000": "neutral:2;angry:0.5",  # frustrated dropped
                                      "Ses01F_impro01_M000": "happy:1;angry:1",  # excited + happy
                                      "Ses01F_impro01_F001": "happy:1",  # exc -> happy; other dropped
                                      "Ses01F_impro01_M001": "",
                                      "Ses01F_impro01_F002": ""}  # no vote left: keeps its label, no votes
    assert _rows(src / "m4.csv")["Ses01F_impro01_F002"] == ("neutral", "1F", "1") and s["voted"] == 3


def test_iemocap_votes_cli(tmp_path):
    src = _iemocap_votes(tmp_path / "IEMOCAP")
    res = CliRunner().invoke(app, ["data", "import", "iemocap", str(src), "--out", str(src / "m.csv"),
                                   "--self-ratings"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "with annotator votes" in res.output and "malformed evaluator line" in res.output
    assert "Ses01F_impro01.txt:16" in res.output
    res = CliRunner().invoke(app, ["data", "import", "ravdess", str(src), "--out", str(tmp_path / "r.csv"),
                                   "--self-ratings"])
    assert res.exit_code == 2 and "--self-ratings" in res.output and not (tmp_path / "r.csv").exists()


RATINGS_HEADER = (",localid,pos,ans,ttr,queryType,numTries,clipNum,questNum,subType,clipName,sessionNums,respEmo,"
                  "respLevel,dispEmo,dispVal,dispLevel\n")


def _ratings(path: Path, rows: list[tuple[str, str, int]]) -> None:
    """CREMA-D's finishedResponses.csv with (clipName, respEmo, queryType) ratings."""
    lines = [f"{i},r{i},1,{emo}_50,900,{q},0,1,1,4,{clip},s{i},{emo},50,A,50,X"
             for i, (clip, emo, q) in enumerate(rows)]
    path.write_text(RATINGS_HEADER + "\n".join(lines) + "\n")


def _crema(root: Path) -> Path:
    for name in ("1001_DFA_ANG_XX", "1002_DFA_SAD_XX", "1003_DFA_NEU_XX"):
        _wav(root / "AudioWAV" / f"{name}.wav")
    return root


@pytest.mark.parametrize("where", ["src", "parent"])
def test_crema_d_ratings(tmp_path, where):
    root = _crema(tmp_path / "CREMA-D")
    _ratings(root / "finishedResponses.csv", [
        ("1001_DFA_ANG_XX", "A", 1), ("1001_DFA_ANG_XX", "A", 1), ("1001_DFA_ANG_XX", "N", 1),
        ("1001_DFA_ANG_XX", "S", 2), ("1001_DFA_ANG_XX", "S", 3),  # face-only and audio-visual: not heard
        ("1002_DFA_SAD_XX", "X", 1), ("1002_DFA_SAD_XX", "S", 1),  # X: an unknown code
        ("1099_DFA_ANG_XX", "A", 1), ("1099_DFA_ANG_XX", "A", 1)])  # a rated clip with no audio
    src = root if where == "src" else root / "AudioWAV"
    s = import_corpus("crema-d", src, root / "m.csv")
    assert _votes(root / "m.csv") == {"1001_DFA_ANG_XX": "neutral:1;angry:2", "1002_DFA_SAD_XX": "sad:1",
                                      "1003_DFA_NEU_XX": ""}
    rel = "finishedResponses.csv" if where == "src" else "../finishedResponses.csv"
    assert s["skipped"] == {RATING_UNKNOWN: 1, RATING_NO_AUDIO: 1} and s["voted"] == 2
    assert s["examples"][RATING_UNKNOWN] == [f"{rel}:7"]
    assert s["examples"][RATING_NO_AUDIO] == [f"{rel}:9 (1099_DFA_ANG_XX)"]


def test_crema_d_ratings_absent_mismatched_or_unusable(tmp_path):
    root = _crema(tmp_path / "CREMA-D")
    s = import_corpus("crema-d", root, root / "m.csv")
    assert s["voted"] == 0 and _votes(root / "m.csv") == {} and s["skipped"] == {}  # no ratings file
    _ratings(root / "finishedResponses.csv", [("1050_IEO_HAP_HI", "H", 1), ("1051_IEO_HAP_HI", "H", 1)])
    s = import_corpus("crema-d", root, root / "m.csv")
    assert s["voted"] == 0 and _votes(root / "m.csv") == {} and s["skipped"] == {RATINGS_NO_MATCH: 1}
    assert s["examples"][RATINGS_NO_MATCH] == ["finishedResponses.csv"]
    (root / "finishedResponses.csv").write_text("clip,emotion\n1001_DFA_ANG_XX,A\n")
    s = import_corpus("crema-d", root, root / "m.csv")
    assert s["voted"] == 0 and s["skipped"] == {RATINGS_UNUSABLE: 1} and s["rows"] == 3

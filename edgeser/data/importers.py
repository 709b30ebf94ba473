"""Corpus importers: turn IEMOCAP, RAVDESS, CREMA-D, EmoDB or a folder-per-class tree into a manifest CSV
(path,label,speaker,session) by following each corpus's own naming convention.

Labels are canonical lower-case names (LABELS). Files whose names break the convention are skipped and
counted by reason, never fatal. Paths are relative to the manifest; a manifest written outside SRC needs
`data.root: SRC` in the recipe (the command prints it), since rows may not leave the corpus root otherwise.
Layouts (SRC is the folder given on the command line):
  iemocap  SRC/Session1..5/sentences/wav/<dialog>/<utt>.wav, labels from Session*/dialog/EmoEvaluation/*.txt;
           speaker = session + the first letter of the utterance's LAST field (Ses01F_impro01_M003 -> 1M)
  ravdess  SRC/**/MM-VV-EE-II-SS-RR-AA.wav; audio-only (MM=03) speech (VV=01) only; speaker ravdess_AA
  crema-d  SRC/**/<actor>_<sentence>_<emotion>_<level>.wav (e.g. AudioWAV/1001_DFA_ANG_XX.wav); speaker = actor
  emodb    SRC/**/<speaker:2><text:a01..b10><emotion letter><version>.wav (e.g. wav/03a01Wa.wav)
  folder   SRC/<label>/<speaker>/**/*.wav, or SRC/<label>/<speaker>_<anything>.wav when a file sits directly
           in the label folder (speaker = the stem before the first "_"); folder names may be canonical
           labels or common aliases (anger, happiness, sadness, fearful, surprised, disgusted, bored)
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from edgeser.recipe import RecipeError

LABELS = ("neutral", "calm", "happy", "excited", "sad", "angry", "fear", "disgust", "surprise", "frustrated",
          "boredom", "other")
FOUR_CLASS = ("neutral", "happy", "sad", "angry")
KINDS = ("iemocap", "ravdess", "crema-d", "emodb", "folder")
BAD_NAME = "name breaks the corpus convention"

IEMOCAP_CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
                 "fru": "frustrated", "fea": "fear", "sur": "surprise", "dis": "disgust", "oth": "other"}
RAVDESS_EMOTIONS = dict(zip(range(1, 9), ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")))
CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMA_SENTENCES = {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
EMODB_EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
EMODB_SPEAKERS = {"03", "08", "09", "10", "11", "12", "13", "14", "15", "16"}
FOLDER_ALIASES = {"anger": "angry", "happiness": "happy", "sadness": "sad", "fearful": "fear", "surprised": "surprise",
                  "disgusted": "disgust", "bored": "boredom"}


class Row(NamedTuple):
    path: Path
    label: str
    speaker: str
    session: str = ""


def _wavs(root: Path, pattern: str = "**/*") -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() == ".wav" and p.is_file())


def iemocap_rows(src: Path, skipped: Counter) -> list[Row]:
    codes = {}  # utterance -> code, from the `[start - end]<TAB>utt<TAB>code<TAB>[V, A, D]` lines only
    for txt in sorted(src.glob("Session[1-5]/dialog/EmoEvaluation/*.txt")):
        if txt.name.startswith("."):  # macOS AppleDouble files in some copies
            continue
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split("\t")
            if line.startswith("[") and len(fields) >= 3:
                codes[fields[1].strip()] = fields[2].strip()
    rows = []
    for wav in _wavs(src, "Session[1-5]/sentences/wav/*/*"):
        m = re.fullmatch(r"Ses0([1-5])[MF]_\w+_([MF])\d+", wav.stem)
        code = codes.get(wav.stem)
        if not m:
            skipped[BAD_NAME] += 1
        elif code is None:
            skipped["no EmoEvaluation label"] += 1
        elif code == "xxx":
            skipped["no agreement (xxx)"] += 1
        elif code not in IEMOCAP_CODES:
            skipped[f"unknown IEMOCAP code {code!r}"] += 1
        else:
            rows.append(Row(wav, IEMOCAP_CODES[code], m[1] + m[2], m[1]))
    return rows


def ravdess_rows(src: Path, skipped: Counter) -> list[Row]:
    rows = []
    for wav in _wavs(src):
        parts = wav.stem.split("-")
        if len(parts) != 7 or not all(re.fullmatch(r"\d\d", p) for p in parts):
            skipped[BAD_NAME] += 1
            continue
        mod, voc, emo, inten, stmt, rep, actor = map(int, parts)
        if not (1 <= mod <= 3 and voc in (1, 2) and emo in RAVDESS_EMOTIONS and inten in (1, 2) and stmt in (1, 2)
                and rep in (1, 2) and 1 <= actor <= 24) or (emo == 1 and inten == 2):  # neutral has no strong
            skipped[BAD_NAME] += 1
        elif mod != 3:
            skipped["not audio-only (RAVDESS modality 01/02)"] += 1
        elif voc != 1:
            skipped["song (RAVDESS vocal channel 02)"] += 1
        else:
            rows.append(Row(wav, RAVDESS_EMOTIONS[emo], f"ravdess_{actor:02d}"))
    return rows


def crema_d_rows(src: Path, skipped: Counter) -> list[Row]:
    rows = []
    for wav in _wavs(src):
        m = re.fullmatch(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_(LO|MD|HI|XX)", wav.stem)
        if m and 1001 <= int(m[1]) <= 1091 and m[2] in CREMA_SENTENCES and m[3] in CREMA_EMOTIONS:
            rows.append(Row(wav, CREMA_EMOTIONS[m[3]], m[1]))
        else:
            skipped[BAD_NAME] += 1
    return rows


def emodb_rows(src: Path, skipped: Counter) -> list[Row]:
    rows = []
    for wav in _wavs(src):
        m = re.fullmatch(r"(\d\d)[ab](0[1-9]|10)([A-Z])[a-z]", wav.stem)
        if m and m[1] in EMODB_SPEAKERS and m[3] in EMODB_EMOTIONS:
            rows.append(Row(wav, EMODB_EMOTIONS[m[3]], m[1]))
        else:
            skipped[BAD_NAME] += 1
    return rows


def folder_rows(src: Path, skipped: Counter) -> list[Row]:
    rows = []
    for wav in _wavs(src):
        rel = wav.relative_to(src).parts
        label = FOLDER_ALIASES.get(rel[0].lower(), rel[0].lower())
        if len(rel) < 2:
            skipped["not inside a label folder"] += 1
        elif label not in LABELS:
            skipped[f"folder {rel[0]!r} is not a known label"] += 1
        elif len(rel) >= 3:
            rows.append(Row(wav, label, rel[1]))
        elif "_" in wav.stem and wav.stem.split("_", 1)[0]:
            rows.append(Row(wav, label, wav.stem.split("_", 1)[0]))
        else:
            skipped["no speaker (no speaker folder, no '_' in the name)"] += 1
    return rows


READERS = {"iemocap": iemocap_rows, "ravdess": ravdess_rows, "crema-d": crema_d_rows, "emodb": emodb_rows,
           "folder": folder_rows}


def import_corpus(kind: str, src: Path, out: Path, four_class: bool = False) -> dict:
    """Write the manifest `out` (atomically) for the corpus at `src`; return a summary: rows, labels (counts),
    speakers (sorted ids), skipped ({reason: count}). RecipeError when `src` is missing or nothing matched."""
    from edgeser.fileio import write_text  # imports torch: only when writing

    if kind not in READERS:
        raise RecipeError(f"unknown corpus {kind!r}: choose one of {', '.join(KINDS)}")
    src, out = Path(src).absolute(), Path(out).absolute()
    if not src.is_dir():
        raise RecipeError(f"{src}: no such folder")
    skipped: Counter = Counter()
    rows = READERS[kind](src, skipped)
    if not rows:
        raise RecipeError(f"{src}: no audio matches the {kind} layout ({_describe(skipped) or 'no .wav files'})")
    if four_class:
        merged = [r._replace(label="happy" if r.label == "excited" else r.label) for r in rows]
        rows = [r for r in merged if r.label in FOUR_CLASS]
        skipped["not one of the 4 classes"] += len(merged) - len(rows)
        if not rows:
            raise RecipeError(f"{src}: no {kind} audio is neutral, happy, sad or angry")
    rel = sorted((os.path.relpath(r.path, out.parent).replace(os.sep, "/"), r) for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "speaker", "session"])
    writer.writerows([p, r.label, r.speaker, r.session] for p, r in rel)
    write_text(out, buf.getvalue())
    # rows may only point inside the manifest's folder or the recipe's data.root (edgeser/data/manifest.py):
    # a manifest written outside SRC needs `data.root: SRC` in the recipe
    outside = not src.resolve().is_relative_to(out.parent.resolve())
    labels = Counter(r.label for r in rows)
    return {"kind": kind, "src": str(src), "out": str(out), "needs_root": str(src.resolve()) if outside else None,
            "rows": len(rows), "labels": {lab: labels[lab] for lab in LABELS if labels[lab]},
            "speakers": sorted({r.speaker for r in rows}), "skipped": {k: v for k, v in sorted(skipped.items()) if v}}


def _describe(skipped: Counter) -> str:
    return "; ".join(f"{n} skipped: {reason}" for reason, n in sorted(skipped.items()))


def summary_table(summary: dict):
    """A rich table: clips per label, speakers, and skipped files by reason."""
    from rich.table import Table

    t = Table(title=f"{summary['kind']} -> {summary['out']}")
    t.add_column("label")
    t.add_column("clips", justify="right")
    for label, n in summary["labels"].items():
        t.add_row(label, str(n))
    t.add_section()
    t.add_row("[bold]total[/]", str(summary["rows"]))
    t.add_row("speakers", str(len(summary["speakers"])))
    for reason, n in summary["skipped"].items():
        t.add_row(f"skipped: {reason}", str(n))
    return t

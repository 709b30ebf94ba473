"""Corpus importers: turn IEMOCAP, RAVDESS, CREMA-D, EmoDB or a folder-per-class tree into a manifest CSV
(path,label,speaker,session) by following each corpus's own naming convention.

Labels are canonical lower-case names (LABELS). Audio files are WAV, FLAC, OGG, MP3 (what this libsndfile
decodes) and a few others; each is checked at import (audio_problem: it opens, has frames, is not truncated).
Files that break the convention, are not usable audio, or repeat a clip (the same name in another format or
folder, e.g. CREMA-D's AudioWAV and AudioMP3: WAV is kept) are skipped and counted by reason with a few example
paths, never fatal. Paths are relative to the manifest; a manifest written outside SRC needs `data.root: SRC`
in the recipe (the command prints it), since rows may not leave the corpus root otherwise.
Annotator votes go in a `votes` column (written when some row has votes; format in edgeser/data/votes.py,
e.g. `neutral:2;angry:0.5;frustrated:0.5`); bad vote input (a malformed evaluator line, an unknown emotion, a
ratings file that does not match the audio) is skipped and counted by reason like files, never made a label.
Layouts (SRC is the folder given on the command line):
  iemocap  SRC/Session1..5/sentences/wav/<dialog>/<utt>.wav, labels from Session*/dialog/EmoEvaluation/*.txt;
           speaker = session + the first letter of the utterance's LAST field (Ses01F_impro01_M003 -> 1M);
           votes from the same files' `C-E<n>:<TAB>Anger; Frustration;<TAB>(comment)` evaluator lines, each
           evaluator one vote split evenly over its labels (1/k each of k); the actors' own `C-F<n>`/`C-M<n>`
           self-ratings only with self_ratings (--self-ratings)
  ravdess  SRC/**/MM-VV-EE-II-SS-RR-AA.wav; audio-only (MM=03) speech (VV=01) only; speaker ravdess_AA
  crema-d  SRC/**/<actor>_<sentence>_<emotion>_<level>.wav (e.g. AudioWAV/1001_DFA_ANG_XX.wav); speaker = actor;
           votes from finishedResponses.csv in SRC or SRC/.. when present (clipName, respEmo A D F H N S; only
           the voice-only ratings, queryType 1, when the file has that column), one vote per rating
  emodb    SRC/**/<speaker:2><text:a01..b10><emotion letter><version>.wav (e.g. wav/03a01Wa.wav)
  folder   SRC/<label>/<speaker>/**/*.wav; or with a speaker pattern (group 1 of a regex searched in the file
           name without its extension) SRC/<label>/**/*.wav; a file directly in a label folder with no pattern
           is its own speaker, with a warning (splits are then not speaker-independent); folder names may be
           canonical labels or common aliases (anger, happiness, sadness, fearful, surprised, disgusted, bored)
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import NamedTuple

import soundfile as sf

from edgeser.data.audio import SAMPLE_RATES, _unreadable_reason, _wav_shortfall
from edgeser.data.votes import format_votes, remap
from edgeser.errors import InputError

LABELS = ("neutral", "calm", "happy", "excited", "sad", "angry", "fear", "disgust", "surprise", "frustrated",
          "boredom", "other")
FOUR_CLASS = ("neutral", "happy", "sad", "angry")
KINDS = ("iemocap", "ravdess", "crema-d", "emodb", "folder")
BAD_NAME = "name breaks the corpus convention"
DUPLICATE = "same clip again (same name in another format or folder)"
NO_PATTERN_MATCH = "file name does not match --speaker-pattern"
# audio suffixes -> libsndfile format, in the order a repeated clip is kept; None: libsndfile never reads it
SUFFIX_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".aif": "AIFF", ".aiff": "AIFF", ".au": "AU", ".caf": "CAF",
                  ".w64": "W64", ".ogg": "OGG", ".mp3": "MP3", ".m4a": None, ".aac": None, ".wma": None}

IEMOCAP_CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
                 "fru": "frustrated", "fea": "fear", "sur": "surprise", "dis": "disgust", "oth": "other"}
RAVDESS_EMOTIONS = dict(zip(range(1, 9), ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")))
CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMA_SENTENCES = {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
EMODB_EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
EMODB_SPEAKERS = {"03", "08", "09", "10", "11", "12", "13", "14", "15", "16"}
FOLDER_ALIASES = {"anger": "angry", "happiness": "happy", "sadness": "sad", "fearful": "fear", "surprised": "surprise",
                  "disgusted": "disgust", "bored": "boredom"}
# the label words of IEMOCAP's evaluator lines (lower case; "Other:<text>" is other), as IEMOCAP_CODES maps codes
IEMOCAP_WORDS = {"neutral": "neutral", "neutral state": "neutral", "happiness": "happy", "excited": "excited",
                 "sadness": "sad", "anger": "angry", "frustration": "frustrated", "fear": "fear",
                 "surprise": "surprise", "disgust": "disgust", "other": "other"}
CREMA_RESPONSES = {"A": "angry", "D": "disgust", "F": "fear", "H": "happy", "N": "neutral", "S": "sad"}
CREMA_RATINGS = "finishedResponses.csv"
# reasons for vote input left out (each counts evaluator lines, ratings, rated clips or ratings files)
VOTE_MALFORMED = "malformed evaluator line (its vote is ignored)"
VOTE_UNKNOWN = "evaluator line names an unknown emotion (its vote is ignored)"
VOTE_REPEATED = "evaluator rated the utterance twice (the later vote is ignored)"
RATING_UNKNOWN = "rating with an unknown emotion code (ignored)"
RATING_NO_AUDIO = "rated clip has no audio file (its ratings are ignored)"
RATINGS_UNUSABLE = "ratings file unreadable or without clipName/respEmo columns (not used)"
RATINGS_NO_MATCH = "ratings file matches no audio clip (not used)"


class Row(NamedTuple):
    path: Path
    label: str
    speaker: str
    session: str = ""
    votes: tuple[tuple[str, float], ...] = ()  # annotator votes, (label, count) pairs


class Skipped:
    """Files left out: a count per reason (a fixed phrase, so counts add up) and the first few paths of each."""

    def __init__(self, src: Path, examples: int = 3):
        self.src, self.n_examples = src, examples
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, path: Path, where: str | None = None) -> None:
        """`where`: the example to show instead of the path relative to SRC (e.g. FILE:LINE)."""
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.n_examples:
            shown.append(where or path.relative_to(self.src).as_posix())


@cache
def _readable(fmt: str | None) -> bool:
    return fmt in sf.available_formats()


def audio_problem(path: Path) -> str | None:
    """Why `path` is not usable audio, or None. Cheap: the header, the first block and the WAV data size, not
    the whole file; the reasons are load_audio's phrases (what the data stage counts), plus the format one."""
    suffix = path.suffix.lower()
    if not _readable(SUFFIX_FORMATS[suffix]):
        return f"{suffix} audio: this libsndfile cannot decode it (convert to WAV or FLAC)"
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, f.frames
            first = len(f.read(min(frames, 4096), dtype="float32")) if frames > 0 else 0
    except Exception:  # soundfile raises several types for unreadable files
        return _unreadable_reason(path)
    if not SAMPLE_RATES[0] <= rate <= SAMPLE_RATES[1]:
        return "implausible sample rate"
    if first == 0:
        return "no samples"
    if _wav_shortfall(path, size):
        return "truncated (header claims more data than the file holds)"
    return None


def _audio_files(root: Path, pattern: str = "**/*") -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in SUFFIX_FORMATS and p.is_file())


def _evaluator_labels(text: str) -> list[str] | None:
    """The labels of an evaluator line's `Anger; Frustration;<TAB>(comment)` part, in IEMOCAP_WORDS' words (None
    when one is unknown); [] when there is none."""
    text = re.sub(r"\([^()]*\)\s*$", "", text)  # the trailing (comment)
    words = [w.strip().lower() for w in text.split(";") if w.strip()]
    words = ["other" if w.startswith("other:") else " ".join(w.split()) for w in words]
    if any(w not in IEMOCAP_WORDS for w in words):
        return None
    return list(dict.fromkeys(IEMOCAP_WORDS[w] for w in words))


def iemocap_rows(src: Path, skipped: Skipped, self_ratings: bool = False) -> list[Row]:
    codes = {}  # utterance -> code, from the `[start - end]<TAB>utt<TAB>code<TAB>[V, A, D]` lines only
    votes: dict[str, dict[str, float]] = {}  # utterance -> label -> votes, from the `C-<who><n>:` lines after it
    for txt in sorted(src.glob("Session[1-5]/dialog/EmoEvaluation/*.txt")):
        if txt.name.startswith("."):  # macOS AppleDouble files in some copies
            continue
        utt, seen = None, set()
        for n, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            fields = line.split("\t")
            if line.startswith("[") and len(fields) >= 3:
                utt, seen = fields[1].strip(), set()
                codes[utt] = fields[2].strip()
            elif line.startswith("C-"):
                where = f"{txt.relative_to(src).as_posix()}:{n}"
                m = re.fullmatch(r"C-([EFM])(\d+):(.*)", line.strip())
                labels = _evaluator_labels(m[3]) if m else []
                if not m or utt is None or labels == []:
                    skipped.add(VOTE_MALFORMED, txt, where)
                elif labels is None:
                    skipped.add(VOTE_UNKNOWN, txt, where)
                elif m[1] + m[2] in seen:
                    skipped.add(VOTE_REPEATED, txt, where)
                elif m[1] == "E" or self_ratings:  # C-F / C-M: the actors rating themselves
                    seen.add(m[1] + m[2])
                    got = votes.setdefault(utt, {})
                    for label in labels:
                        got[label] = got.get(label, 0.0) + 1 / len(labels)
    rows = []
    for wav in _audio_files(src, "Session[1-5]/sentences/wav/*/*"):
        m = re.fullmatch(r"Ses0([1-5])[MF]_\w+_([MF])\d+", wav.stem)
        code = codes.get(wav.stem)
        if not m:
            skipped.add(BAD_NAME, wav)
        elif code is None:
            skipped.add("no EmoEvaluation label", wav)
        elif code == "xxx":
            skipped.add("no agreement (xxx)", wav)
        elif code not in IEMOCAP_CODES:
            skipped.add(f"unknown IEMOCAP code {code!r}", wav)
        else:
            rows.append(Row(wav, IEMOCAP_CODES[code], m[1] + m[2], m[1], tuple(votes.get(wav.stem, {}).items())))
    return rows


def ravdess_rows(src: Path, skipped: Skipped) -> list[Row]:
    rows = []
    for wav in _audio_files(src):
        parts = wav.stem.split("-")
        if len(parts) != 7 or not all(re.fullmatch(r"\d\d", p) for p in parts):
            skipped.add(BAD_NAME, wav)
            continue
        mod, voc, emo, inten, stmt, rep, actor = map(int, parts)
        if not (1 <= mod <= 3 and voc in (1, 2) and emo in RAVDESS_EMOTIONS and inten in (1, 2) and stmt in (1, 2)
                and rep in (1, 2) and 1 <= actor <= 24) or (emo == 1 and inten == 2):  # neutral has no strong
            skipped.add(BAD_NAME, wav)
        elif mod != 3:
            skipped.add("not audio-only (RAVDESS modality 01/02)", wav)
        elif voc != 1:
            skipped.add("song (RAVDESS vocal channel 02)", wav)
        else:
            rows.append(Row(wav, RAVDESS_EMOTIONS[emo], f"ravdess_{actor:02d}"))
    return rows


def crema_d_rows(src: Path, skipped: Skipped) -> list[Row]:
    rows = []
    for wav in _audio_files(src):
        m = re.fullmatch(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_(LO|MD|HI|XX)", wav.stem)
        if m and 1001 <= int(m[1]) <= 1091 and m[2] in CREMA_SENTENCES and m[3] in CREMA_EMOTIONS:
            rows.append(Row(wav, CREMA_EMOTIONS[m[3]], m[1]))
        else:
            skipped.add(BAD_NAME, wav)
    votes = crema_d_votes(src, {r.path.stem for r in rows}, skipped)
    return [r._replace(votes=tuple(votes.get(r.path.stem, {}).items())) for r in rows]


def crema_d_votes(src: Path, clips: set[str], skipped: Skipped) -> dict[str, dict[str, float]]:
    """clip -> label -> ratings, from CREMA-D's finishedResponses.csv in SRC or SRC/.. ({} when absent). Only
    the voice-only ratings (queryType 1) when the file has that column. A rating with an unknown emotion code or
    for a clip not in `clips`, and a file that is unusable or matches no clip, are skipped by reason."""
    path = next((p for p in (src / CREMA_RATINGS, src.parent / CREMA_RATINGS) if p.is_file()), None)
    if path is None:
        return {}
    rel = os.path.relpath(path, src).replace(os.sep, "/")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = list(reader) if {"clipName", "respEmo"} <= set(fields) else None
    except (OSError, UnicodeDecodeError, csv.Error):
        rows = None
    if rows is None:
        skipped.add(RATINGS_UNUSABLE, path, rel)
        return {}
    votes: dict[str, dict[str, float]] = {}
    unmatched: dict[str, int] = {}  # rated clip with no audio -> its first line
    for n, r in enumerate(rows, start=2):
        if "queryType" in fields and (r.get("queryType") or "").strip() not in ("1", "1.0"):
            continue  # a face-only or audio-visual rating: not what a speech model hears
        clip, emo = (r.get("clipName") or "").strip(), (r.get("respEmo") or "").strip()
        if emo not in CREMA_RESPONSES:
            skipped.add(RATING_UNKNOWN, path, f"{rel}:{n}")
        elif clip not in clips:
            unmatched.setdefault(clip, n)
        else:
            got = votes.setdefault(clip, {})
            got[CREMA_RESPONSES[emo]] = got.get(CREMA_RESPONSES[emo], 0.0) + 1
    if not votes and unmatched:
        skipped.add(RATINGS_NO_MATCH, path, rel)
    else:
        for clip, n in unmatched.items():
            skipped.add(RATING_NO_AUDIO, path, f"{rel}:{n} ({clip})")
    return votes


def emodb_rows(src: Path, skipped: Skipped) -> list[Row]:
    rows = []
    for wav in _audio_files(src):
        m = re.fullmatch(r"(\d\d)[ab](0[1-9]|10)([A-Z])[a-z]", wav.stem)
        if m and m[1] in EMODB_SPEAKERS and m[3] in EMODB_EMOTIONS:
            rows.append(Row(wav, EMODB_EMOTIONS[m[3]], m[1]))
        else:
            skipped.add(BAD_NAME, wav)
    return rows


def folder_rows(src: Path, skipped: Skipped, speaker_pattern: re.Pattern | None = None) -> list[Row]:
    """SRC/<label>/<speaker>/**/<file>, or the speaker from speaker_pattern's group 1 in the file name (without
    its extension) wherever the file is; a file directly in a label folder with no pattern is its own speaker,
    named by its path (speaker folders cannot contain "/", so such ids never collide with them)."""
    rows = []
    for path in _audio_files(src):
        rel = path.relative_to(src).parts
        label = FOLDER_ALIASES.get(rel[0].lower(), rel[0].lower())
        m = speaker_pattern.search(path.stem) if speaker_pattern else None
        if len(rel) < 2:
            skipped.add("not inside a label folder", path)
        elif label not in LABELS:
            skipped.add(f"folder {rel[0]!r} is not a known label", path)
        elif speaker_pattern and not (m and m[1]):
            skipped.add(NO_PATTERN_MATCH, path)
        else:
            speaker = m[1] if m else rel[1] if len(rel) >= 3 else path.relative_to(src).with_suffix("").as_posix()
            rows.append(Row(path, label, speaker))
    return rows


READERS = {"iemocap": iemocap_rows, "ravdess": ravdess_rows, "crema-d": crema_d_rows, "emodb": emodb_rows,
           "folder": folder_rows}


def speaker_regex(pattern: str | None, kind: str) -> re.Pattern | None:
    """--speaker-pattern compiled; InputError naming the option unless it is a regex with exactly one group."""
    if pattern is None:
        return None
    if kind != "folder":
        raise InputError(f"--speaker-pattern: only the folder layout takes it ({kind} names its own speakers)")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise InputError(f"--speaker-pattern {pattern!r}: not a regular expression ({e})") from None
    if rx.groups != 1:
        raise InputError(f"--speaker-pattern {pattern!r}: needs exactly one (group), the speaker; it has "
                          f"{rx.groups}, e.g. '^([^_]+)_' takes alice from alice_001.wav")
    return rx


def _usable(rows: list[Row], src: Path, skipped: Skipped, key) -> list[Row]:
    """The rows whose file is usable audio inside SRC, one per clip (`key`): of a clip found twice (another
    format or folder), the first usable copy in SUFFIX_FORMATS order (WAV first) is kept, the rest skipped."""
    order = list(SUFFIX_FORMATS)
    root = src.resolve()
    kept, seen = [], set()
    for r in sorted(rows, key=lambda r: (key(r), order.index(r.path.suffix.lower()), str(r.path))):
        if key(r) in seen:
            skipped.add(DUPLICATE, r.path)
            continue
        inside = r.path.resolve().is_relative_to(root)
        why = audio_problem(r.path) if inside else "symlink out of the corpus root"
        if why:
            skipped.add(why, r.path)
        else:
            kept.append(r)
            seen.add(key(r))
    return kept


def import_corpus(kind: str, src: Path, out: Path, four_class: bool = False, speaker_pattern: str | None = None,
                  self_ratings: bool = False) -> dict:
    """Write the manifest `out` (atomically) for the corpus at `src`; return a summary: rows, labels (counts),
    voted (rows with annotator votes), speakers (sorted ids), skipped ({reason: count}), examples ({reason: a
    few paths relative to SRC}) and warnings. InputError when `src` is missing, `speaker_pattern` is bad,
    `self_ratings` is asked of a corpus other than IEMOCAP, or nothing matched. `four_class` maps excited to
    happy in labels and votes alike, and drops the votes for other classes (a row left with none keeps its
    label and has no votes)."""
    from edgeser.fileio import write_text  # imports torch: only when writing

    if kind not in READERS:
        raise InputError(f"unknown corpus {kind!r}: choose one of {', '.join(KINDS)}")
    pattern = speaker_regex(speaker_pattern, kind)
    if self_ratings and kind != "iemocap":
        raise InputError(f"--self-ratings: only iemocap has the actors' self-ratings ({kind} has none)")
    src, out = Path(src).absolute(), Path(out).absolute()
    if not src.is_dir():
        raise InputError(f"{src}: no such folder")
    skipped = Skipped(src)
    found = (folder_rows(src, skipped, pattern) if kind == "folder"
             else iemocap_rows(src, skipped, self_ratings) if kind == "iemocap" else READERS[kind](src, skipped))
    # the named corpora's file names are clip ids; a folder tree's clip is its path less the suffix
    key = (lambda r: str(r.path.with_suffix(""))) if kind == "folder" else (lambda r: r.path.stem)
    rows = _usable(found, src, skipped, key)
    if not rows:
        raise InputError(f"{src}: no audio matches the {kind} layout ({_describe(skipped) or 'no audio files'})")
    if four_class:
        rows = [r._replace(label="happy" if r.label == "excited" else r.label,
                           votes=tuple(remap(dict(r.votes), {"excited": "happy"}, FOUR_CLASS).items()))
                for r in rows]
        for r in rows:
            if r.label not in FOUR_CLASS:
                skipped.add("not one of the 4 classes", r.path)
        rows = [r for r in rows if r.label in FOUR_CLASS]
        if not rows:
            raise InputError(f"{src}: no {kind} audio is neutral, happy, sad or angry")
    rel = sorted((os.path.relpath(r.path, out.parent).replace(os.sep, "/"), r) for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    voted = sum(bool(format_votes(dict(r.votes))) for r in rows)
    writer.writerow(["path", "label", "speaker", "session"] + (["votes"] if voted else []))
    writer.writerows([p, r.label, r.speaker, r.session] + ([format_votes(dict(r.votes), LABELS)] if voted else [])
                     for p, r in rel)
    write_text(out, buf.getvalue())
    # rows may only point inside the manifest's folder or the recipe's data.root (edgeser/data/manifest.py):
    # a manifest written outside SRC needs `data.root: SRC` in the recipe
    outside = not src.resolve().is_relative_to(out.parent.resolve())
    labels = Counter(r.label for r in rows)
    speakers = sorted({r.speaker for r in rows})
    return {"kind": kind, "src": str(src), "out": str(out), "needs_root": str(src.resolve()) if outside else None,
            "rows": len(rows), "labels": {lab: labels[lab] for lab in LABELS if labels[lab]}, "voted": voted,
            "speakers": speakers,
            "skipped": dict(sorted(skipped.counts.items())), "examples": skipped.examples,
            "warnings": _warnings(kind, src, rows, pattern, speakers)}


def _warnings(kind: str, src: Path, rows: list[Row], pattern, speakers: list[str]) -> list[str]:
    out = []
    own = sum(len(r.path.relative_to(src).parts) == 2 for r in rows) if kind == "folder" and not pattern else 0
    if own:
        out.append(f"{own} clip(s) sit directly in a label folder, with no speaker folder: each is its own speaker, "
                   "so train/val/test splits are NOT speaker-independent (one person's clips can land in train and "
                   "test, and scores will be optimistic). Use SRC/<label>/<speaker>/ folders, or --speaker-pattern "
                   "REGEX to read the speaker from the file name, e.g. '^([^_]+)_' for alice_001.wav")
    if len(speakers) < 3:
        out.append(f"{len(speakers)} speaker(s) ({', '.join(speakers)}): speaker-independent splits need at least 3")
    return out


def _describe(skipped: Skipped) -> str:
    return "; ".join(f"{n} skipped: {reason} (e.g. {skipped.examples[reason][0]})"
                     for reason, n in sorted(skipped.counts.items()))


def summary_table(summary: dict):
    """A rich table: clips per label, speakers, and skipped files by reason with a few example paths."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{summary['kind']} import"))  # the path goes on the 'wrote' line
    t.add_column("label")
    t.add_column("clips", justify="right")
    t.add_column("e.g.")
    for label, n in summary["labels"].items():
        t.add_row(label, str(n))
    t.add_section()
    t.add_row("[bold]total[/]", str(summary["rows"]))
    if summary.get("voted"):
        t.add_row("with annotator votes", str(summary["voted"]))
    t.add_row("speakers", str(len(summary["speakers"])))
    for reason, n in summary["skipped"].items():
        t.add_row(escape(f"skipped: {reason}"), str(n), escape(", ".join(summary["examples"].get(reason, []))))
    return t

"""Command line: compress, finetune, cv, verify, bench, stream, data (synth, import), recipe (defaults,
schema). Exit codes: 0 ok, 1 a gate failed, 2 bad input (errors.InputError: the message names the field or file)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from edgeser.errors import InputError
from edgeser.recipe import load_recipe
from edgeser.run_dir import RunDir

# rich_markup_mode=None: click's plain help, which wraps to the terminal and shows flags without `<bool>` types
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Compress speech-emotion models for edge devices.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Corpora: import IEMOCAP, RAVDESS, CREMA-D, EmoDB or a folder; generate the synthetic one.")
app.add_typer(data_app, name="data", short_help="import a corpus, or write the synthetic one")
recipe_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The recipe's options: every default with its description, and the JSON Schema.")
app.add_typer(recipe_app, name="recipe", short_help="every option with its default; the JSON Schema")
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _bad_input(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)  # msg quotes user input: "[/x]" is not markup
    raise typer.Exit(2)


# what the running command is doing, for the Ctrl-C message in main()
_COMMAND: dict = {}


def _run(recipe: Path, sets, out: Path | None, no_progress: bool, until: str, resume: bool = False):
    """Validate the recipe (exit 2 on bad input, nothing written) and run the pipeline up to `until`."""
    from edgeser.pipeline import compress as run_pipeline

    try:
        r = load_recipe(recipe, sets or [])
        run_dir = out or Path("runs") / r.name
        _COMMAND.update(argv=[a for a in sys.argv[1:] if a != "--resume"], run_dir=str(run_dir))
        return run_dir, run_pipeline(r, run_dir, console=console, show_progress=not no_progress, until=until,
                                     resume=resume)
    except InputError as e:
        _bad_input(str(e))
    except KeyboardInterrupt:  # inside the command: click would otherwise turn it into a bare exit
        _interrupted()
        raise typer.Exit(130)


def _other_ranks_exit() -> None:
    """Under torchrun, ranks other than 0 print nothing and exit 0 once their share of the training is done."""
    from edgeser import distributed

    if not distributed.is_main():
        raise typer.Exit(0)


# options shared by the commands that run the pipeline
RECIPE = typer.Option(..., "--recipe", "-r", metavar="YAML", help="the recipe; relative paths in it resolve "
                                                                     "against its folder")
SET = typer.Option(None, "--set", metavar="KEY=VALUE", help="override any recipe field, e.g. --set distill.epochs=3 "
                                                            "(a relative path resolves against the working folder)")
OUT = typer.Option(None, "--out", metavar="DIR", help="run folder (default runs/<recipe name>)")
NO_PROGRESS = typer.Option(False, "--no-progress", help="no progress bars")
RESUME = typer.Option(False, "--resume", help="skip stages finished with the same inputs; continue training from "
                                              "the last epoch checkpoint")


@app.command(short_help="run the whole pipeline from a recipe")
def compress(recipe: Path = RECIPE, set_: Optional[List[str]] = SET, out: Optional[Path] = OUT,
             no_progress: bool = NO_PROGRESS, resume: bool = RESUME):
    """Run the whole pipeline from one recipe and verify every artifact."""
    from edgeser.report import print_report

    run_dir, report = _run(recipe, set_, out, no_progress, "report", resume)
    _other_ranks_exit()
    print_report(console, report)
    console.print(f"report: {RunDir(run_dir).report('md')}")
    raise typer.Exit(0 if report["passed"] else 1)


@app.command(short_help="train the teacher only (SoundNet-8 transfer)")
def finetune(recipe: Path = RECIPE, set_: Optional[List[str]] = SET, out: Optional[Path] = OUT,
             no_progress: bool = NO_PROGRESS, resume: bool = RESUME):
    """Transfer SoundNet-8 to speech emotion (the teacher stage of `compress`, on its own)."""
    run_dir, m = _run(recipe, set_, out, no_progress, "teacher", resume)
    _other_ranks_exit()
    t = m["test"]
    console.print(f"teacher ({m['train'].get('strategy', 'loaded')}): test UA {100 * t['ua']:.1f}%  "
                  f"WA {100 * t['wa']:.1f}%  macro-F1 {100 * t['macro_f1']:.1f}%")
    console.print("per-class recall: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in t["per_class_recall"].items()))
    console.print(f"model: {RunDir(run_dir).model('teacher')}")


@app.command(short_help="k-fold speaker-independent cross-validation")
def cv(recipe: Path = RECIPE, set_: Optional[List[str]] = SET,
       folds: Optional[int] = typer.Option(None, "--folds", metavar="N", help="N speaker folds (default 5): "
                                           "speakers dealt into N groups balanced by clip count, from data.seed"),
       by: str = typer.Option("speaker", "--by", metavar="speaker|session", help="session: leave-one-session-out, "
                              "one fold per manifest session (IEMOCAP)"),
       jobs: int = typer.Option(1, "--jobs", metavar="J", help="folds run at once, each in its own process"),
       out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="cv folder (default "
                                          "runs/<recipe name>-cv); fold K runs in DIR/fold-K"),
       no_progress: bool = NO_PROGRESS, resume: bool = RESUME):
    """Cross-validate: the whole pipeline once per fold (RUN/fold-K), each fold's test set one speaker group
    (--folds N) or one session (--by session); then RUN/cv.json, cv.md and cv.html with the mean ± std over folds
    of UA, WA and macro-F1 for the teacher, each stage and each artifact. Exit 0 when every fold's gates pass,
    1 when a gate fails in any fold, 2 on bad input."""
    from edgeser.cv import run_cv
    from edgeser.cv_report import print_cv

    try:
        r = load_recipe(recipe, set_ or [])
        run_dir = out or Path("runs") / f"{r.name}-cv"
        _COMMAND.update(argv=[a for a in sys.argv[1:] if a != "--resume"], run_dir=str(run_dir))
        summary = run_cv(r, run_dir, folds=folds, by=by, jobs=jobs, resume=resume, console=console,
                         show_progress=not no_progress)
    except InputError as e:
        _bad_input(str(e))
    except KeyboardInterrupt:
        _interrupted()
        raise typer.Exit(130)
    print_cv(console, summary, r.name)
    console.print(f"report: {run_dir / 'cv.md'}", highlight=False)
    raise typer.Exit(0 if summary["passed"] else 1)


def _version(value: bool):
    if value:
        from edgeser.resume import package_version

        console.print(f"edgeser {package_version()}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """Compress speech-emotion models for edge devices."""


def find_run_folder(path: Path) -> Path:
    """A run folder, or the run folder a file or folder inside it belongs to (the nearest parent with both
    manifest.json and recipe.json). InputError (exit 2) when there is none."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such run folder")
    for p in [path if path.is_dir() else path.parent, *path.resolve().parents]:
        if RunDir(p).is_finished():
            return p
    raise InputError(f"{path}: not inside a finished `edgeser compress` run folder (no manifest.json and "
                      "recipe.json here or above)")


# what `verify --set` may change: the gates, and how a --data manifest is read
VERIFY_SETTABLE = ("verify.", "data.root", "data.allow_outside_root", "data.label_map")


def verify_overrides(sets: list[str]) -> list[str]:
    """`verify --set` changes gates (and how --data is read) only: any other key is refused (exit 2), not
    silently ignored."""
    from edgeser.recipe import parse_overrides

    for key, _ in parse_overrides(sets):
        if not key.startswith(VERIFY_SETTABLE):
            raise InputError(f"--set {key}: verify only re-checks gates, so only verify.* fields (and data.root, "
                              "data.allow_outside_root, data.label_map for --data) can be overridden (e.g. --set "
                              "verify.min_agreement=0.99); re-run `edgeser compress` to change the models")
    return sets


@app.command(short_help="re-check a run's artifacts and gates (CI)")
def verify(run_dir: Path = typer.Argument(..., metavar="RUN", help="a finished `edgeser compress` run folder (or a "
                                          "file in it, e.g. RUN/report.json)"),
           artifact: Optional[str] = typer.Option(None, "--artifact", metavar="NAME",
                                                  help="check only this artifact"),
           junit: Optional[Path] = typer.Option(None, "--junit", metavar="FILE", help="write JUnit XML here"),
           data: Optional[Path] = typer.Option(None, "--data", metavar="CSV", help="manifest CSV "
                                               "(path,label,speaker): score EVERY row, and the teacher on the same "
                                               "clips"),
           set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                                    help="override a gate, e.g. --set verify.min_agreement=0.99 "
                                                         "(verify.* fields; data.root, data.allow_outside_root "
                                                         "and data.label_map for --data)")):
    """Re-check exported artifacts in CI: sha256 against manifest.json, accuracy, agreement, latency and
    size gates on the held-out split. Exit 0 all pass, 1 a gate failed or a file changed, 2 bad input."""
    from rich.markup import escape

    from edgeser.reverify import verify_run, write_junit

    try:
        found = find_run_folder(run_dir)
        if found != run_dir:
            console.print(f"run folder: {escape(str(found))}", highlight=False)
        result = verify_run(found, artifact=artifact, data=data, sets=verify_overrides(set_ or []))
    except InputError as e:
        _bad_input(str(e))
    clips = result["clips"]
    skipped = sum(clips["skipped"].values())
    why = f": {', '.join(f'{n} {k}' for k, n in sorted(clips['skipped'].items()))}" if skipped else ""
    if clips["split"] == "every row":
        console.print(f"scored {clips['scored']} clips: every usable row of {escape(clips['source'])} "
                      f"({skipped} skipped{escape(why)})", highlight=False)
    else:
        console.print(f"scored {clips['scored']} clips: the held-out speakers ({escape(', '.join(clips['speakers']))}) of "
                      f"{escape(clips['source'])} ({skipped} skipped in the whole manifest{escape(why)})", highlight=False)
    for w in result["warnings"]:
        console.print(f"[yellow]warning[/]: {escape(w)}", highlight=False)
    for c in result["checks"]:
        mark = "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]"
        limit = f" (limit {c['limit']})" if "limit" in c else ""
        ci = f" [95% CI {c['ci'][0]:.4g}, {c['ci'][1]:.4g}]" if c.get("ci") else ""
        console.print(f"{mark} {escape(c['name'])}: {escape(str(c['value']))}{escape(ci)}{escape(limit)}")
    t = result["teacher"]
    console.print(f"teacher on the same {t['n']} clips: UA {100 * t['ua']:.1f}% "
                  f"[{100 * t['ua_ci'][0]:.1f}, {100 * t['ua_ci'][1]:.1f}]", highlight=False)
    for a in result["artifacts"]:
        if a["status"] == "verified":
            lo, hi = a["ua_ci"]
            dlo, dhi = a["ua_drop_ci_pt"]
            console.print(f"{a['name']}: UA {100 * a['ua']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] on {a['n']} clips, "
                          f"drop vs teacher {a['ua_drop_pt']:.1f} pt [{dlo:.1f}, {dhi:.1f}], "
                          f"agreement {100 * a['agreement']:.1f}% vs {a.get('reference')}, "
                          f"p95 {a['latency_ms']['p95']:.2f} ms", highlight=False)
    if junit is not None:
        write_junit(junit, result)
        console.print(f"junit: {junit}")
    raise typer.Exit(0 if result["passed"] else 1)


@app.command(short_help="latency, throughput and memory of artifacts")
def bench(artifacts: List[Path] = typer.Argument(..., help="artifact files, stream folders, or a folder such as "
                                                           "RUN/artifacts"),
          threads: int = typer.Option(1, "--threads", min=1, help="intra-op threads"),
          batch: int = typer.Option(1, "--batch", min=1, help="clips per call (streams per call for a stream folder)"),
          samples: Optional[int] = typer.Option(None, "--samples", min=1, help="clip length (default: the model's or "
                                                "the run's; the window for a stream folder)"),
          runs: int = typer.Option(50, "--runs", min=1, help="at least this many timed calls"),
          seconds: float = typer.Option(1.0, "--seconds", min=0.0, help="and at least this long")):
    """p50/p95/p99 latency, throughput and peak memory of every artifact that runs here, each in its own
    process; a table, then one JSON object as the last line. A stream folder (RUN/artifacts/student_int8_stream)
    is timed per window with its frame cache: one call is the cached per-hop step (its note says so).
    Exit 1 when an artifact fails to run."""
    from edgeser.benchmark import SUFFIX_FORMATS, BenchError, bench_main, expand_artifacts

    paths = expand_artifacts(artifacts)
    if not paths:
        _bad_input(f"no artifacts in {', '.join(map(str, artifacts))} (expected {', '.join(sorted(SUFFIX_FORMATS))} "
                   f"or a stream folder)")
    try:
        code = bench_main(paths, threads, batch, samples, console, runs=runs, min_seconds=seconds)
    except BenchError as e:
        _bad_input(str(e))
    raise typer.Exit(code)


@app.command(short_help="emotion timeline over live or recorded audio")
def stream(artifact: Path = typer.Argument(..., help="RUN/artifacts/student_int8_stream (cached) or an .onnx "
                                                     "(every window recomputed)"),
           wav: Optional[Path] = typer.Option(None, "--wav", help="audio file (any rate; resampled to 16 kHz)"),
           stdin: bool = typer.Option(False, "--stdin", help="raw mono 16 kHz PCM on stdin"),
           mic: bool = typer.Option(False, "--mic", help="the default microphone (needs `sounddevice`)"),
           fmt: str = typer.Option("s16le", "--format", help="stdin PCM: s16le or f32le"),
           recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="stream settings (default: the run's)"),
           window: Optional[float] = typer.Option(None, "--window", help="window length, seconds"),
           hop: Optional[float] = typer.Option(None, "--hop", help="window hop, seconds"),
           smoothing: Optional[str] = typer.Option(None, "--smooth", help="ema, median or none"),
           no_cache: bool = typer.Option(False, "--no-cache", help="recompute every window's frames (always so "
                                                                   "for a plain .onnx)"),
           threads: int = typer.Option(1, "--threads", min=1, help="onnxruntime threads")):
    """Emotion timeline over live audio: one JSON line per window (time, label, smoothed probabilities),
    printed as each window completes; a summary with the real-time factor goes to stderr. A plain .onnx
    cannot share frames between windows: it streams without the cache, and a note on stderr says so."""
    import json as _json

    from edgeser.streaming.artifact import StreamError, StreamModel
    from edgeser.streaming.sources import mic_chunks, stdin_chunks, wav_chunks
    from edgeser.streaming.streamer import Streamer, resolve_settings

    if sum([wav is not None, stdin, mic]) != 1:
        _bad_input("give exactly one input: --wav FILE, --stdin or --mic")
    streamer = None
    try:
        model = StreamModel(artifact, threads)
        settings = resolve_settings(model, recipe, window, hop, smoothing)
        cache = not no_cache and model.cacheable
        streamer = Streamer(model, settings, cache=cache)
        if not no_cache and not model.cacheable:
            err.print(f"note: {artifact} is a plain ONNX, so windows cannot share frames: streaming without the "
                      f"cache (as --no-cache); the cached one is the stream folder, RUN/artifacts/student_int8_stream",
                      highlight=False, markup=False)
        chunk = model.hop * 4  # four frame hops per read (100 ms at the default 25 ms hop)
        source = wav_chunks(wav, chunk) if wav else stdin_chunks(chunk, fmt) if stdin else mic_chunks(chunk)
        out = sys.stdout
        for pcm in source:
            for e in streamer.push(pcm):
                out.write(_json.dumps(e) + "\n")
                out.flush()
        for e in streamer.flush():
            out.write(_json.dumps(e) + "\n")
    except (StreamError, InputError) as e:
        _bad_input(str(e))
    except KeyboardInterrupt:
        pass
    s = streamer.stats() if streamer else {"windows": 0}
    if s["windows"]:
        err.print(f"{s['windows']} windows of {settings.window_s:g} s every {settings.hop_s:g} s over "
                  f"{s['audio_s']:.1f} s of audio; processing {1000 * s['process_s']:.1f} ms, real-time factor "
                  f"{s['rtf']:.5f}; cache {'on' if s['cache'] else 'off'}: {s['frames_computed']} frames computed "
                  f"of {s['frames_uncached']} ({100 * s['frontend_saving']:.0f} % of front-end work saved)")


@data_app.command("synth", short_help="write the built-in synthetic corpus")
def data_synth(out: Path = typer.Option(..., "--out", help="output folder"),
               seed: int = typer.Option(0, "--seed"),
               clips_per_class: int = typer.Option(160, "--clips-per-class", help="clips per class, all speakers"),
               speakers: int = typer.Option(10, "--speakers"),
               seconds: float = typer.Option(2.0, "--seconds", help="clip length")):
    """Write the built-in synthetic corpus: 16 kHz WAVs and OUT/manifest.csv (path,label,speaker)."""
    from rich.progress import Progress

    from edgeser.data.synth import synthesize_corpus

    try:
        with Progress(console=console) as p:
            task = p.add_task("synthesising", total=None)
            path = synthesize_corpus(out, seed=seed, clips_per_class=clips_per_class, n_speakers=speakers,
                                     clip_seconds=seconds, on_clip=lambda d, n: p.update(task, completed=d, total=n))
    except ValueError as e:
        _bad_input(str(e))
    console.print(f"wrote {path}")


@data_app.command("import", short_help="write a manifest CSV for a corpus")
def data_import(kind: str = typer.Argument(..., metavar="KIND", help="iemocap, ravdess, crema-d, emodb or folder "
                                           "(SRC/<label>/<speaker>/…/*.wav, or SRC/<label>/*.wav with "
                                           "--speaker-pattern)"),
                src: Path = typer.Argument(..., metavar="SRC", help="the corpus's root folder"),
                out: Path = typer.Option(..., "--out", help="manifest CSV to write (path,label,speaker,session)"),
                four_class: bool = typer.Option(False, "--four-class", help="keep neutral/happy/sad/angry; excited→happy"),
                self_ratings: bool = typer.Option(False, "--self-ratings", help="iemocap only: count the actors' "
                                                  "ratings of themselves (C-F/C-M lines) among the annotator votes"),
                speaker_pattern: Optional[str] = typer.Option(
                    None, "--speaker-pattern", metavar="REGEX",
                    help="folder only: the speaker is group 1 of REGEX, searched in each file name without its "
                         "extension, e.g. '^([^_]+)_' reads alice from happy/alice_001.wav, 'spk(\\d+)' reads 07 "
                         "from sad/clip_spk07_3.wav; files it does not match are skipped. Without it, a file with "
                         "no speaker folder is its own speaker (a warning: splits are then not speaker-independent)")):
    """Write a manifest CSV for a published corpus from its file-naming convention. Audio is WAV, FLAC, OGG or
    MP3 (what this libsndfile decodes); each file is checked, and skipped files are counted by reason with
    example paths. IEMOCAP's evaluator labels and CREMA-D's ratings (finishedResponses.csv in SRC or SRC/..)
    go into a `votes` column (recipe data.labels)."""
    from rich.markup import escape

    from edgeser.data.importers import import_corpus, summary_table

    try:
        summary = import_corpus(kind.lower(), src, out, four_class=four_class, speaker_pattern=speaker_pattern,
                                self_ratings=self_ratings)
    except (InputError, OSError) as e:
        _bad_input(str(e))
    console.print(summary_table(summary))
    console.print(f"wrote {summary['out']}")
    if summary.get("needs_root"):
        console.print(f"its rows point outside {Path(summary['out']).parent}: in the recipe, set "
                      f"data: {{manifest: {summary['out']}, root: {summary['needs_root']}}}", markup=False)
    for w in summary["warnings"]:
        err.print(f"[bold yellow]WARNING:[/] {escape(w)}", highlight=False)


@recipe_app.command("defaults")
def recipe_defaults():
    """Print every recipe option at its default, described in a comment. The YAML validates as a recipe:
    it uses data.synth and shows data.manifest as null."""
    from edgeser.recipe_docs import defaults_yaml

    sys.stdout.write(defaults_yaml())


@recipe_app.command("schema")
def recipe_schema(out: Optional[Path] = typer.Option(None, "--out", help="write the schema to this file "
                                                     "(atomically) instead of printing it")):
    """Print the recipe's JSON Schema (for editors). With --out FILE, begin a recipe with
    `# yaml-language-server: $schema=FILE` to have the YAML language server check and complete it."""
    import json as _json

    from edgeser.fileio import write_json
    from edgeser.recipe_docs import schema

    if out is None:
        sys.stdout.write(_json.dumps(schema(), indent=2) + "\n")
        return
    try:
        write_json(out, schema())
    except OSError as e:
        _bad_input(f"{out}: cannot write the schema: {e.strerror or e}")
    console.print(f"wrote {out}", markup=False, highlight=False)


def _interrupted() -> None:
    """The Ctrl-C message: which stage stopped, and the command that continues."""
    from edgeser.pipeline import RUNNING

    if RUNNING:
        argv = " ".join(_COMMAND.get("argv", []))
        err.print(f"interrupted during stage {RUNNING['stage']} of {RUNNING['run_dir']}. Finished stages and "
                  f"the last epoch checkpoint are kept: `edgeser {argv} --resume` continues from there.",
                  highlight=False, markup=False)
        RUNNING.clear()
    else:
        err.print("interrupted", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _interrupted()
        sys.exit(130)


if __name__ == "__main__":  # python -m edgeser.cli (and torchrun -m edgeser.cli)
    main()

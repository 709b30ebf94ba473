"""External teachers end to end (issue 16, part 2, acceptance): an ONNX transformer teacher and a TorchScript CNN
teacher, each compressed by `edgeser compress` into a verified INT8 student.

    .venv/bin/python bench/external_teacher.py [--manifest /work/corpora/small/manifest.csv]
        [--recipe recipes/demo.yaml] [--kinds onnx,torchscript] [--train-seconds 300] [--ts-rate 8000]
        [--onnx-teacher FILE] [--torchscript-teacher FILE] [--classes a,b,c,d] [--set KEY=VALUE ...]
        [--out runs/external-teacher]

Teachers (unless given with --onnx-teacher / --torchscript-teacher, which need their class names in their
metadata or --classes):
  onnx         tests/teacher_factory.TinyWav2Vec (each clip normalised to zero mean and unit variance, as
               wav2vec2 feature extractors do, unless --onnx-raw; a wav2vec2-like conv feature encoder over the
               raw 16 kHz waveform, 2 transformer layers of width 48, mean pooling, linear), random init, trained
               on random 1 s crops, exported with dynamic batch and length, the class names in metadata_props;
  torchscript  tests/teacher_factory.LogMelCNN at --ts-rate Hz (default 8000, so the pipeline resamples for it),
               torch.jit.script, the class names in the extra file `classes`.
Each is trained here for --train-seconds of wall time (AdamW, class-balanced cross-entropy, random gain, and
clipping with --teacher-clipping-db) on the
train split that the compress run uses (the recipe's data section on the manifest: the same speaker split), and
the weights of its best validation UA (checked every 20 steps) are kept. Test speakers are never seen.

Then, per kind, `edgeser compress` runs the recipe (default recipes/demo.yaml: its student, distill, prune and
QAT settings) with `--set data.manifest=...`, `teacher.<kind>=FILE`, `export.formats=[onnx-fp32, onnx-int8]`
and `verify.gate_artifacts=[onnx-int8]` into OUT/<kind>. Printed per kind: the teacher's and the students' UA
with the report's 95 % bootstrap intervals (on the held-out speakers), each artifact's verify status, the gates,
and compress's exit code (0 all gates pass, 1 a gate failed, 2 bad input), and how often the teacher and the FP32
student keep their own decision on the held-out clips played 6 dB louder and clipped (the student inherits it).
The last line is one JSON object.
Exit 0 when every run passed its gates, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeser.data.augment import clip_peaks  # noqa: E402
from edgeser.data.dataset import load_corpus  # noqa: E402
from edgeser.metrics import classification_metrics  # noqa: E402
from edgeser.models.external_teacher import resample  # noqa: E402
from edgeser.recipe import load_recipe  # noqa: E402
from tests.teacher_factory import LogMelCNN, TinyWav2Vec, export_onnx  # noqa: E402

FORMATS = "[onnx-fp32,onnx-int8]"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ua(model, x: torch.Tensor, y: np.ndarray, classes: list[str]) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1).numpy()
    return classification_metrics(y, pred, classes)["ua"]


def train_for(model, x, y, vx, vy, classes, seconds: float, seed: int, lr: float = 1e-3, batch: int = 16,
              crop: int | None = None, clipping_db: float = 0.0):
    """AdamW on class-balanced cross-entropy with a random gain (+-6 dB), on random crops of `crop` samples if
    given, half the clips clipped up to `clipping_db` past their peak if > 0 (data.augment.clip_peaks), for
    `seconds` of wall time; returns the model with the weights of its best validation UA (every 20
    steps, on whole validation clips) and a summary."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(y, minlength=len(classes)).float()
    weight = counts.sum() / (len(classes) * counts.clamp(min=1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    best, best_state, step, t0 = -1.0, None, 0, time.perf_counter()
    vy_np = vy.numpy()
    while time.perf_counter() - t0 < seconds or best_state is None:
        model.train()
        idx = torch.randint(0, len(y), (min(batch, len(y)),), generator=gen)
        gain = 10 ** (torch.empty(len(idx), 1).uniform_(-6, 6, generator=gen) / 20)
        xb = x[idx]
        if crop is not None and crop < xb.shape[1]:
            start = int(torch.randint(0, xb.shape[1] - crop + 1, (), generator=gen))
            xb = xb[:, start : start + crop]
        xb = xb * gain
        if clipping_db > 0:
            xb = clip_peaks(xb, gen, clipping_db, 0.5)
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            score = ua(model, vx, vy_np, classes)
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in model.state_dict().items()}
            log(f"  step {step}: loss {float(loss.detach()):.3f}, val UA {100 * score:.1f} % (best {100 * best:.1f})")
    model.load_state_dict(best_state)
    return model.eval(), {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "val_ua": best}


def build_teachers(a, out: Path) -> dict:
    """{kind: (file, extra --set lines, training summary)} for every kind asked for."""
    recipe = load_recipe(a.recipe, [f"data.manifest={a.manifest}", *a.sets])
    corpus = load_corpus(a.manifest, recipe.data)
    classes = corpus.classes
    tr, va = corpus.splits["train"], corpus.splits["val"]
    x, y, vx, vy = tr.x[:], tr.y, va.x[:], va.y
    log(f"corpus {a.manifest}: classes {classes}, {len(y)} train and {len(vy)} validation clips of "
        f"{x.shape[1] / 16000:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    teachers = {}
    if "onnx" in a.kinds:
        if a.onnx_teacher:
            teachers["onnx"] = (Path(a.onnx_teacher).resolve(), [], {"given": True})
        else:
            log(f"onnx teacher: TinyWav2Vec, {a.train_seconds:g} s of training")
            torch.manual_seed(recipe.seed)
            model, info = train_for(TinyWav2Vec(len(classes), dim=48, layers=2, heads=4,
                                                normalize=not a.onnx_raw), x, y, vx, vy, classes,
                                    a.train_seconds, recipe.seed, crop=16000,  # 1 s crops: half the cost
                                    clipping_db=a.teacher_clipping_db)
            path = out / "teacher_transformer.onnx"
            export_onnx(model, path, classes, samples=x.shape[1])
            teachers["onnx"] = (path, [], info)
    if "torchscript" in a.kinds:
        rate = a.ts_rate
        if a.torchscript_teacher:
            teachers["torchscript"] = (Path(a.torchscript_teacher).resolve(), [f"teacher.sample_rate={rate}"],
                                       {"given": True})
        else:
            log(f"torchscript teacher: LogMelCNN at {rate} Hz, {a.train_seconds:g} s of training")
            xr, vxr = (torch.from_numpy(resample(t.numpy(), rate)) for t in (x, vx))
            torch.manual_seed(recipe.seed)
            model, info = train_for(LogMelCNN(len(classes), sample_rate=rate), xr, y, vxr, vy, classes,
                                    a.train_seconds, recipe.seed, clipping_db=a.teacher_clipping_db)
            path = out / f"teacher_logmel_cnn_{rate}.ts"
            torch.jit.save(torch.jit.script(model), str(path), _extra_files={"classes": json.dumps(classes)})
            teachers["torchscript"] = (path, [f"teacher.sample_rate={rate}"], info)
    return teachers


def compress(a, kind: str, path: Path, extra: list[str], out: Path) -> dict:
    sets = [f"data.manifest={a.manifest}", f"teacher.{kind}={path}", f"export.formats={FORMATS}",
            "verify.gate_artifacts=[onnx-int8]", f"name=external-teacher-{kind}", *extra, *a.sets]
    if a.classes:
        sets.append(f"teacher.classes=[{a.classes}]")
    cmd = [sys.executable, "-m", "edgeser", "compress", "-r", str(a.recipe), "--out", str(out), "--no-progress",
           *[x for s in sets for x in ("--set", s)]]
    log(f"$ {' '.join(cmd)}")
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode
    seconds = round(time.perf_counter() - t0, 1)
    report = out / "report.json"
    if rc == 2 or not report.is_file():
        return {"exit": rc, "seconds": seconds, "error": "no report (bad input or a crash: see above)"}
    r = json.loads(report.read_text())
    t = r["teacher"] | {k: v for k, v in (r.get("teacher_same_clips") or {}).items() if v is not None}
    arts = {x["name"]: {"status": x["status"], "ua": x.get("ua"), "ua_ci": x.get("ua_ci"),
                        "agreement": x.get("agreement"), "reason": x.get("reason")} for x in r["artifacts"]}
    return {"exit": rc, "seconds": seconds, "passed": r["passed"],
            "teacher_source": (t.get("source") or {}).get("label"),
            "teacher_ua": t["ua"], "teacher_ua_ci": t.get("ua_ci"), "artifacts": arts,
            "gates": {g["name"]: g["passed"] for g in r["gates"]}, "test_clips": r["data"]["sizes"]["test"],
            "keeps_decision_at_plus6db": clipped_self_agreement(out),
            "report": str(out / "report.md")}


def clipped_self_agreement(run: Path) -> dict:
    """How often the teacher and the FP32 student keep their own decision on the held-out clips played 6 dB
    louder and clipped at full scale (verify's "gain +6 dB" case): the student inherits its teacher's, so a
    teacher that changes its mind on clipped audio bounds the robust-agreement gate from the start."""
    from bench.robustness import held_out
    from edgeser.models.io import load_student, load_teacher
    from edgeser.recipe import validate
    from edgeser.train import predict

    recipe = validate(json.loads((run / "recipe.json").read_text()))
    x, _, _, _, _ = held_out(run, recipe)
    loud = torch.from_numpy(np.clip(x * 2.0, -1, 1).astype(np.float32))
    clean = torch.from_numpy(x)
    out = {"clips": len(x), "clipped_over_1pct": int(((np.abs(x * 2) > 1).mean(1) > 0.01).sum())}
    for name, model in (("teacher", load_teacher(run / "stages/teacher/model.pt")),
                        ("fp32_student", load_student(run / "stages/prune/model.pt")[0].eval())):
        with torch.no_grad():
            out[name] = float((predict(model, clean).argmax(1) == predict(model, loud).argmax(1)).float().mean())
    return out


def pct(v, ci) -> str:
    return "—" if v is None else f"{100 * v:.1f} %" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=Path("/work/corpora/small/manifest.csv"))
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes/demo.yaml")
    p.add_argument("--kinds", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--train-seconds", type=float, default=300.0, help="wall time to train each teacher")
    p.add_argument("--ts-rate", type=int, default=8000, help="the TorchScript teacher's sample rate, Hz")
    p.add_argument("--onnx-teacher", help="use this ONNX teacher instead of training one")
    p.add_argument("--torchscript-teacher", help="use this TorchScript teacher (at --ts-rate) instead")
    p.add_argument("--classes", help="the given teachers' output classes, comma-separated (else their metadata)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for every run")
    p.add_argument("--teacher-clipping-db", type=float, default=0.0, help="train the teachers with half their "
                   "clips clipped up to this many dB past their peak (0 = never), so that they decide on clipped "
                   "audio as on clean")
    p.add_argument("--onnx-raw", action="store_true", help="the ONNX teacher without its input normalisation "
                   "(TinyWav2Vec normalize=False): a teacher that hears level")
    p.add_argument("--out", type=Path, default=ROOT / "runs/external-teacher")
    a = p.parse_args()
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if not set(a.kinds) <= {"onnx", "torchscript"} or not a.manifest.is_file():
        log(f"--kinds takes onnx and torchscript; --manifest must be a file ({a.manifest})")
        return 2
    a.manifest, a.out = a.manifest.resolve(), a.out.resolve()
    teachers = build_teachers(a, a.out / "teachers")
    results = {}
    for kind, (path, extra, info) in teachers.items():
        results[kind] = {"teacher_file": str(path), "training": info} | compress(a, kind, path, extra, a.out / kind)
    print(f"\nexternal teachers on {a.manifest} (recipe {a.recipe.name}; UA on the held-out speakers, 95 % CI):")
    for kind, res in results.items():
        if "error" in res:
            print(f"  {kind}: compress exited {res['exit']}: {res['error']}")
            continue
        print(f"  {kind}: teacher ({res['teacher_source']}) UA {pct(res['teacher_ua'], res['teacher_ua_ci'])}, "
              f"{res['test_clips']} test clips")
        for name, art in res["artifacts"].items():
            why = f" ({art['reason']})" if art.get("reason") else ""
            print(f"    {name}: {art['status']}, UA {pct(art['ua'], art['ua_ci'])}{why}")
        k = res["keeps_decision_at_plus6db"]
        print(f"    +6 dB, clipped ({k['clipped_over_1pct']} of {k['clips']} clips over 1 % clipped): the teacher keeps "
              f"its own decision on {100 * k['teacher']:.1f} %, the FP32 student on {100 * k['fp32_student']:.1f} %")
        failed = [g for g, ok in res["gates"].items() if not ok]
        print(f"    gates: {'all pass' if not failed else 'FAILED ' + ', '.join(failed)} (compress exit "
              f"{res['exit']}, {res['seconds']:.0f} s); {res['report']}")
    ok = all(r.get("exit") == 0 for r in results.values())
    print(json.dumps({"manifest": str(a.manifest), "recipe": str(a.recipe), "train_seconds": a.train_seconds,
                      "passed": ok, "runs": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

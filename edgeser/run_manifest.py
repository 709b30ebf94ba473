"""RUN/manifest.json: what `compress` produced (artifact hashes, recipe hash, package versions, seed), and
the re-check that `edgeser verify` runs in a user's CI."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from edgeser.fileio import sha256, write_json

PACKAGES = ("edgeser", "torch", "torch-pruning", "torchao", "onnx", "onnxruntime", "coremltools", "numpy")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def recipe_sha256(recipe_json: dict) -> str:
    """sha256 of the recipe's canonical JSON (sorted keys): indentation and key order do not change it."""
    return hashlib.sha256(json.dumps(recipe_json, sort_keys=True).encode()).hexdigest()


def write_manifest(run_dir: Path, recipe_json: dict, artifacts: list[dict]) -> dict:
    manifest = {
        "recipe_sha256": recipe_sha256(recipe_json),
        "seed": recipe_json.get("seed"),
        "packages": {p: _version(p) for p in PACKAGES},
        "artifacts": {a["name"]: {"path": a["path"], "sha256": a.get("sha256"), "status": a["status"]}
                      for a in artifacts if a.get("path")},
    }
    write_json(run_dir / "manifest.json", manifest)
    return manifest


def check_hashes(run_dir: Path, manifest: dict, only: str | None = None) -> list[dict]:
    """One result per artifact file: present and byte-identical to what compress recorded."""
    out = []
    for name, a in manifest["artifacts"].items():
        if only and name != only:
            continue
        path = run_dir / a["path"]
        if not path.exists():
            out.append({"name": f"sha256 [{name}]", "passed": False, "value": f"missing file {a['path']}"})
            continue
        got = sha256(path)
        ok = got == a["sha256"]
        out.append({"name": f"sha256 [{name}]", "passed": ok,
                    "value": a["path"] if ok else f"{a['path']}: sha256 {got[:12]}… != recorded {a['sha256'][:12]}…"})
    return out


def check_recipe(manifest: dict, recipe_json: dict) -> dict:
    """recipe.json is the recipe compress ran: its hash against manifest.json's recipe_sha256. An edited
    recipe.json (gates removed or loosened) would otherwise re-check the artifacts against gates the run never
    had; use --set to try other gates on a run."""
    recorded, got = manifest.get("recipe_sha256"), recipe_sha256(recipe_json)
    if recorded == got:
        value = "recipe.json"
    elif not recorded:
        value = "recipe.json: manifest.json records no recipe_sha256 to check it against"
    else:
        value = (f"recipe.json: sha256 {got[:12]}… != recorded {recorded[:12]}… (changed after compress; "
                 "override gates with --set instead)")
    return {"name": "recipe sha256 [recipe.json]", "passed": recorded == got, "value": value}


def package_warnings(manifest: dict) -> list[str]:
    """The packages manifest.json recorded whose version here differs (a warning, not a failure: the
    artifacts' hashes and gates are what verify checks, but a changed runtime can explain a changed result)."""
    out = []
    for pkg, then in sorted((manifest.get("packages") or {}).items()):
        now = _version(pkg)
        if now != then:
            out.append(f"package {pkg}: the run recorded {then or 'not installed'}, this machine has "
                       f"{now or 'not installed'}")
    return out


def _read_json(path: Path, what: str) -> dict:
    from edgeser.recipe import RecipeError

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: missing ({what}); is this a finished `edgeser compress` run folder?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RecipeError(f"{path}: unreadable {what}: {e}") from None


def run_path(run_dir: Path, recorded: str) -> Path:
    """A path the run folder recorded (edgeser/stages/data.py recorded_path): an absolute one as is, else
    relative to the run folder, wherever that folder now lies and whatever the working folder. Runs recorded
    before that held paths relative to where `compress` ran: such a path is used when it exists from here and
    the run folder has nothing under that name."""
    p = Path(recorded)
    if p.is_absolute():
        return p
    inside = Path(run_dir) / p
    return p if not inside.exists() and p.exists() else inside


def verify_run(run_dir: Path, *, artifact: str | None = None, data: Path | None = None,
               sets: list[str] | None = None, progress=None) -> dict:
    """Re-check a finished run: artifact hashes against manifest.json, then every runnable artifact re-run
    with the recipe's gates (overridable with --set) on the held-out split of the run's own corpus, or on EVERY
    row of `data` (a manifest CSV) when given. Raises RecipeError on bad input."""
    from edgeser.data.dataset import load_corpus, load_eval_set
    from edgeser.recipe import RecipeError, validate
    from edgeser.stages.verify import verify_records

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecipeError(f"{run_dir}: no such run folder")
    manifest = _read_json(run_dir / "manifest.json", "artifact manifest")
    if artifact is not None and artifact not in manifest["artifacts"]:
        raise RecipeError(f"--artifact {artifact}: not in this run ({', '.join(manifest['artifacts'])})")
    recipe_json = _read_json(run_dir / "recipe.json", "recipe")
    recipe_check = check_recipe(manifest, recipe_json)
    recipe = validate(recipe_json, sets)
    hashes = check_hashes(run_dir, manifest, artifact)
    tampered = {h["name"][len("sha256 ["):-1] for h in hashes if not h["passed"]}
    stage = {s: _read_json(run_dir / "stages" / s / "metrics.json", f"{s} metrics")
             for s in ("data", "teacher", "prune", "qat", "export")}
    data_cfg = recipe.data
    if stage["data"].get("root"):  # recorded resolvable by the data stage; the recipe's may be relative to elsewhere
        data_cfg = data_cfg.model_copy(update={"root": run_path(run_dir, stage["data"]["root"])})
    if data is not None:
        classes = stage["data"].get("classes")  # the trained models' output order
        test, skipped = load_eval_set(Path(data), data_cfg, classes)
        clips = {"source": str(data), "split": "every row", "scored": int(len(test.y)), "skipped": dict(skipped)}
    else:
        recorded = stage["data"].get("manifest")
        if not recorded:
            raise RecipeError(f"{run_dir / 'stages/data/metrics.json'}: records no data manifest; pass the held-out "
                              "data with --data FILE")
        manifest_csv = run_path(run_dir, recorded)
        if not manifest_csv.is_file():
            raise RecipeError(f"the data manifest this run recorded, {recorded!r}, is not at {manifest_csv} (relative "
                              f"paths are read from the run folder {run_dir}); pass the held-out data with --data FILE")
        corpus = load_corpus(manifest_csv, data_cfg)
        classes, test = corpus.classes, corpus.splits["test"]
        clips = {"source": str(manifest_csv), "split": "held-out speakers", "scored": int(len(test.y)),
                 "skipped": dict(corpus.skipped), "speakers": sorted(set(test.speakers))}
    records = [r for r in stage["export"]["artifacts"]
               if (artifact is None or r["name"] == artifact) and r["name"] not in tampered]
    out = verify_records(run_dir, recipe, test, classes, records, stage, progress)
    checks = [recipe_check] + hashes + out["gates"]
    return {"checks": checks, "artifacts": out["artifacts"], "passed": all(c["passed"] for c in checks),
            "tampered": sorted(tampered), "teacher": out["teacher"],
            "warnings": package_warnings(manifest) + out["warnings"], "clips": clips}


def write_junit(path: Path, result: dict) -> None:
    """JUnit XML: one test case per check (hash or gate), failures carrying the measured value."""
    from xml.etree import ElementTree as ET

    from edgeser.fileio import write_text

    checks = result["checks"]
    suite = ET.Element("testsuite", name="edgeser verify", tests=str(len(checks)),
                       failures=str(sum(not c["passed"] for c in checks)))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname="edgeser.verify", name=c["name"])
        if not c["passed"]:
            limit = f" (limit {c['limit']})" if "limit" in c else ""
            ET.SubElement(case, "failure", message=f"{c['value']}{limit}")
    root = ET.Element("testsuites")
    root.append(suite)
    write_text(path, '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")

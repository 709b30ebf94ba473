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


def write_manifest(run_dir: Path, recipe_json: dict, artifacts: list[dict]) -> dict:
    canon = json.dumps(recipe_json, sort_keys=True).encode()
    manifest = {
        "recipe_sha256": hashlib.sha256(canon).hexdigest(),
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


def _read_json(path: Path, what: str) -> dict:
    from edgeser.recipe import RecipeError

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: missing ({what}); is this a finished `edgeser compress` run folder?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RecipeError(f"{path}: unreadable {what}: {e}") from None


def verify_run(run_dir: Path, *, artifact: str | None = None, data: Path | None = None,
               sets: list[str] | None = None, progress=None) -> dict:
    """Re-check a finished run: artifact hashes against manifest.json, then every runnable artifact re-run
    on the held-out split with the recipe's gates (overridable with --set). Raises RecipeError on bad input."""
    from edgeser.data.dataset import load_corpus
    from edgeser.recipe import RecipeError, validate
    from edgeser.stages.verify import verify_records

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecipeError(f"{run_dir}: no such run folder")
    manifest = _read_json(run_dir / "manifest.json", "artifact manifest")
    if artifact is not None and artifact not in manifest["artifacts"]:
        raise RecipeError(f"--artifact {artifact}: not in this run ({', '.join(manifest['artifacts'])})")
    recipe = validate(_read_json(run_dir / "recipe.json", "recipe"), sets)
    hashes = check_hashes(run_dir, manifest, artifact)
    tampered = {h["name"][len("sha256 ["):-1] for h in hashes if not h["passed"]}
    stage = {s: _read_json(run_dir / "stages" / s / "metrics.json", f"{s} metrics")
             for s in ("data", "teacher", "prune", "qat", "export")}
    manifest_csv = Path(data) if data is not None else Path(stage["data"]["manifest"])
    if not manifest_csv.is_file():
        raise RecipeError(f"--data: manifest not found: {manifest_csv}")
    corpus = load_corpus(manifest_csv, recipe.data)
    records = [r for r in stage["export"]["artifacts"]
               if (artifact is None or r["name"] == artifact) and r["name"] not in tampered]
    out = verify_records(run_dir, recipe, corpus.splits["test"], corpus.classes, records, stage, progress)
    checks = hashes + out["gates"]
    return {"checks": checks, "artifacts": out["artifacts"], "passed": all(c["passed"] for c in checks),
            "tampered": sorted(tampered)}


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

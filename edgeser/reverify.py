"""`edgeser verify`: re-check a finished run in a user's CI. The artifacts' hashes and the recipe's against
RUN/manifest.json, then every runnable artifact re-run against its reference with the recipe's gates
(edgeser/verification.py), on the run's held-out speakers or on a manifest of one's own."""
from __future__ import annotations

import json
from pathlib import Path

from edgeser.data.dataset import load_corpus, load_eval_set
from edgeser.errors import InputError
from edgeser.recipe import validate
from edgeser.run_dir import RunDir
from edgeser.run_manifest import check_hashes, check_recipe, package_warnings, run_path
from edgeser.verification import verify_records


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing ({what}); is this a finished `edgeser compress` run folder?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable {what}: {e}") from None


def verify_run(run_dir: Path, *, artifact: str | None = None, data: Path | None = None,
               sets: list[str] | None = None, progress=None) -> dict:
    """Re-check a finished run: artifact hashes against manifest.json, then every runnable artifact re-run
    with the recipe's gates (overridable with --set) on the held-out split of the run's own corpus, or on EVERY
    row of `data` (a manifest CSV) when given. Raises InputError on bad input."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    manifest = _read_json(run.manifest, "artifact manifest")
    if artifact is not None and artifact not in manifest["artifacts"]:
        raise InputError(f"--artifact {artifact}: not in this run ({', '.join(manifest['artifacts'])})")
    recipe_json = _read_json(run.recipe, "recipe")
    recipe_check = check_recipe(manifest, recipe_json)
    recipe = validate(recipe_json, sets)
    if artifact is not None:  # one artifact re-checked: gate it alone, not the others as "not exported"
        v = recipe.verify
        recipe = recipe.model_copy(update={"verify": v.model_copy(
            update={"gate_artifacts": [g for g in v.gate_artifacts if g == artifact]})})
    hashes = check_hashes(run_dir, manifest, artifact)
    tampered = {h["name"][len("sha256 ["):-1] for h in hashes if not h["passed"]}
    stage = {s: _read_json(run.metrics(s), f"{s} metrics")
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
            raise InputError(f"{run.metrics('data')}: records no data manifest; pass the held-out "
                              "data with --data FILE")
        manifest_csv = run_path(run_dir, recorded)
        if not manifest_csv.is_file():
            raise InputError(f"the data manifest this run recorded, {recorded!r}, is not at {manifest_csv} (relative "
                              f"paths are read from the run folder {run_dir}); pass the held-out data with --data FILE")
        corpus = load_corpus(manifest_csv, data_cfg, store=recorded_store(run_dir, stage["data"], data_cfg))
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


def recorded_store(run_dir: Path, data_metrics: dict, data_cfg):
    """The audio store the run's data stage used, when it is still there and writable (a run folder copied
    without its store is verified from memory)."""
    from edgeser.data.store import AudioStore

    recorded = (data_metrics.get("store") or {}).get("path")
    if not recorded or not run_path(run_dir, recorded).is_dir():
        return None
    try:
        return AudioStore(run_path(run_dir, recorded), data_cfg.sample_rate)
    except InputError:
        return None

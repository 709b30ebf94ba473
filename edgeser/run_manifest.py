"""RUN/manifest.json: what `compress` produced (artifact hashes, recipe hash, package versions, seed), and the
checks of it that `edgeser verify` (edgeser/reverify.py) runs: hashes, recipe hash, package versions."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from edgeser.export.artifact_meta import recipe_sha256  # noqa: F401  (the one recipe hash; imported from here too)
from edgeser.fileio import sha256, write_json

PACKAGES = ("edgeser", "torch", "torch-pruning", "torchao", "onnx", "onnxruntime", "coremltools", "numpy")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


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

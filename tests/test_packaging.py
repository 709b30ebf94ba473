"""The wheel ships the target profiles: after a non-editable install, `target: cpu` resolves from any folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_profiles_and_they_load_from_another_folder(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "edgeser", src / "edgeser", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path / "w")],
                   check=True, cwd=tmp_path)
    wheel = next((tmp_path / "w").glob("edgeser-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).stem for n in names if n.startswith("edgeser/profiles/") and n.endswith(".yaml"))
    assert shipped == sorted(p.stem for p in (ROOT / "edgeser/profiles").glob("*.yaml")) and "cpu" in shipped
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "EDGESER_TARGETS"} | {"PYTHONPATH": str(tmp_path / "site")}
    code = ("import json, edgeser; from edgeser.targets import available_targets, load_target; "
            "print(json.dumps([edgeser.__file__, available_targets(), load_target('jetson-orin').channel_multiple]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         check=True).stdout
    where, targets, multiple = json.loads(out)
    assert Path(where).is_relative_to(tmp_path / "site")  # the installed copy, not the checkout
    assert targets == shipped and multiple >= 1

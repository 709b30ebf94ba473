"""`edgeser verify RUN`: exit 0 on a good run, 1 naming a changed file or a broken gate, JUnit parses."""
from __future__ import annotations

import shutil
from xml.etree import ElementTree as ET

from typer.testing import CliRunner

from edgeser.cli import app

runner = CliRunner()


def test_verify_good_run_and_junit(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    res = runner.invoke(app, ["verify", str(run_dir), "--junit", str(tmp_path / "v.xml")])
    assert res.exit_code == 0, res.output
    assert "sha256 [onnx-int8]" in res.output
    suite = ET.parse(tmp_path / "v.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 8 and suite.get("failures") == "0"


def test_flipped_byte_fails_naming_file(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    f = copy / "artifacts/student_int8.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", str(copy), "--junit", str(tmp_path / "v.xml")])
    assert res.exit_code == 1
    assert "artifacts/student_int8.onnx" in res.output and "FAIL" in res.output
    failures = ET.parse(tmp_path / "v.xml").getroot().find("testsuite").findall("testcase/failure")
    assert any("student_int8.onnx" in fl.get("message") for fl in failures)


def test_impossible_gate_fails(tiny_run):
    run_dir, _ = tiny_run
    res = runner.invoke(app, ["verify", str(run_dir), "--artifact", "onnx-int8", "--set", "verify.max_latency_ms=0.0001"])
    assert res.exit_code == 1 and "latency" in res.output


def test_bad_input_exits_2(tmp_path, tiny_run):
    res = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(app, ["verify", str(tmp_path)])
    assert res.exit_code == 2 and "manifest.json" in res.output
    res = runner.invoke(app, ["verify", str(tiny_run[0]), "--artifact", "tflite"])
    assert res.exit_code == 2 and "tflite" in res.output

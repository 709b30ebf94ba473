"""RUN/artifacts/README.md: the model card. What the artifacts are, what they take and return, and how to call
each one with its own runtime and read the label, using nothing but the file."""
from __future__ import annotations

import json

from edgeser.fileio import write_text

# how-to-call snippets, named by the format registry (edgeser/formats.py, Format.usage)
ONNX = '''```python
import json, numpy as np, onnxruntime as ort
sess = ort.InferenceSession("{path}")
meta = sess.get_modelmeta().custom_metadata_map
classes = json.loads(meta["classes"])
audio = np.zeros((1, 32000), np.float32)          # mono PCM in [-1, 1] at {sr} Hz, {length}
logits = sess.run(None, {{"audio": audio}})[0]
print(classes[int(logits[0].argmax())])
```'''
STREAM = '''```bash
edgeser stream {path} --wav clip.wav             # one JSON line per window; classes in stream.json
```
`frontend.onnx` (audio -> frames), `body.onnx` (frames -> logits) and `step.onnx` carry the same metadata.'''
TORCHSCRIPT = '''```python
import json, torch, torchao.quantization.pt2e     # the last import registers the Q/DQ ops
extra = {{"edgeser.json": ""}}
model = torch.jit.load("{path}", _extra_files=extra)
classes = json.loads(json.loads(extra["edgeser.json"])["classes"])
logits = model(torch.zeros(1, 32000))
print(classes[int(logits[0].argmax())])
```'''
PT2 = '''```python
import json, torch, torchao.quantization.pt2e
extra = {{"edgeser.json": ""}}
model = torch.export.load("{path}", extra_files=extra).module()
classes = json.loads(json.loads(extra["edgeser.json"])["classes"])
print(classes[int(model(torch.zeros(1, 32000))[0].argmax())])
```'''
COREML = '''```python
import json, numpy as np, coremltools as ct         # predict() runs on macOS
model = ct.models.MLModel("{path}")                 # a Core ML classifier
out = model.predict({{"audio": np.zeros((1, 32000), np.float32)}})
print(out["label"], out["logits"])                  # class name; logit per class name
print(json.loads(model.user_defined_metadata["classes"]))
```'''
TENSORRT = '''Build on the device with `{script}`; the engine has no metadata of its own, so classes and the
input spec are in `{side}` next to it (`json.load(open(...))["classes"]`).'''
HTP = '''The onnx-int8 graph with a 16-bit classifier head (QNN HTP needs quantised outputs; int8 logits
would tie), for onnxruntime-qnn's HTP backend; its metadata_props read as for onnx-int8. Static shape: slide the
fixed window over longer audio and average the logits, as `edgeser.runtimes.Runner` does.'''


def write_model_card(path, records: list[dict], meta: dict, run_dir) -> None:
    classes = json.loads(meta["classes"])
    spec = json.loads(meta["input"])
    lines = ["# Model card", "",
             f"Speech-emotion classifier exported by edgeser {meta['edgeser_version']} "
             f"(recipe sha256 `{meta['recipe_sha256'][:16]}…`).", "",
             "| | |", "|---|---|",
             f"| classes, in output order | {', '.join(f'{i} = {c}' for i, c in enumerate(classes))} |",
             f"| input `audio` | float32 `(batch, samples)`, mono PCM in [-1, 1] at {meta['sample_rate']} Hz |",
             f"| length | {meta['length']} |",
             f"| output `logits` | float32 `(batch, {len(classes)})`; softmax for probabilities |",
             "| level | any: the front-end levels each clip to its own peak before the INT8 DFT |", "",
             "Every artifact carries this in its own metadata (ONNX `metadata_props`, TorchScript and pt2 extra "
             "file `edgeser.json`, CoreML `user_defined_metadata`, TensorRT a side file).", "",
             f"Input spec: `{json.dumps(spec)}`", ""]
    from edgeser.formats import REGISTRY, resolve

    for r in records:
        if r["name"] not in REGISTRY:
            continue
        where = r.get("path") or "(not built here)"
        checks = r.get("checks", {})
        lines += [f"## {r['name']} ({r['precision']}, {r['status']})", ""]
        if r.get("reason"):
            lines += [f"{r['reason']}", ""]
        lines += [resolve(REGISTRY[r["name"]].usage).format(path=where, sr=meta["sample_rate"], length=meta["length"],
                                          script=checks.get("trtexec_script", "build_engine.sh"),
                                          side=checks.get("metadata_file", "student_int8.json")), ""]
        lines += [*r.get("card", []), ""] if r.get("card") else []  # what the exporter says of its file
    write_text(path, "\n".join(lines))

"""Which quantiser costs a run's INT8 model its agreement with the FP32 student.

    .venv/bin/python bench/quant_ablation.py [--run runs/demo] [--lengths 0.5,1,3]

Loads the run's QAT model (stages/qat/model.pt) and its FP32 student (stages/prune/model.pt), and plays the run's
held-out split at each length of --lengths x clip_seconds (edgeser/robustness.with_length, as verify's length
cases do). For every quantiser of the INT8 model (activation quantisers and weight quantisers), it measures the
top-1 agreement with the FP32 student with that quantiser ALONE switched on (what it costs by itself) and with
it alone switched OFF (what removing it would win back), besides all on and all off. Agreements carry a 95 %
Wilson interval over clips. The last line is one JSON object: {"run", "clips", "lengths", "all_on", "all_off",
"only": {quantiser: [agreement per length]}, "without": {...}, "worst_alone": quantiser}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.robustness import held_out, wilson  # noqa: E402
from edgeser.models.io import load_student  # noqa: E402
from edgeser.quant.calibrate import load_qat  # noqa: E402
from edgeser.quant.fakequant import ActQuant, _QWeight  # noqa: E402
from edgeser.recipe import validate  # noqa: E402
from edgeser.robustness import with_length  # noqa: E402
from edgeser.train import predict  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs/demo")
    p.add_argument("--lengths", default="0.5,1,3", help="comma-separated multiples of clip_seconds")
    a = p.parse_args()
    for need in ("recipe.json", "stages/qat/model.pt", "stages/prune/model.pt", "stages/data/metrics.json"):
        if not (a.run / need).is_file():
            print(f"quant_ablation: {a.run / need} not found (a finished compress run is needed)", file=sys.stderr)
            return 2
    lengths = [float(v) for v in a.lengths.split(",")]
    recipe = validate(json.loads((a.run / "recipe.json").read_text()))
    x, _, _, _, corpus = held_out(a.run, recipe)
    fp32, _ = load_student(a.run / "stages/prune/model.pt")
    q, _ = load_qat(a.run / "stages/qat/model.pt")
    fp32.eval(), q.eval(), q.set_observe(False)
    views = [torch.from_numpy(with_length(x, f)) for f in lengths]
    with torch.no_grad():
        want = [predict(fp32, v).argmax(1) for v in views]

    def agree() -> list[float]:
        with torch.no_grad():
            return [round(float((predict(q, v).argmax(1) == w).float().mean()), 4) for v, w in zip(views, want)]

    quants = [(n, m) for n, m in q.named_modules() if isinstance(m, (ActQuant, _QWeight))]

    def switch(on: bool, only=None):
        for n, m in quants:
            m.enabled = on if only is None or n != only else not on

    n = len(x)
    head = " / ".join(f"{f:g}x" for f in lengths)
    print(f"{corpus}: {n} clips, agreement % with the FP32 student at {head} (95 % Wilson interval)")

    def line(label: str, ag: list[float]) -> None:
        cells = "  ".join(f"{100 * v:5.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for v, (lo, hi) in
                          ((v, wilson(v, n)) for v in ag))
        print(f"  {label:34s} {cells}")

    switch(True)
    all_on = agree()
    line("all quantisers on", all_on)
    switch(False)
    all_off = agree()
    line("all off", all_off)
    only, without = {}, {}
    for name, _ in quants:
        switch(False, only=name)
        only[name] = agree()
        line(f"only {name}", only[name])
    for name, _ in quants:
        switch(True, only=name)
        without[name] = agree()
        line(f"all but {name}", without[name])
    switch(True)
    worst = min(only, key=lambda k: sum(only[k]))
    print(f"the quantiser that costs most alone: {worst} ({', '.join(f'{100 * v:.1f} %' for v in only[worst])})")
    print(json.dumps({"run": str(a.run), "clips": n, "lengths": lengths, "all_on": all_on, "all_off": all_off,
                      "only": only, "without": without, "worst_alone": worst}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

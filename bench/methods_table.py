"""Every method of the registry on the quickstart (bundled SmolLM2-135M, bundled arithmetic), with only method.name
changed: each method's own default learning rate, held-out accuracy, format compliance and loss, training time.

    python bench/methods_table.py                              # every method this machine can run
    python bench/methods_table.py --methods ia3 full --out runs/methods --json methods.json

Each row is a real `thinktune train --set method.name=M --set eval.before=false -o OUT/M` (the base model's 0% is
the quickstart's before figure); methods this machine or model cannot run (qlora without CUDA, esft on a dense
model) are listed with the reason. Prints a markdown table for docs/methods.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinktune.methods import METHODS  # noqa: E402

NOT_HERE = {
    "qlora": "4-bit NF4 base: bitsandbytes needs CUDA",
    "esft": "trains selected experts: needs a mixture-of-experts model, SmolLM2 is dense",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def run_method(name: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / name
    args = [sys.executable, "-m", "thinktune", "train", "--set", f"method.name={name}", "--set", "eval.before=false"]
    for item in extra:
        args += ["--set", item]
    args += ["-o", str(run_dir)]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    row = {"method": name, "command": " ".join(["thinktune train", f"--set method.name={name}", *extra])}
    row["seconds"] = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        row["error"] = lines[-1] if lines else f"exit code {proc.returncode}"
        return row
    lr_line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("learning rate")), "")
    summary = json.loads((run_dir / "summary.json").read_text())
    after = summary.get("after") or {}
    row.update(
        learning_rate=lr_line.split(":")[0].removeprefix("learning rate ").strip(),
        accuracy=after.get("accuracy"),
        format=after.get("format_compliance"),
        heldout_loss=after.get("loss"),
        train_seconds=summary.get("train_seconds") or summary.get("wall_seconds"),
    )
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| method | learning rate (default) | accuracy | format | held-out loss | wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "reason" in r or "error" in r:
            out.append(f"| {r['method']} | - | not run: {r.get('reason') or r.get('error')} | | | |")
            continue

        def pct(v):
            return f"{v:.0%}" if isinstance(v, (int, float)) else "-"

        loss = f"{r['heldout_loss']:.3f}" if isinstance(r.get("heldout_loss"), (int, float)) else "-"
        out.append(
            f"| {r['method']} | {r['learning_rate']} | **{pct(r['accuracy'])}** | {pct(r['format'])} | {loss} | "
            f"{r['seconds']:.0f} s |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=Path("runs/methods"))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="another --set for every run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    rows = []
    for name in args.methods:
        if name in NOT_HERE and not (name == "qlora" and torch.cuda.is_available()):
            rows.append({"method": name, "reason": NOT_HERE[name]})
            continue
        row = run_method(name, args.out, args.extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))
    print(f"\n{cpu_model()}, torch threads {torch.get_num_threads()}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

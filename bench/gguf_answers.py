"""A run's GGUF exports answering its test problems in llama.cpp, against the merged model in transformers.

    python bench/gguf_answers.py --run-dir runs/quickstart --types f16 q8_0 -n 40
    python bench/gguf_answers.py --run-dir runs/quickstart --types q8_0 -n 10 --json answers.json

Each type is exported with `thinktune export`'s own code (verification included), then every problem is rendered as
`thinktune eval` renders it (the run's system prompt and thinking mode), continued greedily for up to
--max-new-tokens by the merged float32 model (PyTorch) and by llama.cpp (llama-cpp-python) on the GGUF, and graded
like eval does: format (closed <think>, then \\boxed{}) and accuracy. Needs `pip install 'thinktune[llama]'`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinktune.eval.reasoning import answers_match, parse_output  # noqa: E402
from thinktune.eval.runner import task_prompts  # noqa: E402
from thinktune.eval.tasks import load_tasks  # noqa: E402
from thinktune.export import ExportOptions, run_export, trained_source  # noqa: E402
from thinktune.export import llama_cpp_check as lcc  # noqa: E402
from thinktune.export.parity import torch_greedy  # noqa: E402
from thinktune.export.source import load_source, stop_ids  # noqa: E402
from thinktune.runs import open_run  # noqa: E402


def grade(texts: list[str], tasks: list[dict]) -> dict[str, int]:
    parsed = [parse_output(t) for t in texts]
    return {
        "format": sum(p.format_ok for p in parsed),
        "correct": sum(answers_match(p.answer, t["answer"]) for p, t in zip(parsed, tasks, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    ap.add_argument("-n", type=int, default=40, help="first N test problems")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's eval.max_new_tokens")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    run = open_run(args.run_dir)
    cfg = run.read_config()
    trained = trained_source(run.path)  # the run's adapter or trained tensors
    tasks = load_tasks(cfg.data.test, limit=args.n).records
    n_new = args.max_new_tokens or cfg.eval.max_new_tokens
    source = load_source(cfg.model, trained)
    model = source.merge()
    prompts = task_prompts(source.tokenizer, tasks, cfg.data.system_prompt, cfg.data.thinking)
    ids = [source.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stops = stop_ids(source.tokenizer, model)
    start = time.perf_counter()
    reference = [torch_greedy(model, x, n_new, stops) for x in ids]
    seconds = {"transformers": time.perf_counter() - start}
    decode = lambda out: source.tokenizer.decode(out, skip_special_tokens=True)  # noqa: E731
    ref_texts = [decode(o) for o in reference]
    results = {"transformers (float32)": grade(ref_texts, tasks)}
    same = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gguf_type in args.types:
            out = Path(tmp) / gguf_type
            options = ExportOptions(gguf_type=gguf_type)
            record = run_export(cfg.model, "gguf", out, options, trained and trained.path, args.run_dir)
            with lcc.load(Path(record["artefact"]), max(map(len, ids)) + n_new + 8) as llm:
                start = time.perf_counter()
                outputs = [lcc.greedy(llm, x, n_new, stops) for x in ids]
                seconds[f"llama.cpp {gguf_type}"] = time.perf_counter() - start
            texts = [decode(o) for o in outputs]
            results[f"llama.cpp {gguf_type}"] = grade(texts, tasks)
            answers = [parse_output(t).answer for t in texts]
            same[gguf_type] = {
                "identical_outputs": sum(a == b for a, b in zip(outputs, reference, strict=True)),
                "same_answer": sum(a == parse_output(r).answer for a, r in zip(answers, ref_texts, strict=True)),
            }
    print(f"{len(tasks)} problems from {cfg.data.test}, up to {n_new} new tokens, greedy; {platform.processor()}")
    print(f"{'runtime':<24}{'format':>8}{'correct':>9}{'seconds':>9}")
    for name, r in results.items():
        print(f"{name:<24}{r['format']:>8}{r['correct']:>9}{seconds[name.split(' (')[0]]:>9.1f}")
    for gguf_type, s in same.items():
        print(f"llama.cpp {gguf_type} vs transformers: {s['identical_outputs']} identical outputs, "
              f"{s['same_answer']} same answer")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"results": results, "agreement": same, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()

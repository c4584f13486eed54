"""How much of SmolLM2's speed on this CPU is its weight format?

    .venv/bin/python bench/engine_quant.py [--repeats 2] [--levels 1,16]

The shipped SmolLM2 file is Q4_1 (the only one on the package index). llama.cpp's
CPU backend has faster kernels for some formats than for others (llamafile's
tinyBLAS for Q8_0 and Q4_0, the "repack" GEMMs for Q4_0 and Q4_K), and Q4_1 is
not among them on x86. This converts the shipped file to Q8_0 and Q4_0 (gguf-py,
in a temporary directory: nothing is shipped or downloaded) and, in one run,
drives llama.cpp's server directly (modelyard's launcher, 2 threads, ``--parallel``
slots, a KV stream per slot) with each file: the same closed-loop streaming
clients as ``bench/engine.py`` (mixed prompts, 64-128 new tokens, generation
forced to ``max_tokens``), aggregate generated tokens/s and TTFT p50 per
concurrency level, repeated ``--repeats`` times in rotation.

It also answers 20 short questions greedily (temperature 0, 48 tokens) with each
file and reports how many answers are identical to the Q4_1 file's and the
mean share of words they agree on before the first difference: a change of
quantization changes the model, and this says by how much (not whether it is
better or worse).

With ``--old`` (needs ``make install-legacy``) the old worker pool (modelyard,
``backend: llamacpp``, 2 workers x 1 thread) runs each file too, in the same
rotation, so the engine's advantage over it can be read per format.

Writes bench/results/engine-quant.json (``--name`` for another file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, table, write_result  # noqa: E402
from engine import DirectEngine, Gateway, old_available, old_deployment, sweep  # noqa: E402

QUESTIONS = (
    "What is the capital of France?", "Write a haiku about rain.", "List three fruits.", "Explain what a CPU does in one sentence.",
    "Translate 'good morning' into Spanish.", "What is 12 plus 7?", "Give me a name for a pet cat.", "Why is the sky blue?",
    "Write one sentence about the ocean.", "What colour is grass?", "Name a famous scientist.", "How many days are in a week?",
    "Summarise: The quick brown fox jumps over the lazy dog.", "What is the opposite of hot?", "Suggest a title for a story about a dragon.",
    "What do bees make?", "Describe a sunset in five words.", "Who wrote Romeo and Juliet?", "What is water made of?", "Tell me a fun fact about space.",
)


def requantize(source: Path, target: Path, type_name: str) -> None:
    """Write ``source`` with its Q4_1 tensors dequantized and quantized again as ``type_name``; all else copied."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(source)
    to_type = getattr(gguf.GGMLQuantizationType, type_name)
    writer = gguf.GGUFWriter(target, arch=reader.fields[gguf.Keys.General.ARCHITECTURE].contents(), endianess=reader.endianess)
    for f in reader.fields.values():
        # The writer adds the architecture and GGUF.* itself; file_type would misdescribe the new tensors.
        if f.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or f.name.startswith("GGUF."):
            continue
        value_type = f.types[0]
        writer.add_key_value(f.name, f.contents(), value_type, sub_type=f.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None)
    tensors = []
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            tensors.append((t.name, quants.quantize(quants.dequantize(t.data, t.tensor_type), to_type), to_type))
        else:
            tensors.append((t.name, t.data, t.tensor_type))
    for name, data, tensor_type in tensors:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in tensors:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()


def greedy_answers(model_file: Path) -> list[str]:
    engine = DirectEngine(model_file, 1, 2, "per_slot")
    try:
        with httpx.Client(timeout=120) as http:
            return [
                http.post(engine.url, json={"messages": [{"role": "user", "content": q}], "max_tokens": 48, "temperature": 0, "seed": 1})
                .json()["choices"][0]["message"]["content"]
                for q in QUESTIONS
            ]
    finally:
        engine.close()


def shared_prefix_share(a: str, b: str) -> float:
    words_a, words_b = a.split(), b.split()
    same = 0
    for x, y in zip(words_a, words_b, strict=False):
        if x != y:
            break
        same += 1
    return same / max(1, min(len(words_a), len(words_b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="rotations over the three files")
    parser.add_argument("--levels", default="1,16", help="client concurrencies")
    parser.add_argument("--parallel", type=int, default=8, help="the engine's slots")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--formats", default="Q4_1,Q8_0,Q4_0", help="weight formats to measure (Q4_1 is the shipped file)")
    parser.add_argument("--old", action="store_true",
                        help="also run the old worker pool (modelyard, backend: llamacpp, 2 workers x 1 thread) on each file; needs make install-legacy")
    parser.add_argument("--no-answers", action="store_true", help="skip the greedy-answer comparison")
    parser.add_argument("--name", default="engine-quant", help="results file name under bench/results/")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    levels = tuple(int(x) for x in args.levels.split(","))
    if args.old and not old_available():
        parser.error("--old needs llama-cpp-python (make install-legacy)")
    from modelyard.fleet import artifacts

    shipped = artifacts.resolve("builtin:smollm2-135m", Path("~/.cache/modelyard/models").expanduser())
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for type_name in args.formats.split(","):
            files[type_name] = shipped if type_name == "Q4_1" else Path(tmp) / f"smollm2-{type_name}.gguf"
            if type_name != "Q4_1":
                requantize(shipped, files[type_name], type_name)
        for repeat in range(args.repeats):
            for name, path in files.items():
                print(f"repeat {repeat + 1}: {name}", flush=True)
                engine = DirectEngine(path, args.parallel, 1, "per_slot")
                try:
                    levels_run = asyncio.run(sweep(engine.url, "m", levels, args.rounds, repeat * 100, engine.process.pid, ignore_eos=True))
                finally:
                    engine.close()
                for c, level in levels_run.items():
                    runs.setdefault(name, {}).setdefault(c, []).append(level.summary())
                if args.old:
                    print(f"repeat {repeat + 1}: {name}, old pool", flush=True)
                    gateway = Gateway(Path(tmp), f"old-{name}-{repeat}", "smollm2-135m", old_deployment(str(path)))
                    try:
                        levels_run = asyncio.run(sweep(gateway.url, "smollm2-135m", levels, args.rounds, repeat * 100, gateway.process.pid, ignore_eos=True))
                    finally:
                        gateway.close()
                    for c, level in levels_run.items():
                        runs.setdefault(f"{name} old", {}).setdefault(c, []).append(level.summary())
        # The old pool's own answers are not collected: its rows carry speed only.
        answers = {name: ([] if args.no_answers else greedy_answers(path)) for name, path in files.items()}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        sizes |= {f"{name} old": size for name, size in sizes.items()}
    result = summarize(runs, answers, sizes, levels)
    print(table([("file", "MB", *(f"tok/s c{c}" for c in levels), *(f"TTFT p50 ms c{c}" for c in levels), "same answers", "shared prefix")]
                + [(name, f"{r['size_mb']:g}", *(f"{r[f'tok_s_c{c}']['median']:g}" for c in levels),
                    *(f"{r[f'ttft_p50_ms_c{c}']:g}" for c in levels), f"{r.get('identical_answers', '-')}/{len(QUESTIONS)}", f"{r.get('shared_prefix_share', '-')}")
                   for name, r in result.items()]))
    if not args.no_write:
        data = {"files": result, "settings": {"parallel": args.parallel, "threads": 2, "kv_cache": "per_slot", "levels": list(levels),
                                              "rounds": args.rounds, "repeats": args.repeats, "ignore_eos": True,
                                              "old": "modelyard, backend: llamacpp, 2 workers x 1 thread (rows '<format> old')" if args.old else None},
                "machine": machine(), "commit": commit(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print("wrote", write_result(args.name, data))


def summarize(runs: dict[str, dict[int, list[dict[str, Any]]]], answers: dict[str, list[str]], sizes: dict[str, int],
              levels: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, per_level in runs.items():
        entry: dict[str, Any] = {"size_mb": round(sizes[name] / 1e6, 1)}
        for c in levels:
            tok = [r["tok_s"] for r in per_level[c]]
            entry[f"tok_s_c{c}"] = {"median": round(statistics.median(tok), 2), "min": min(tok), "max": max(tok), "runs": tok}
            entry[f"ttft_p50_ms_c{c}"] = round(statistics.median(r["ttft_p50_ms"] for r in per_level[c]), 1)
        if answers.get(name) and answers.get("Q4_1"):
            entry["identical_answers"] = sum(a == b for a, b in zip(answers["Q4_1"], answers[name], strict=True))
            entry["shared_prefix_share"] = round(statistics.mean(shared_prefix_share(a, b) for a, b in zip(answers["Q4_1"], answers[name], strict=True)), 2)
            entry["sample_answer"] = {"question": QUESTIONS[7], "answer": answers[name][7]}
        out[name] = entry
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()

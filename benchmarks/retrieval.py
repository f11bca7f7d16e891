#!/usr/bin/env python
"""Inference at scale on this machine: the encode engine, ANN search, one process against two.

    python benchmarks/retrieval.py --model runs/smol-btok                 # every part, JSON to benchmarks/out/
    python benchmarks/retrieval.py --model runs/smol-btok --parts encode ranks
    python benchmarks/retrieval.py --parts ann --ann wordnet-tokens synthetic --synthetic-rows 1000000

Parts (each in its own subprocess, so each reports its own peak memory):

``encode``
    rows/s of the engine (:func:`btok_model.embedder.encode.encode`, blocks of 4096 as ``embed``
    uses) against the pre-engine ``Embedder.encode`` loop (commit db92813: every input
    tokenised up front, sorted longest first, one packed forward per batch; reproduced below
    as the baseline) on the same WordNet definitions, same model, same batch size,
    interleaved repetitions; the two outputs' largest difference.
``ann``
    Lance ANN (IVF_PQ, IVF_HNSW_SQ with :func:`~btok_model.inference.index.build_index`'s
    defaults, searched with :class:`~btok_model.inference.index.Index`'s defaults) against
    exact top-k: build time, query latency (median per query), recall@10, index size, peak
    memory. Vector sets: ``wordnet-btok`` (an ``embed`` output of the SmolLM2 BTok model,
    ``--btok-output``; queries are 200 of its rows, searched among the others),
    ``wordnet-tokens`` (all 117,659 WordNet definitions as the normalised mean of SmolLM2's
    input token embeddings: real text vectors of the model's size, cheap enough to make for
    the whole corpus on a CPU; queries are the lemmas of 200 synsets, embedded the same
    way), ``synthetic`` (``--synthetic-rows`` unit vectors of ``--synthetic-dim`` around 1,000
    random centres; queries: 200 of them, perturbed).
``ranks``
    ``python -m btok_model.embed`` in one process and under ``torchrun --nproc-per-node 2``
    (gloo) on the same rows: equal ids and order, the vectors' largest difference, times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script (its parts run so, in subprocesses): btok from this checkout
    sys.path.insert(0, ROOT)
PARTS = ("encode", "ann", "ranks")
VECTOR_SETS = ("wordnet-btok", "wordnet-tokens", "synthetic")
QUERIES = 200


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux ``ru_maxrss`` is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _definitions(limit: int | None = None) -> list:
    from btok_model.datasets.wordnet import load_synsets

    synsets = load_synsets()
    return synsets if limit is None else synsets[:limit]


def _load_model(path: str):
    from btok_model import BTokModel

    return BTokModel.from_pretrained(path, attn_implementation="btok_triton").eval()


# -- encode -------------------------------------------------------------------------------------


def pre_engine_encode(model, texts: list[str], batch_size: int):
    """The pre-engine ``Embedder.encode`` (db92813) for text: the whole input tokenised up front,
    sorted longest first, one packed forward per batch, results put back in input order. Kept
    here as the baseline the engine must not be slower than."""
    import torch

    from btok_model.embedder.encode import embed_packed

    sequences, _ = model.collator.encode_for_embedding(texts)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    out = torch.empty(len(texts), model.embedding_dim)
    model.eval()
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            packed = model.collator.pack_sequences([sequences[i] for i in rows])
            out[torch.tensor(rows)] = embed_packed(model, packed).cpu()
    return out


def part_encode(args) -> dict:
    import torch

    from btok_model.embedder.encode import encode

    texts = [s.definition for s in _definitions(args.encode_rows)]
    model = _load_model(args.model)
    encode(model, texts[:8], batch_size=args.batch_size)  # warm-up
    times = {"pre_engine": [], "engine": []}
    cpu = {"pre_engine": [], "engine": []}  # this process's CPU seconds: steadier than wall time on a shared machine
    outputs = {}
    for _ in range(args.reps):
        for name in ("pre_engine", "engine"):
            start, start_cpu = time.perf_counter(), time.process_time()
            if name == "engine":
                outputs[name] = encode(model, texts, batch_size=args.batch_size, block_size=4096)
            else:
                outputs[name] = pre_engine_encode(model, texts, args.batch_size)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    rows_per_s = {name: [round(len(texts) / t, 3) for t in ts] for name, ts in times.items()}
    rows_per_cpu_s = {name: [round(len(texts) / t, 3) for t in ts] for name, ts in cpu.items()}
    best = {name: max(r) for name, r in rows_per_s.items()}
    best_cpu = {name: max(r) for name, r in rows_per_cpu_s.items()}
    return {
        "rows": len(texts),
        "batch_size": args.batch_size,
        "reps": args.reps,
        "rows_per_s": rows_per_s,
        "rows_per_cpu_s": rows_per_cpu_s,
        "best_rows_per_s": best,
        "engine_over_pre_engine": round(best["engine"] / best["pre_engine"], 3),
        "engine_over_pre_engine_cpu": round(best_cpu["engine"] / best_cpu["pre_engine"], 3),
        "max_abs_diff": float((outputs["engine"] - outputs["pre_engine"]).abs().max()),
        "threads": torch.get_num_threads(),
    }


# -- ann ----------------------------------------------------------------------------------------


def _unit(x):
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def _token_mean_vectors(model_dir: str, texts: list[str]):
    """fp32 ``[N, H]``: each text's normalised mean input-token embedding (SmolLM2's table)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    table = None
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safetensors file handle, not a dict)
                    if key.endswith("embed_tokens.weight"):
                        table = f.get_tensor(key).float()
    if table is None:
        raise SystemExit(f"error: no embed_tokens.weight in {model_dir}")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = torch.tensor([len(i) for i in ids])
    flat = torch.tensor([t for i in ids for t in i])
    group = torch.repeat_interleave(torch.arange(len(ids)), lengths)
    sums = torch.zeros(len(ids), table.shape[1]).index_add_(0, group, table[flat])
    return _unit(sums / lengths.clamp_min(1)[:, None])


def _vector_set(args, name: str):
    """``(corpus fp32 [N, H], queries fp32 [Q, H], description)``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    if name == "wordnet-tokens":
        synsets = _definitions()
        corpus = _token_mean_vectors(args.model, [s.definition for s in synsets])
        picks = torch.randperm(len(synsets), generator=gen)[:QUERIES].tolist()
        queries = _token_mean_vectors(args.model, [synsets[i].words[0] for i in picks])
        return corpus, queries, f"{len(synsets)} WordNet definitions, mean SmolLM2 input-token embedding; lemma queries"
    if name == "wordnet-btok":
        from btok_model.inference.index import Index

        stored = Index(args.btok_output).vectors()
        picks = torch.randperm(stored.shape[0], generator=gen)[:QUERIES]
        keep = torch.ones(stored.shape[0], dtype=torch.bool)
        keep[picks] = False
        return stored[keep], stored[picks], f"{int(keep.sum())} WordNet definitions embedded by the SmolLM2 BTok model"
    n, dim = args.synthetic_rows, args.synthetic_dim
    centres = torch.randn(1000, dim, generator=gen)
    corpus = torch.empty(n, dim)
    for lo in range(0, n, 100_000):
        hi = min(lo + 100_000, n)
        assign = torch.randint(0, 1000, (hi - lo,), generator=gen)
        corpus[lo:hi] = _unit(centres[assign] + 0.6 * torch.randn(hi - lo, dim, generator=gen))
    picks = torch.randperm(n, generator=gen)[:QUERIES]
    queries = _unit(corpus[picks] + 0.3 * torch.randn(QUERIES, dim, generator=gen))
    return corpus, queries, f"{n} synthetic unit vectors of {dim} dims around 1,000 centres"


def _write(path: str, corpus, dtype: str) -> None:
    from btok_model.inference.lance_store import EmbeddingStore, output_schema
    from btok_model.inference.readers import Row

    schema = output_schema(corpus.shape[1], dtype, None, [], {"format": 1, "settings": {"weights": "benchmark"}})
    store = EmbeddingStore.open(path, schema, block_size=100_000, dtype=dtype)
    for b, lo in enumerate(range(0, corpus.shape[0], 100_000)):
        hi = min(lo + 100_000, corpus.shape[0])
        store.write_block(b, [Row(i, str(i), None) for i in range(lo, hi)], corpus[lo:hi].numpy())
    store.finish((corpus.shape[0] + 99_999) // 100_000)


def _folder_mib(path: str) -> float:
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)
    return round(total / 2**20, 1)


def part_ann(args) -> dict:
    import statistics

    import numpy as np

    from btok_model.inference.index import Index, build_index

    started = time.perf_counter()
    corpus, queries, description = _vector_set(args, args.vector_set)
    made = time.perf_counter() - started
    work = tempfile.mkdtemp(prefix="btok-ann-", dir=args.work_dir)
    try:
        path = os.path.join(work, "v.lance")
        _write(path, corpus, args.dtype)
        data_mib = _folder_mib(path)
        before = peak_rss_mib()
        index = Index(path)
        start = time.perf_counter()
        exact = index.search(queries, 10, exact=True)
        exact_s = time.perf_counter() - start
        out = {
            "vectors": description,
            "rows": corpus.shape[0],
            "dim": corpus.shape[1],
            "stored_dtype": args.dtype,
            "queries": queries.shape[0],
            "make_vectors_s": round(made, 2),
            "dataset_mib": data_mib,
            "exact": {"batch_of_queries_s": round(exact_s, 3), "per_query_ms": round(1000 * exact_s / QUERIES, 3)},
            "peak_rss_mib_before_index": before,
            "indexes": [],
        }
        for index_type in args.index_types:
            params = build_index(path, index_type=index_type)
            index = Index(path)
            entry = {**params, "index_mib": _folder_mib(os.path.join(path, "_indices")), "searches": []}
            # Index.search's defaults, then more partitions probed (a quarter of them)
            for nprobes in (20, max(20, params["num_partitions"] // 4)):
                latencies, hits = [], []
                for q in queries:
                    start = time.perf_counter()
                    hits.append(index.search(q[None], 10, nprobes=nprobes, refine_factor=10).rows[0].tolist())
                    latencies.append(1000 * (time.perf_counter() - start))
                recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(hits, exact.rows.tolist())])
                entry["searches"].append(
                    {
                        "nprobes": nprobes,
                        "refine_factor": 10,
                        "recall_at_10": round(float(recall), 4),
                        "query_ms_median": round(statistics.median(latencies), 3),
                        "query_ms_p90": round(sorted(latencies)[int(0.9 * len(latencies))], 3),
                    }
                )
            entry["peak_rss_mib_after"] = peak_rss_mib()
            out["indexes"].append(entry)
        out["peak_rss_mib"] = peak_rss_mib()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- ranks --------------------------------------------------------------------------------------


def part_ranks(args) -> dict:
    import lance
    import numpy as np

    work = tempfile.mkdtemp(prefix="btok-ranks-", dir=args.work_dir)
    try:
        data = os.path.join(work, "c.jsonl")
        with open(data, "w") as f:
            for s in _definitions(args.ranks_rows):
                f.write(json.dumps({"id": s.id, "text": s.definition}) + "\n")
        env = dict(os.environ, PYTHONPATH=ROOT)
        common = ["--model", args.model, "--data", data, "--dtype", "float32", "--block-size", str(args.ranks_block)]
        common += ["--no-progress-bar", "--batch-size", str(args.batch_size)]
        runs = {}
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        for name, launcher in (
            ("one_process", [sys.executable, "-m", "btok_model.embed"]),
            ("two_processes", [*torchrun, "-m", "btok_model.embed"]),
        ):
            out = os.path.join(work, f"{name}.lance")
            start = time.perf_counter()
            done = subprocess.run([*launcher, *common, "--output", out], env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            meta = json.loads(lance.dataset(out).schema.metadata[b"btok"])["summary"]
            runs[name] = {"wall_s": round(time.perf_counter() - start, 2), "encode_s_rank0": meta["seconds_this_run"]}
            runs[name]["table"] = lance.dataset(out).to_table()
        a, b = runs["one_process"].pop("table"), runs["two_processes"].pop("table")
        va = np.stack(a.column("vector").to_numpy(zero_copy_only=False))
        vb = np.stack(b.column("vector").to_numpy(zero_copy_only=False))
        return {
            "rows": a.num_rows,
            "block_size": args.ranks_block,
            "same_ids_same_order": a.column("id").to_pylist() == b.column("id").to_pylist(),
            "vectors_max_abs_diff": float(np.abs(va - vb).max()),
            "vectors_bitwise_equal": bool(np.array_equal(va, vb)),
            **runs,
            "note": "wall_s includes each process loading the model; two processes share the same 2 cores",
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- driver -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="runs/smol-btok", help="a saved SmolLM2 BTok model (made from 'smollm2' if absent)"
    )
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--ann", nargs="+", choices=VECTOR_SETS, default=["wordnet-btok", "wordnet-tokens", "synthetic"])
    p.add_argument("--btok-output", help="an embed output of WordNet definitions for --ann wordnet-btok")
    p.add_argument("--index-types", nargs="+", default=["IVF_PQ", "IVF_HNSW_SQ"])
    p.add_argument("--synthetic-index-types", nargs="+", default=["IVF_PQ"])
    p.add_argument("--synthetic-rows", type=int, default=1_000_000)
    p.add_argument("--synthetic-dim", type=int, default=128)
    p.add_argument(
        "--dtype", default="float16", choices=("float16", "float32"), help="stored vectors (embed's default)"
    )
    p.add_argument("--encode-rows", type=int, default=128)
    p.add_argument("--ranks-rows", type=int, default=96)
    p.add_argument("--ranks-block", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--work-dir", default=None, help="where temporary Lance datasets go")
    p.add_argument("--output", default=None, help="the JSON file (default benchmarks/out/retrieval-<UTC time>.json)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # a subprocess running one part
    p.add_argument("--vector-set", help=argparse.SUPPRESS)
    return p


def _run_part(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"part {argv} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.part:
        result = {"encode": part_encode, "ann": part_ann, "ranks": part_ranks}[args.part](args)
        result["peak_rss_mib_process"] = peak_rss_mib()
        print(json.dumps(result))
        return result
    if not os.path.isdir(args.model) and ({"encode", "ranks"} & set(args.parts) or "wordnet-tokens" in args.ann):
        from btok_model import BTokModel

        BTokModel.from_backbone("smollm2").save_pretrained(args.model)
    base = sys.argv[1:] if argv is None else argv
    results = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", "benchmarks/retrieval.py", *base],
        "versions": _versions(),
    }
    for part in args.parts:
        if part != "ann":
            print(f"[{part}] ...", file=sys.stderr, flush=True)
            results[part] = _run_part([*base, "--part", part])
            continue
        results["ann"] = []
        for name in args.ann:
            if name == "wordnet-btok" and not args.btok_output:
                continue
            types = args.synthetic_index_types if name == "synthetic" else args.index_types
            print(f"[ann {name}] ...", file=sys.stderr, flush=True)
            results["ann"].append(_run_part([*base, "--part", "ann", "--vector-set", name, "--index-types", *types]))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.output or os.path.join(ROOT, "benchmarks", "out", f"retrieval-{stamp}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


def _versions() -> dict:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "pylance", "lancedb", "pyarrow"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    main()

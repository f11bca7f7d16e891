"""Search an ``embed`` output: exact top-k through the blocked scorer, or Lance's ANN index.

    from btok_model.inference.index import Index, build_index
    build_index("corpus.lance")                       # IVF_PQ, parameters for the corpus size
    index = Index("corpus.lance")
    hits = index.search(query_vectors, k=10)          # ANN when an index exists (hits.approximate)
    hits = index.search(query_vectors, k=10, exact=True)   # brute force, equal to exact top-k

**Exact** search reads the stored vectors a chunk of rows at a time (``chunk_rows``, so a
corpus larger than memory is fine), scores each chunk with
:func:`btok_model.inference.scoring.topk` and merges the per-chunk lists
(:func:`~btok_model.inference.scoring.merge_topk`): the result is the exact top-k of the stored
vectors (float16 vectors are widened to fp32), ties to the lower dataset position. A MaxSim
output (``--multi-vector``) is searched exactly on its K vectors with ``similarity="maxsim"``.

**ANN** search uses Lance's own vector index on the ``vector`` column (:func:`build_index`:
``IVF_PQ``, or ``IVF_HNSW_SQ``; cosine), and is reported as approximate. Lance trains the index
at random and takes no seed; :func:`build_index` makes the IVF step reproducible by training the
IVF centroids itself (seeded spherical k-means on a sample) and passing them to Lance.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..datasets.jsonl import DataError
from ..embedder.similarity import check_similarity
from .lance_store import read_metadata

__all__ = ["INDEX_TYPES", "Index", "SearchResult", "build_index", "default_index_parameters"]

INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
MIN_INDEX_ROWS = 256  # PQ trains 256 centroids per sub-vector


@dataclass
class SearchResult:
    """The k hits of each query, best first.

    Attributes:
        ids: ``[Q][k]`` the hits' ids (fewer than k where the output has fewer rows).
        rows: long ``[Q, k]``, their row numbers in the embedded source (``-1``: no hit).
        scores: fp32 ``[Q, k]``, cosine (or MaxSim) scores (``-inf``: no hit).
        approximate: True when an ANN index answered (scores are then recomputed by Lance from
            the stored vectors when ``refine_factor`` is set, else from the index's codes).
        method: ``"exact"`` or the index type.
        columns: ``[Q][hits]`` dicts of the ``columns`` asked for (kept columns), else empty dicts.
    """

    ids: list[list[str]]
    rows: torch.Tensor
    scores: torch.Tensor
    approximate: bool
    method: str
    columns: list[list[dict]]


def default_index_parameters(num_rows: int, dim: int, index_type: str = "IVF_PQ") -> dict:
    """Index parameters for a corpus of ``num_rows`` vectors of size ``dim``.

    IVF partitions: about ``sqrt(num_rows)`` for IVF_PQ (a few hundred vectors per partition at
    100k, 1,000 at 1M), a quarter of that for IVF_HNSW_SQ (each partition holds an HNSW graph,
    which searches a larger partition well). PQ: ``dim / 8`` sub-vectors of 8 components (8 bits
    each), so a 576-dim vector is 72 bytes (``dim / 16`` halved recall@10 before re-ranking on
    clustered test vectors).
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    root = math.sqrt(num_rows)
    partitions = max(1, round(root if index_type == "IVF_PQ" else root / 4))
    params = {"index_type": index_type, "num_partitions": partitions}
    if index_type == "IVF_PQ":
        width = next(w for w in (8, 4, 2, 1) if dim % w == 0)
        params["num_sub_vectors"] = dim // width
    return params


def _spherical_kmeans(vectors: torch.Tensor, k: int, seed: int, iterations: int = 10) -> torch.Tensor:
    """``k`` unit centroids of fp32 ``[N, H]`` unit vectors (cosine k-means, seeded init)."""
    gen = torch.Generator().manual_seed(seed)
    centroids = vectors[torch.randperm(vectors.shape[0], generator=gen)[:k]].clone()
    for _ in range(iterations):
        assign = (vectors @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        sums[empty] = centroids[empty]  # an empty cluster keeps its centroid
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids


def build_index(
    path: str | os.PathLike,
    *,
    index_type: str = "IVF_PQ",
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
    seed: int | None = 0,
    sample_per_partition: int = 256,
    **lance_kwargs,
) -> dict:
    """Build (or replace) Lance's ANN index on an output's ``vector`` column, metric cosine.

    Args:
        path: the ``embed`` output.
        index_type: ``"IVF_PQ"`` or ``"IVF_HNSW_SQ"``.
        num_partitions, num_sub_vectors: None: :func:`default_index_parameters`.
        seed: train the IVF centroids here (seeded spherical k-means on ``sample_per_partition``
            x partitions rows), so the partitioning is reproducible; None: Lance trains them.
        sample_per_partition: rows sampled per partition for that k-means.
        lance_kwargs: passed to ``LanceDataset.create_index`` (e.g. ``m``, ``ef_construction``
            for HNSW).

    Returns:
        The parameters used (also stored in the output's summary metadata as ``index``).

    Raises:
        ValueError: too few rows (< 256) for an index, or a bad parameter.
    """
    import json
    import time

    from ..datasets.lance_tables import open_lance
    from .lance_store import METADATA_KEY

    path = os.fspath(path)
    dataset = open_lance(path, ("vector",))
    num_rows = dataset.count_rows()
    dim = dataset.schema.field("vector").type.list_size
    if num_rows < MIN_INDEX_ROWS:
        raise ValueError(
            f"{path}: {num_rows} rows are too few for an ANN index (it needs >= {MIN_INDEX_ROWS}); search it exactly"
        )
    params = default_index_parameters(num_rows, dim, index_type)
    if num_partitions is not None:
        params["num_partitions"] = num_partitions
    if num_sub_vectors is not None:
        if index_type != "IVF_PQ":
            raise ValueError("num_sub_vectors applies to IVF_PQ")
        if dim % num_sub_vectors:
            raise ValueError(f"num_sub_vectors must divide the vector size {dim}, got {num_sub_vectors}")
        params["num_sub_vectors"] = num_sub_vectors
    if not 1 <= params["num_partitions"] <= num_rows:
        raise ValueError(f"num_partitions must lie in [1, {num_rows}], got {params['num_partitions']}")
    started = time.perf_counter()
    kwargs = dict(lance_kwargs)
    if seed is not None:
        take = min(num_rows, sample_per_partition * params["num_partitions"])
        picks = np.sort(np.random.default_rng(seed).choice(num_rows, size=take, replace=False))
        sample = _vectors_of(dataset.take(picks.tolist(), columns=["vector"]).column("vector"))
        kwargs["ivf_centroids"] = _spherical_kmeans(sample, params["num_partitions"], seed).numpy()
    options = {k: v for k, v in params.items() if k != "index_type"}
    dataset.create_index("vector", index_type=index_type, metric="cosine", replace=True, **options, **kwargs)
    params.update(seed=seed, rows=num_rows, build_seconds=round(time.perf_counter() - started, 2))
    params.update({k: v for k, v in lance_kwargs.items() if isinstance(v, (int, float, str))})
    dataset = open_lance(path)
    raw = (dataset.schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is not None:
        metadata = json.loads(raw)
        metadata.setdefault("summary", {})["index"] = params
        dataset.update_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return params


def _vectors_of(column) -> torch.Tensor:
    """A (chunked) fixed-size-list column (``[n, H]`` or ``[n, K, H]``) as fp32."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape = []
    values = column
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()
    array = values.to_numpy(zero_copy_only=False).astype(np.float32)  # a writable copy
    return torch.from_numpy(array.reshape(len(column), *shape))


class Index:
    """An ``embed`` output opened for search (module docstring).

    Args:
        path: the ``*.lance`` folder.

    Attributes:
        path: as given.
        settings: the output's settings (:mod:`~btok_model.inference.lance_store`): the model,
            ``dims``, ``similarity``, ``multi_vector``, ``dtype``, ...
        summary: the run's summary (rows, skipped rows, the index), or ``{}`` before it finished.
        num_rows: rows stored.
        dim: the vector size.
        index_type: the ANN index's type (``"IVF_PQ"`` ...), or None without one.

    Raises:
        DataError: ``path`` is not an ``embed`` output.
    """

    def __init__(self, path: str | os.PathLike):
        from ..datasets.lance_tables import open_lance

        self.path = os.fspath(path)
        metadata = read_metadata(self.path)
        self.settings, self.summary = metadata["settings"], metadata.get("summary", {})
        self._dataset = open_lance(self.path, ("id", "row", "vector"))
        self.num_rows = self._dataset.count_rows()
        self.dim = self._dataset.schema.field("vector").type.list_size
        on_vector = [i for i in self._dataset.describe_indices() if list(i.field_names) == ["vector"]]
        # the type build_index recorded; an index made by other means (LanceDB) is named generically
        self.index_type = self.summary.get("index", {}).get("index_type", "vector index") if on_vector else None

    @property
    def columns(self) -> list[str]:
        """The output's column names."""
        return list(self._dataset.schema.names)

    @property
    def has_multi_vector(self) -> bool:
        return "vectors" in self._dataset.schema.names

    def check_model(self, model) -> None:
        """Refuse a model other than the one that embedded the output (its weights' fingerprint).

        Raises:
            DataError: naming both.
        """
        from .lance_store import model_fingerprint

        found = model_fingerprint(model)
        if found != self.settings["weights"]:
            raise DataError(
                f"{self.path} was embedded by {self.settings['model']} (weights {self.settings['weights']}); the model "
                f"given has weights {found}: queries must be embedded by the same model"
            )

    def check_embedder(self, model) -> None:
        """Refuse a model whose embeddings this output's rows cannot stand beside: other weights
        (:meth:`check_model`), another embedder class, or vectors stored truncated (``--dims``)
        or as the K vectors alone, so that a query embedded by ``model`` at full size scores the
        stored rows as it scores its own candidates.

        Raises:
            DataError: naming the output, what it records and what the model has.
        """
        self.check_model(model)
        recorded = self.settings.get("embedder")
        if recorded is not None and recorded != type(model).__name__:
            raise DataError(f"{self.path} was embedded by a {recorded}; the model given is a {type(model).__name__}")
        size = getattr(model, "embedding_dim", None)
        if size is not None and self.dim != size:
            raise DataError(
                f"{self.path} stores {self.dim}-dim vectors (embedded with --dims {self.settings.get('dims')}); "
                f"{self.settings['model']} embeds {size}: pools need full-size vectors"
            )

    def column(self, name: str) -> list:
        """Every row's value of column ``name``, in dataset order.

        Raises:
            DataError: the output has no such column (its columns named).
        """
        if name not in self.columns:
            raise DataError(f"{self.path} has no column {name!r}; its columns: {self.columns}")
        return self._dataset.to_table(columns=[name]).column(name).to_pylist()

    def take_vectors(self, positions) -> torch.Tensor:
        """fp32 ``[len(positions), H]``: the ``vector`` of the rows at these dataset positions
        (in the order given; a contiguous ascending run is read as a range)."""
        positions = [int(p) for p in positions]
        if not positions:
            return torch.empty(0, self.dim, dtype=torch.float32)
        if positions == list(range(positions[0], positions[0] + len(positions))):
            return self.vectors(positions[0], positions[0] + len(positions))
        return _vectors_of(self._dataset.take(positions, columns=["vector"]).column("vector"))

    def vectors(self, start: int = 0, stop: int | None = None, column: str = "vector") -> torch.Tensor:
        """fp32 ``[stop - start, H]`` (``column="vectors"``: ``[n, K, H]``), rows in dataset order."""
        stop = self.num_rows if stop is None else stop
        table = self._dataset.to_table(columns=[column], offset=start, limit=stop - start)
        return _vectors_of(table.column(column))

    def search(
        self,
        queries: torch.Tensor,
        k: int = 10,
        *,
        exact: bool = False,
        similarity: str = "cosine",
        nprobes: int | None = 20,
        refine_factor: int | None = 10,
        chunk_rows: int = 65536,
        columns: tuple[str, ...] = (),
    ) -> SearchResult:
        """The ``k`` best rows of each query.

        Args:
            queries: fp32 ``[Q, H]`` L2-normalised (``[Q, K, H]`` for ``similarity="maxsim"``),
                embedded by the output's model with its ``dims``.
            k: hits per query (>= 1).
            exact: brute force through the blocked scorer. False: the ANN index when the output
                has one (``approximate=True``), else brute force all the same.
            similarity: ``"cosine"`` (the ``vector`` column) or ``"maxsim"`` (the ``vectors``
                column of a ``--multi-vector`` output; always exact).
            nprobes: IVF partitions searched (ANN; None: Lance's default).
            refine_factor: ANN: re-rank the index's best ``k * refine_factor`` on the stored
                vectors (None: scores from the index's codes alone; recall@10 on 4,000
                clustered 64-dim vectors, IVF_PQ: 0.55 without, 0.99 with 10).
            chunk_rows: rows scored per chunk (exact).
            columns: more columns to return with each hit (e.g. a kept column).

        Raises:
            ValueError: a query of the wrong shape, MaxSim on an output without K vectors, or
                a column the output lacks.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        check_similarity(similarity)
        if similarity == "maxsim" and not self.has_multi_vector:
            raise ValueError(f"{self.path} stores no K vectors per row (embed it with --multi-vector) for MaxSim")
        want = 3 if similarity == "maxsim" else 2
        if queries.dim() != want or queries.shape[-1] != self.dim:
            shape = "[Q, K, H]" if want == 3 else "[Q, H]"
            raise ValueError(f"queries must be {shape} with H = {self.dim}, got shape {tuple(queries.shape)}")
        missing = [c for c in columns if c not in self._dataset.schema.names]
        if missing:
            raise ValueError(f"{self.path} has no column(s) {missing}; its columns: {self._dataset.schema.names}")
        queries = queries.float().cpu()
        if exact or similarity == "maxsim" or self.index_type is None:
            return self._exact(queries, k, similarity, chunk_rows, tuple(columns))
        return self._ann(queries, k, nprobes, refine_factor, tuple(columns))

    def _exact(self, queries: torch.Tensor, k: int, similarity: str, chunk_rows: int, columns: tuple) -> SearchResult:
        from ..embedder.encode import EncodedShard
        from .scoring import TopK, merge_topk, topk

        column = "vectors" if similarity == "maxsim" else "vector"
        best = TopK(torch.full((queries.shape[0], k), -math.inf), torch.full((queries.shape[0], k), -1))
        for lo in range(0, self.num_rows, chunk_rows):
            hi = min(lo + chunk_rows, self.num_rows)
            shard = EncodedShard(self.vectors(lo, hi, column), lo, hi, self.num_rows, chunk_rows)
            part = topk(queries, shard, k, similarity=similarity, combine=False)
            best = part if lo == 0 else merge_topk([best, part], k)
        positions = sorted({p for p in best.indices.flatten().tolist() if p >= 0})
        fetch = ["id", "row", *(c for c in columns if c not in ("id", "row"))]
        found = self._dataset.take(positions, columns=fetch).to_pylist() if positions else []
        lookup = dict(zip(positions, found))
        hits = [[lookup[p] for p in q if p >= 0] for q in best.indices.tolist()]
        rows = [[h["row"] for h in q] + [-1] * (k - len(q)) for q in hits]
        extra = [[{c: h[c] for c in columns} for h in q] for q in hits]
        ids = [[h["id"] for h in q] for q in hits]
        return SearchResult(ids, torch.tensor(rows, dtype=torch.long), best.values, False, "exact", extra)

    def _ann(self, queries: torch.Tensor, k: int, nprobes, refine_factor, columns: tuple) -> SearchResult:
        ids, rows, scores, extra = [], [], [], []
        for q in queries.numpy():
            nearest = {"column": "vector", "q": q, "k": k, "metric": "cosine"}
            if nprobes is not None:
                nearest["nprobes"] = nprobes
            if refine_factor is not None:
                nearest["refine_factor"] = refine_factor
            fetch = ["id", "row", *(c for c in columns if c not in ("id", "row")), "_distance"]
            table = self._dataset.to_table(nearest=nearest, columns=fetch)
            got = table.column("row").to_pylist()
            extra.append(table.select(list(columns)).to_pylist() if columns else [{} for _ in got])
            ids.append(table.column("id").to_pylist())
            rows.append(got + [-1] * (k - len(got)))
            similarity = [1.0 - d for d in table.column("_distance").to_pylist()]  # cosine distance = 1 - cos
            scores.append(similarity + [-math.inf] * (k - len(got)))
        scores = torch.tensor(scores, dtype=torch.float32)
        return SearchResult(ids, torch.tensor(rows, dtype=torch.long), scores, True, self.index_type, extra)

"""Two gloo ranks running ``gather_with_grad`` + InfoNCE; run as a script by test_losses.py.

The ranks are forked from this fresh process before it computes anything (forking a process
whose thread pools have run can hang). ``losses.py`` is loaded from its file, in a stand-in
package over its folder (for its import of ``similarity.py``): the two need only torch, and
importing the ``btok_model`` package would also import transformers.

    python gather_ranks.py OUT_DIR    # writes OUT_DIR/{0,1}.pt
"""

import importlib.util
import os
import sys
import types

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
QUERIES, CANDIDATES, H, TEMPERATURE = (3, 2), (5, 3), 8, 0.05  # per rank: unequal on purpose
EMBEDDER_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "btok_model", "embedder")
PACKAGE = "btok_embedder_under_test"


def load_losses():
    package = types.ModuleType(PACKAGE)
    package.__path__ = [EMBEDDER_DIR]  # relative imports of losses.py resolve in its folder
    sys.modules[PACKAGE] = package
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.losses", os.path.join(EMBEDDER_DIR, "losses.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def rank_data(rank: int):
    """``(queries, candidates, positive_index)`` of one rank, float64."""
    g = torch.Generator().manual_seed(100 + rank)
    q = torch.nn.functional.normalize(torch.randn(QUERIES[rank], H, generator=g, dtype=torch.float64), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(CANDIDATES[rank], H, generator=g, dtype=torch.float64), dim=-1)
    positive = torch.randperm(CANDIDATES[rank], generator=g)[: QUERIES[rank]]
    return q, c, positive


def run(rank: int, init_file: str, out_dir: str) -> None:
    losses = load_losses()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        q, c, positive = rank_data(rank)
        q.requires_grad_(True)
        c.requires_grad_(True)
        sizes = losses.gather_sizes(c.shape[0], c.device)
        gathered = losses.gather_with_grad(c, sizes)
        loss = losses.info_nce(q, gathered, positive + losses.rank_offset(sizes), TEMPERATURE)
        loss.backward()
        result = {"loss": loss.detach(), "q": q.grad, "c": c.grad, "sizes": sizes, "gathered": gathered.detach()}
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    mp.start_processes(run, args=(os.path.join(out, "init"), out), nprocs=WORLD, start_method="fork")

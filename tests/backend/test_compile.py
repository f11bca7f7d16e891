"""torch.compile of a model that uses the backend on a packed condensation batch."""

import pytest
import torch

import btok_model  # noqa: F401  (registers "btok_triton")
from btok_kernels import CondensationLayout
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import backend_model


@pytest.mark.parametrize("kernel_backend", [pytest.param("triton", marks=pytest.mark.interpret)], indirect=True)
def test_compiled_training_step_matches_eager(kernel_backend, device):
    """The loss and every gradient of a compiled step equal the eager step. The kernel is one
    graph node (a custom op); the mask-pattern check runs eagerly (a graph break, not a wrong
    answer)."""
    torch.manual_seed(0)
    model = backend_model("qwen2").to(device)
    model.set_attn_implementation("btok_triton")
    layout = CondensationLayout.from_lengths([5, 9], num_btoks=4, target_lens=[3, 6], device=device)
    ids = torch.randint(1, 90, (1, layout.total_tokens), device=device)
    pos = torch.cat([torch.arange(n) for n in layout.seqlens])[None].to(device)
    params = list(model.parameters())

    def step(ids, pos, layout):
        return model(input_ids=ids, position_ids=pos, btok_layout=layout, use_cache=False, labels=ids).loss

    loss = step(ids, pos, layout)
    grads = torch.autograd.grad(loss, params)
    torch._dynamo.reset()
    compiled_loss = torch.compile(step, backend="aot_eager")(ids, pos, layout)
    compiled_grads = torch.autograd.grad(compiled_loss, params)
    assert rel_err(compiled_loss, loss) < 1e-6
    for g, gc in zip(grads, compiled_grads):
        assert rel_err(gc, g) < 1e-5

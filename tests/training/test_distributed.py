"""Two processes with gloo train exactly like one process on the concatenated batch."""

import torch
import torch.multiprocessing as mp

from tests.helpers.numerics import assert_tensors_close
from tests.helpers.training import case_data, one_step_recipe, tiny_model, train_one_step, trainable
from tests.training.ddp_worker import CASES, LOSSES, run


def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    """Loss and gradients (one SGD step with lr 1) of 2 ranks x 4 examples, plain and GradCache,
    equal one process with all 8: candidates are gathered across ranks with gradients sent
    back to their owner, and each rank's losses are weighted by its share of the queries and
    target tokens (the two ranks hold different numbers of target tokens here; in the
    "one-target" case the second rank holds none, and the logged generative loss must still be
    the whole batch's). The "maxsim-matryoshka" case gathers multi-vector candidates (InfoNCE
    on MaxSim, summed over two Matryoshka dimensions) through GradCache."""
    untouched = trainable(tiny_model(one_step_recipe(batch_size=8)))
    expected, expected_log = {}, {}
    for data, loss in sorted({(data, loss) for _, _, data, loss in CASES}):
        recipe = one_step_recipe(batch_size=8, **LOSSES[loss])
        reference = tiny_model(recipe)
        trainer = train_one_step(
            reference, recipe, case_data(data), str(tmp_path / f"single-{data}-{loss}"), distributed=False
        )
        expected_log[data, loss] = trainer.state.log_history[0]
        expected[data, loss] = {n: untouched[n] - p for n, p in trainable(reference).items()}  # the gradient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks inherit it: one thread each on a 2-core machine
    mp.spawn(run, args=(2, str(tmp_path)), nprocs=2, join=True)
    for name, _, data, loss in CASES:
        result = torch.load(tmp_path / f"{name}.pt")
        actual = {n: untouched[n] - p for n, p in result["weights"].items()}
        assert_tensors_close(actual, expected[data, loss], 1e-5, f"{name} gradient")
        for key in ("loss", "contrastive_loss", "generative_loss"):
            want = expected_log[data, loss][key]
            assert abs(result["log"][key] - want) <= 1e-4 * abs(want), (name, key, result["log"][key], want)

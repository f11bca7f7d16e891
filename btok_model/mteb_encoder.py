"""MTEB: a BTok model (or the no-BTok baseline) as an encoder of the ``mteb`` package.

    import mteb
    from btok_model import BTokModel
    from btok_model.mteb_encoder import MTEBEncoder

    encoder = MTEBEncoder(BTokModel.from_pretrained("runs/smol"), name="me/btok-smol", revision="step-5000")
    results = mteb.evaluate(encoder, mteb.get_tasks(tasks=["SciFact"]), encode_kwargs={"batch_size": 64})

Written for mteb 2.x (checked with 2.26; 1.x is not supported): :class:`MTEBEncoder` subclasses
``mteb.models.abs_encoder.AbsEncoder`` and meets ``mteb.models.EncoderProtocol``: ``encode(inputs:
DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset, prompt_type, **kwargs)`` returns
float32 ``[N, H]`` L2-normalised rows, scored by cosine similarity. Queries and inputs without a
role get an instruction (the first of ``instructions[task name]``, the task's own
``metadata.prompt``, ``instructions[task type]``; :data:`DEFAULT_INSTRUCTIONS`), documents none by
default, joined to the text by :data:`DEFAULT_TEMPLATE`. mteb caches results by ``name`` and
``revision``: give each checkpoint and instruction setting its own. The rules in full and what
was tested: docs/integrations.md.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
except ImportError as err:  # an optional extra
    raise ImportError("btok_model.mteb_encoder needs the mteb package (2.x): pip install 'btok[mteb]'") from err

__all__ = ["DEFAULT_INSTRUCTIONS", "DEFAULT_TEMPLATE", "MTEBEncoder"]

_RETRIEVAL = "Given a query, retrieve relevant passages that answer it"
# By MTEB task type; a string goes to queries and role-less inputs, never to documents.
DEFAULT_INSTRUCTIONS: dict[str, str | dict[str, str]] = {
    "Retrieval": _RETRIEVAL,
    "Reranking": _RETRIEVAL,
    "InstructionRetrieval": _RETRIEVAL,
    "InstructionReranking": _RETRIEVAL,
    "Any2AnyRetrieval": "Given a query, retrieve relevant candidates",
    "Any2AnyMultilingualRetrieval": "Given a query, retrieve relevant candidates",
    "STS": "Retrieve semantically similar text",
    "PairClassification": "Retrieve text that is semantically similar to the given text",
    "Classification": "Classify the given text",
    "MultilabelClassification": "Classify the given text",
    "Clustering": "Identify the topic or theme of the given text",
    "BitextMining": "Retrieve parallel sentences",
    "Summarization": "Given a summary, retrieve semantically similar summaries",
}
DEFAULT_TEMPLATE = "{instruction}: {text}"


class MTEBEncoder(AbsEncoder):
    """An embedder with ``encode(inputs, batch_size=, show_progress_bar=)`` as an MTEB encoder.

    Args:
        model: :class:`~btok_model.BTokModel` or
            :class:`~btok_model.embedder.pooled.PooledEmbedder` (anything whose ``encode``
            returns fp32 ``[N, H]`` L2-normalised rows).
        name: the model's name in MTEB's results ("organisation/model").
        revision: its revision in MTEB's results (e.g. the checkpoint's step).
        instructions: ``{task name or task type: str | {"query": str, "document": str}}`` (a str
            instructs queries and inputs without a role; docs/integrations.md); default
            :data:`DEFAULT_INSTRUCTIONS`.
        task_prompts: use a task's own ``metadata.prompt`` before the task-type entry.
        template: how an instruction and a text are joined (``{instruction}``, ``{text}``).
        batch_size: inputs per forward pass (None: mteb's ``encode_kwargs["batch_size"]``).
        show_progress_bar: a tqdm bar per ``encode`` (None: mteb's ``encode_kwargs``).
    """

    def __init__(
        self,
        model,
        *,
        name: str = "btok/model",
        revision: str = "no_revision_available",
        instructions: dict | None = None,
        task_prompts: bool = True,
        template: str = DEFAULT_TEMPLATE,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ):
        if "{instruction}" not in template or "{text}" not in template:
            raise ValueError(f"template must hold {{instruction}} and {{text}}, got {template!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        self.model = model
        self.instructions = dict(DEFAULT_INSTRUCTIONS if instructions is None else instructions)
        for key, value in self.instructions.items():
            if not isinstance(value, (str, dict)) or (isinstance(value, dict) and set(value) - {"query", "document"}):
                raise ValueError(
                    f"instructions[{key!r}] must be a str or a dict with 'query'/'document', got {value!r}"
                )
        self.task_prompts, self.template = task_prompts, template
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        modalities = ["text", "image"] if getattr(model, "processor", None) is not None else ["text"]
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": name,
                "revision": revision,
                "embed_dim": getattr(model, "hidden_size", None),
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": bool(self.instructions) or task_prompts,
                "modalities": modalities,
                "framework": ["PyTorch"],
            }
        )

    def instruction(self, task_metadata, prompt_type=None) -> str | None:
        """The instruction for inputs of ``task_metadata`` in the role ``prompt_type``
        (``mteb.types.PromptType`` or None), or None."""
        role = getattr(prompt_type, "value", prompt_type)
        entries = [self.instructions.get(task_metadata.name)]
        if self.task_prompts:
            entries.append(task_metadata.prompt)
        entries.append(self.instructions.get(task_metadata.type))
        for entry in entries:
            if not entry:
                continue
            if isinstance(entry, dict):
                return entry.get(role or "query") or None
            return None if role == "document" else entry
        return None

    def format(self, text: str | None, instruction: str | None) -> str | None:
        """``text`` with ``instruction`` joined by the template (an image-only input: the
        instruction alone)."""
        if not instruction:
            return text
        head = instruction.rstrip().rstrip(":.").rstrip()
        return self.template.format(instruction=head, text=text or "").rstrip()

    def _inputs(self, batch: dict, instruction: str | None) -> list:
        """A batch of mteb's dataloader as btok inputs (str, or ``{"text", "image"}``)."""
        for key in ("audio", "video"):
            if batch.get(key) is not None:
                raise ValueError(f"btok embeds text and images; this task gives {key} inputs")
        texts, images = batch.get("text"), batch.get("image")
        size = len(texts) if texts is not None else len(images)
        out = []
        for i in range(size):
            text = self.format((texts[i] or None) if texts is not None else None, instruction)
            image = images[i] if images is not None else None
            out.append(text if image is None else {"text": text, "image": image})
        return out

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        """Embed every input of mteb's dataloader.

        Args:
            inputs: ``DataLoader[BatchedInput]`` (batches with ``"text"`` and/or ``"image"``).
            task_metadata, hf_split, hf_subset: the task (its name and type pick the instruction).
            prompt_type: ``PromptType.query``, ``PromptType.document`` or None.
            **kwargs: mteb's ``encode_kwargs`` (``batch_size``, ``show_progress_bar`` are used).

        Returns:
            float32 ``[N, H]``, L2-normalised.
        """
        instruction = self.instruction(task_metadata, prompt_type)
        items = [item for batch in inputs for item in self._inputs(batch, instruction)]
        batch_size = self.batch_size or kwargs.get("batch_size") or 32
        show = self.show_progress_bar if self.show_progress_bar is not None else kwargs.get("show_progress_bar", False)
        emb = self.model.encode(items, batch_size=batch_size, show_progress_bar=bool(show))
        return torch.as_tensor(emb, dtype=torch.float32).cpu().numpy()

"""The packed training batch: what ``model.collate`` builds and ``model(batch)`` reads (:class:`BTokBatch`).

Every sequence of a batch sits in ONE row ``[1, T]``: first the ``Nq`` queries ``[query |
K BToks | target?]``, then the candidates (the ``Nq`` positives, then the hard negatives),
each ``[candidate | K BToks | target?]``. The :class:`~btok_kernels.CondensationLayout` says
where each sequence, its BToks and its target start; the embeddings are pooled from there.

A batch reads like a dict of its fields that are not None (``batch["input_ids"]``,
``"pixel_values" in batch``, ``model(**batch)``) and has ``.to(device)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from btok_kernels import CondensationLayout

from .media import MEDIA_BATCH_KEYS

__all__ = ["BTokBatch", "FieldMapping", "to_device"]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; host-to-GPU copies go through pinned memory, without blocking."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class FieldMapping:
    """Read access by name to the fields of a dataclass that are not None.

    ``keys()`` and ``[key]`` make ``model(**batch)`` work; iteration, ``len`` and ``in`` go
    over the same keys (and answer the transformers Trainer's probes of a batch). It is deliberately not a
    :class:`collections.abc.Mapping`: the Trainer rebuilds a Mapping batch as
    ``type(batch)(dict)``, while it passes this one on as it is (the model moves it).
    """

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class BTokBatch(FieldMapping):
    """One packed batch (see the module docstring).

    Attributes:
        input_ids: int64 ``[1, T]``.
        position_ids: int64 ``[1, T]`` (restarting at 0 per sequence; a target starts at its
            sequence's token count before it, input + K), or ``[3, 1, T]`` M-RoPE positions of a
            vision-language backbone.
        btok_layout: the :class:`~btok_kernels.CondensationLayout` of the row.
        labels: int64 ``[1, T]``: -100 except the scored target tokens (unshifted, as in transformers).
        positive_index: int64 ``[Nq]``, each query's positive among the candidates (``i``).
        num_target_tokens: how many target tokens are scored.
        pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw: a vision-language
            batch's images and videos, in the order of their placeholder tokens in the row
            (None for a text batch).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    btok_layout: CondensationLayout
    labels: torch.Tensor
    positive_index: torch.Tensor
    num_target_tokens: int
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None

    @property
    def num_queries(self) -> int:
        """``Nq``: the first ``Nq`` sequences are the queries, the rest the candidates."""
        return self.positive_index.shape[0]

    def btok_positions(self) -> torch.Tensor:
        """int64 ``[n, K]``: the flat positions of every sequence's K BToks in the row, the
        queries' first (row ``s`` spans ``btok_start[s]`` to ``target_start[s]`` of sequence ``s``)."""
        layout = self.btok_layout
        starts = torch.tensor(layout.host_cu_seqlens[:-1], dtype=torch.long)
        first = starts + torch.tensor(layout.host_btok_start, dtype=torch.long)
        count = int(layout.host_target_start[0] - layout.host_btok_start[0]) if starts.numel() else 0
        return first[:, None] + torch.arange(count)

    def media_inputs(self) -> dict[str, torch.Tensor]:
        """The pixel inputs the backbone's forward takes (:data:`~.media.MEDIA_BATCH_KEYS` present)."""
        return {key: getattr(self, key) for key in MEDIA_BATCH_KEYS if getattr(self, key) is not None}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BTokBatch:
        """The batch with every tensor and the layout on ``device`` (to a GPU through pinned
        memory, without blocking); ``labels`` stay where they are (the model indexes them with
        host integers and moves only the scored ones)."""
        device = torch.device(device)
        moved = {
            f.name: to_device(value, device)
            for f in fields(self)
            if f.name != "labels" and isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, btok_layout=self.btok_layout.to(device), **moved)

"""Small models that exercise partitioning: an op no backend knows, in the middle of an MLP."""
from __future__ import annotations

import torch


@torch.library.custom_op("archfit_zoo::softclip", mutates_args=())
def softclip(x: torch.Tensor, limit: float) -> torch.Tensor:
    """A user's own kernel: smooth clipping to (-limit, limit). No backend has a lowering."""
    return limit * torch.tanh(x / limit)


@softclip.register_fake
def _(x: torch.Tensor, limit: float) -> torch.Tensor:
    return torch.empty_like(x)


class MLPWithCustomOp(torch.nn.Module):
    def __init__(self, width: int = 256, depth: int = 2):
        super().__init__()
        self.head = torch.nn.Sequential(*[m for _ in range(depth) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())])
        self.tail = torch.nn.Sequential(*[m for _ in range(depth) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        x = softclip(x, 3.0)
        return self.tail(x)


def mlp_custom_op(tiny: bool):
    width, batch = (128, 16) if tiny else (1024, 64)
    return MLPWithCustomOp(width), (torch.randn(batch, width),)

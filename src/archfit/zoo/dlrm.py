"""DLRM (Naumov et al. 2019) at the public Criteo Kaggle benchmark configuration of the DLRM
reference code: 26 embedding tables of dimension 16 (33.8M rows, 2.2 GB), bottom MLP
13-512-256-64-16, pairwise dot-product interaction, top MLP 512-256-1."""
from __future__ import annotations

import torch
from torch import nn

KAGGLE_TABLES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


def _mlp(sizes, last_sigmoid: bool = False) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        layers.append(nn.Sigmoid() if last_sigmoid and i == len(sizes) - 2 else nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(self, tables=KAGGLE_TABLES, dim: int = 16, bottom=(13, 512, 256, 64), top=(512, 256)):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n in tables)
        self.bottom = _mlp(list(bottom) + [dim])
        n = len(tables) + 1
        li, lj = torch.tril_indices(n, n, offset=-1)  # each pair of features once
        self.register_buffer("li", li)
        self.register_buffer("lj", lj)
        self.top = _mlp([dim + li.numel()] + list(top) + [1], last_sigmoid=True)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        feats = torch.stack([x] + [emb(sparse[:, i]) for i, emb in enumerate(self.embeddings)], dim=1)
        z = torch.bmm(feats, feats.transpose(1, 2))
        return self.top(torch.cat((x, z[:, self.li, self.lj]), dim=1))


def dlrm(tiny: bool):
    tables = tuple(min(n, 1000) for n in KAGGLE_TABLES) if tiny else KAGGLE_TABLES
    model = DLRM(tables, bottom=(13, 64, 32) if tiny else (13, 512, 256, 64), top=(64, 32) if tiny else (512, 256))
    batch = 16 if tiny else 128
    sparse = torch.stack([torch.randint(0, n, (batch,)) for n in tables], dim=1)
    return model, (torch.rand(batch, 13), sparse)

"""DomainBed's MLP featurizer, for inputs that are flat vectors."""

import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """input -> (dropout, relu) -> (mlp_depth - 2) hidden layers -> output, as DomainBed's MLP."""

    def __init__(self, n_inputs: int, n_outputs: int, hparams: dict):
        super().__init__()
        width = hparams["mlp_width"]
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(hparams["mlp_dropout"])
        self.hiddens = nn.ModuleList(nn.Linear(width, width) for _ in range(hparams["mlp_depth"] - 2))
        self.output = nn.Linear(width, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x):
        x = F.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = F.relu(self.dropout(hidden(x)))
        return self.output(x)

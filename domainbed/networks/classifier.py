"""The classification head on top of a featurizer."""

import torch.nn as nn


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:
    """A linear head, or DomainBed's three-layer MLP head when `nonlinear_classifier` is set."""
    if is_nonlinear:
        return nn.Sequential(
            nn.Linear(in_features, in_features // 2),
            nn.ReLU(),
            nn.Linear(in_features // 2, in_features // 4),
            nn.ReLU(),
            nn.Linear(in_features // 4, out_features),
        )
    return nn.Linear(in_features, out_features)

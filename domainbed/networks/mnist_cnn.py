"""DomainBed's MNIST CNN: four 3x3 convolutions with GroupNorm, then global average pooling."""

import torch.nn as nn
import torch.nn.functional as F


class MNIST_CNN(nn.Module):
    """Hand-tuned for (C, 28, 28) inputs, as in DomainBed; outputs 128 features.

    `feature_map` returns the last (B, 128, 14, 14) map before pooling so that methods which act
    on spatial features (RSC) work on MNIST-sized inputs too.
    """

    n_outputs = 128

    def __init__(self, input_shape):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def feature_map(self, x):
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        return self.bn3(F.relu(self.conv4(x)))

    def style_sites(self) -> list:
        """The first three blocks' normalisations, after which MixStyle mixes statistics."""
        return [self.bn0, self.bn1, self.bn2]

    def stage_sites(self) -> list:
        """The four blocks' normalisations, the first closing the stem (MIRO's feature layers)."""
        return [self.bn0, self.bn1, self.bn2, self.bn3]

    def pool(self, z):
        return self.avgpool(z).flatten(1)

    def forward(self, x):
        return self.pool(self.feature_map(x))

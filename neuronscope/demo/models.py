"""The demo's model factories.

Each factory takes no arguments and returns a freshly built, untrained module of the right
dtype, the way a user's ``model.py`` would; the demo saves state dicts next to them.
"""

from __future__ import annotations

import torch
from torch import nn

N_SHAPES = 4
N_DIGITS = 10


class ShapesCNN(nn.Module):
    """Three conv blocks and a linear read-out, for (3, 32, 32) normalized images."""

    def __init__(self, n_classes: int = N_SHAPES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.pool3(self.relu3(self.bn3(self.conv3(x))))
        return self.fc(torch.flatten(x, 1))


def shapes_cnn() -> nn.Module:
    """The shortcut-shapes CNN (both the shortcut model and its clean twin)."""
    return ShapesCNN()


def digits_cnn() -> nn.Module:
    """A small CNN for (1, 8, 8) digit images, 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, N_DIGITS),
    )


def logistic(n_features: int) -> nn.Sequential:
    """A one-layer logistic network in float64: P(y = 1 | x) = sigmoid(w·x + b)."""
    return nn.Sequential(nn.Linear(n_features, 1), nn.Sigmoid()).double()


def diabetes_logistic() -> nn.Module:
    """Logistic network over the 10 standardized diabetes columns."""
    return logistic(10)


def cancer_logistic() -> nn.Module:
    """Logistic network over the 30 standardized breast-cancer columns."""
    return logistic(30)


def cancer_mlp() -> nn.Module:
    """A small float32 MLP over the 30 standardized breast-cancer columns; outputs P(malignant)."""
    return nn.Sequential(
        nn.Linear(30, 16),
        nn.ReLU(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 1),
        nn.Sigmoid(),
    )

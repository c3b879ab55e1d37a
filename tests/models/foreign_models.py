"""The Captum tutorial networks whose trained state dicts live in ``shared/fixtures/foreign/``.

Each factory rebuilds one architecture with the module names its state dict uses, so that
``load_model("foreign_models.py:cifar_net", weights="cifar_torchvision.pt")`` loads strictly.
Activations are named modules (``relu1``, ``pool1``, ``sigmoid1``, …) so that they can be hooked.
"""

import torch
from torch import nn


class CifarNet(nn.Module):
    """CIFAR-10 classifier: (N, 3, 32, 32) normalised images -> (N, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class CaliforniaNet(nn.Module):
    """California-housing regressor: (N, 8) columns -> (N, 1) price."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(8, 100)
        self.relu1 = nn.ReLU()
        self.lin2 = nn.Linear(100, 50)
        self.relu2 = nn.ReLU()
        self.lin3 = nn.Linear(50, 10)
        self.relu3 = nn.ReLU()
        self.lin4 = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.lin1(x))
        x = self.relu2(self.lin2(x))
        x = self.relu3(self.lin3(x))
        return self.lin4(x)


class TitanicNet(nn.Module):
    """Titanic survival classifier: (N, 12) columns -> (N, 2) class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(12, 12)
        self.sigmoid1 = nn.Sigmoid()
        self.linear2 = nn.Linear(12, 8)
        self.sigmoid2 = nn.Sigmoid()
        self.linear3 = nn.Linear(8, 2)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sigmoid1(self.linear1(x))
        x = self.sigmoid2(self.linear2(x))
        return self.softmax(self.linear3(x))


def cifar_net() -> nn.Module:
    return CifarNet()


def california_net() -> nn.Module:
    return CaliforniaNet()


def titanic_net() -> nn.Module:
    return TitanicNet()

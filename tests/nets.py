"""Small models with the structures the graph must follow, for the graph and surgery tests."""

import torch
from torch import nn


class FlattenNet(nn.Module):
    """conv -> BN -> ReLU -> conv -> flatten of C x H x W into a Linear -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.flatten(self.conv2(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


class BranchNet(nn.Module):
    """Concat of two branches, a residual add, a data-dependent branch and a squeeze-excitation."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.mix = nn.Conv2d(9, 9, 1)
        self.se1 = nn.Conv2d(9, 3, 1)
        self.se2 = nn.Conv2d(3, 9, 1)
        self.head = nn.Linear(9, 2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        if y.mean() > -1e9:  # data-dependent control flow: followed as it ran
            y = y + self.mix(y).relu()
        s = torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return self.head((y * s).mean((2, 3)))

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


class TinyResNet(nn.Module):
    """A residual CNN for 8x8 single-channel digits: stem, two residual blocks (one strided), pool, Linear."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.a1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.b1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
                                nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a1(x))
        x = torch.relu(self.down(x) + self.b1(x))
        return self.fc(x.mean((2, 3)))


def digits(n_train: int = 1200):
    """sklearn's real 8x8 handwritten digits as (x_train, y_train, x_test, y_test) tensors, fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class Tied(nn.Module):
    """Two branches with one conv weight (b.weight = a.weight), BatchNorms sharing their running statistics,
    and two Linears with one weight. b, bn_b and fc_b hold nothing but the tied tensors, so nothing else
    would set their widths."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b.weight = self.a.weight
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8, affine=False)
        self.bn_b.running_mean, self.bn_b.running_var = self.bn_a.running_mean, self.bn_a.running_var
        self.fc_a, self.fc_b = nn.Linear(8, 6), nn.Linear(8, 6, bias=False)
        self.fc_b.weight = self.fc_a.weight
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = (torch.relu(self.bn_a(self.a(x))) + torch.relu(self.bn_b(self.b(x.flip(3))))).mean((2, 3))
        return self.head(torch.relu(self.fc_a(y) + self.fc_b(2 * y)))


class NoOnnx(nn.Module):
    """A layer, then an op with no ONNX translation (kthvalue)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.kthvalue(self.fc(x), 2).values

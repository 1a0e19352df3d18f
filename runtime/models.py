"""Models the runtime trains, all resolution-agnostic (adaptive pooling), so a plan may
change the input resolution between phases (progressive resizing).

`build_model(name, num_classes)` maps a job's `model.name` to a module:
  resnet18        CIFAR-style ResNet-18 (3x3 stem, no max-pool), plain torch
  cnn             a small 2-conv network (tests, smoke runs)
  cnn-bn          the same with batch norm after each conv (tests of the PS's buffers)
  mlp[:H]         adaptive-pool to 8x8, then a 2-layer perceptron with H hidden units
                  (default 64; no batch norm: exact tests; a wide one makes a big model
                  that computes fast, for communication benchmarks)
  torchvision:X   torchvision.models.X(num_classes=...) when torchvision is installed
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from hybridps.errors import UserError


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images (He et al. 2016, CIFAR variant: 3x3 stem, no max-pool)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c_in = [], width
        for i, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1, 1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallCNNBN(nn.Module):
    """SmallCNN with batch norm after each convolution: the smallest model with buffers
    (running statistics) the PS must hold, merge and checkpoint."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, hidden: int = 64, pooled: int = 8):
        super().__init__()
        self.pooled = pooled
        self.fc1 = nn.Linear(in_channels * pooled * pooled, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, self.pooled), 1)
        return self.fc2(F.relu(self.fc1(x)))


MODELS = {"resnet18": ResNet18, "cnn": SmallCNN, "cnn-bn": SmallCNNBN, "mlp": MLP}


def build_model(name: str, num_classes: int, in_channels: int = 3, seed: int | None = 0) -> nn.Module:
    """The model called `name` with `num_classes` outputs; weights initialised from `seed`
    (so every process builds the same initial model)."""
    if seed is not None:
        torch.manual_seed(seed)
    if name.startswith("torchvision:"):
        try:
            import torchvision
        except ImportError:
            raise UserError(f"model {name!r} needs torchvision; install it (pip install torchvision) "
                            f"or use one of: {', '.join(MODELS)}") from None
        arch = name.split(":", 1)[1]
        fn = getattr(torchvision.models, arch, None)
        if fn is None or not callable(fn):
            raise UserError(f"torchvision has no model {arch!r}")
        return fn(num_classes=num_classes)
    if name.startswith("mlp:"):
        try:
            hidden = int(name.split(":", 1)[1])
        except ValueError:
            raise UserError(f"model {name!r}: expected mlp:HIDDEN_UNITS, e.g. mlp:256") from None
        return MLP(num_classes=num_classes, in_channels=in_channels, hidden=hidden)
    cls = MODELS.get(name)
    if cls is None:
        raise UserError(f"unknown model {name!r}; use one of: {', '.join(MODELS)}, torchvision:NAME "
                        f"(set job model.name or pass --model)")
    return cls(num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def buffers_vector(model: nn.Module) -> torch.Tensor:
    """The model's buffers (batch-norm running statistics and counters) as one float64
    vector, in `named_buffers()` order (float64 holds the integer counters exactly)."""
    bufs = [b.detach().reshape(-1).to(torch.float64).cpu() for _, b in model.named_buffers()]
    return torch.cat(bufs) if bufs else torch.empty(0, dtype=torch.float64)


def load_buffers(model: nn.Module, vec: torch.Tensor) -> None:
    """Inverse of `buffers_vector` (integer buffers rounded back)."""
    off = 0
    for _, b in model.named_buffers():
        part = vec[off: off + b.numel()].reshape(b.shape)
        b.copy_(part.round() if not b.dtype.is_floating_point else part)
        off += b.numel()

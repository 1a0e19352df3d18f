"""Datasets for the runtime: every sample is addressed by an integer index, so the
worker that owns a slice of an epoch's permutation can build its batches directly.

  synthetic[:C]     seeded, learnable class-conditional images (C classes, default 10),
                    generated on the fly at any resolution
  cifar10 / cifar100  the standard python-pickle batches from a local directory, read
                    with a restricted unpickler (only numpy array reconstruction allowed)
  digits            scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no
                    network): a fixed stratified split of 1,437 training and 360
                    validation images, grey levels copied into 3 channels
  imagefolder:DIR   torchvision.datasets.ImageFolder (needs torchvision)

A job's `data.samples` must equal the training set's size (`check_samples`) unless it
sets `[data] subset = true` (then an epoch is the first `samples` training images).
`batch(indices, resolution)` returns float32 NCHW images at `resolution` and int64
labels; each phase's resolution is prepared once where it fits in CACHE_BYTES (digits and
CIFAR: the whole split normalised and resized; synthetic: its prototypes and noise bank),
else per batch (F.interpolate). `epoch_permutation` and `share_indices` split each
epoch's seeded global permutation into the workers' shares.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hybridps.errors import UserError
from hybridps.semantics import equal_step_shares

_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)


CACHE_BYTES = 512 * 2**20  # a resized copy of a data set is kept per resolution up to this size


def cache_fits(n_images: int, resolution: int) -> bool:
    return n_images * 3 * resolution * resolution * 4 <= CACHE_BYTES


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)


class SyntheticData:
    """Class-conditional Gaussian images: a fixed 8x8 prototype per class plus per-sample
    noise from a seeded bank, upsampled to the requested resolution. Learnable (the class
    means differ), deterministic per index, and cheap at any size."""

    base = 8

    def __init__(self, train_size: int, num_classes: int = 10, seed: int = 0, test_size: int = 2000,
                 noise: float = 1.5, bank: int = 4096):
        rng = np.random.default_rng([seed, 7001])
        self.num_classes = num_classes
        self.train_size = train_size
        self.test_size = test_size
        self.noise = noise
        self._protos = rng.standard_normal((num_classes, 3, self.base, self.base)).astype(np.float32)
        self._bank = rng.standard_normal((bank, 3, self.base, self.base)).astype(np.float32)
        self._labels = {"train": rng.integers(num_classes, size=train_size),
                        "test": rng.integers(num_classes, size=test_size)}
        self._offset = {"train": 0, "test": 1 + train_size}
        self._resized: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (resolution, protos, bank)

    def _parts(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The prototypes and the noise bank resized once per resolution (the latest
        kept): bilinear resizing is linear, so resizing a sample equals combining the
        resized parts. None when the bank would not fit in CACHE_BYTES."""
        if resolution == self.base or not cache_fits(len(self._bank), resolution):
            return None
        if self._resized is None or self._resized[0] != resolution:
            self._resized = (resolution, resize(torch.from_numpy(self._protos), resolution).numpy(),
                             resize(torch.from_numpy(self._bank), resolution).numpy())
        return self._resized[1], self._resized[2]

    def batch(self, indices: np.ndarray, resolution: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64) % len(self._labels[split])
        y = self._labels[split][idx]
        key = idx + self._offset[split]
        m = len(self._bank)
        parts = self._parts(resolution)
        protos, bank = parts if parts is not None else (self._protos, self._bank)
        noise = 0.6 * bank[key % m] + 0.8 * bank[(key * 7919 + 13) % m]
        x = torch.from_numpy(protos[y] + self.noise * noise)
        return (x if parts is not None else resize(x, resolution)), torch.from_numpy(y.astype(np.int64))


class _ArrayData:
    """Images held as uint8 NCHW arrays (CIFAR), normalised per channel on the fly."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int):
        self.num_classes = num_classes
        self._x = {"train": train_x, "test": test_x}
        self._y = {"train": train_y, "test": test_y}
        self.train_size = len(train_y)
        self.test_size = len(test_y)
        self._ready: dict[str, tuple[int, torch.Tensor]] = {}  # split -> (resolution, normalised resized set)

    def _normalise(self, x: np.ndarray, resolution: int) -> torch.Tensor:
        return resize(torch.from_numpy((x.astype(np.float32) / 255.0 - _CIFAR_MEAN) / _CIFAR_STD), resolution)

    def _prepared(self, split: str, resolution: int) -> torch.Tensor | None:
        """The split normalised and resized once per resolution (the latest kept, in
        chunks to bound the temporaries), when it fits in CACHE_BYTES; else None."""
        x = self._x[split]
        if not cache_fits(len(x), resolution):
            return None
        if split not in self._ready or self._ready[split][0] != resolution:
            self._ready.pop(split, None)
            out = torch.empty(len(x), 3, resolution, resolution)
            for lo in range(0, len(x), 4096):
                out[lo: lo + 4096] = self._normalise(x[lo: lo + 4096], resolution)
            self._ready[split] = (resolution, out)
        return self._ready[split][1]

    def batch(self, indices: np.ndarray, resolution: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64) % len(self._y[split])
        y = torch.from_numpy(self._y[split][idx].astype(np.int64))
        ready = self._prepared(split, resolution)
        if ready is not None:
            return ready[torch.from_numpy(idx)], y
        return self._normalise(self._x[split][idx], resolution), y


# ----------------------------------------------------------------------------- digits

DIGITS_TRAIN, DIGITS_VAL = 1437, 360


class DigitsData:
    """scikit-learn's `load_digits` (real 8x8 images that ship inside the wheel), split
    once, stratified and seeded (random_state=0), into 1,437 training and 360 validation
    images; normalised with the training split's mean and deviation; each resolution's
    resized copy is made once and kept (the whole set is a few MB)."""

    num_classes = 10
    base = 8

    def __init__(self):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = d.images.astype(np.float32) / 16.0
        tx, vx, ty, vy = train_test_split(x, d.target.astype(np.int64), test_size=DIGITS_VAL,
                                          stratify=d.target, random_state=0)
        mean, std = float(tx.mean()), float(tx.std())
        self._x = {s: torch.from_numpy(np.repeat(((a - mean) / std)[:, None], 3, axis=1).copy())
                   for s, a in (("train", tx), ("test", vx))}
        self._y = {"train": torch.from_numpy(ty), "test": torch.from_numpy(vy)}
        self.train_size, self.test_size = len(ty), len(vy)
        self._resized: dict[tuple[str, int], torch.Tensor] = {}

    def batch(self, indices: np.ndarray, resolution: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        key = (split, resolution)
        if key not in self._resized:
            self._resized[key] = resize(self._x[split], resolution).contiguous()
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64) % self._y[split].numel())
        return self._resized[key][idx], self._y[split][idx]


def _need_sklearn(name: str) -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError(f"data {name!r} needs scikit-learn (its bundled digits); install it: "
                        f"pip install scikit-learn, or pip install -e '.[runtime,test]'") from None


# ----------------------------------------------------------------------------- CIFAR


def _numpy_reconstruct():
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(mod)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy multiarray._reconstruct not found")


class _CifarUnpickler(pickle.Unpickler):
    """Allows exactly what the CIFAR python batches hold besides dicts, lists, bytes and
    ints: numpy arrays (ndarray, dtype and the array reconstructor), plus codecs.encode,
    which Python 3 uses for bytes in protocol-2 pickles. Everything else is
    refused, so a tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 protocol-2 pickles write bytes (re-pickled copies)
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def load_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        return _CifarUnpickler(f, encoding="bytes").load()


def _find_dir(root: Path, names: list[str], sub: str) -> Path:
    for cand in (root, root / sub):
        if all((cand / n).is_file() for n in names):
            return cand
    raise UserError(f"{root}: no CIFAR python batches ({', '.join(names)}) here or in {root / sub}; "
                    f"download the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html and pass --data-dir")


def load_cifar(kind: str, root: str | Path) -> _ArrayData:
    root = Path(root)
    if kind == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        d = _find_dir(root, train_files + ["test_batch"], "cifar-10-batches-py")
        label_key, test_files, classes = b"labels", ["test_batch"], 10
    else:
        train_files, test_files = ["train"], ["test"]
        d = _find_dir(root, train_files + test_files, "cifar-100-python")
        label_key, classes = b"fine_labels", 100

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in files:
            b = load_cifar_batch(d / name)
            xs.append(np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(b[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    (tx, ty), (vx, vy) = read(train_files), read(test_files)
    return _ArrayData(tx, ty, vx, vy, classes)


def _imagefolder_val(root: str | Path) -> Path:
    """DIR/val, the held-out split; evaluating on training images instead would report
    training accuracy as test accuracy, so its absence is an error."""
    val = Path(root) / "val"
    if not val.is_dir():
        raise UserError(f"data 'imagefolder:{root}': no validation split {val}/ (one folder per class, like "
                        f"train/); add it, the runtime evaluates on it")
    return val


class _ImageFolderData:
    def __init__(self, root: str, base_resolution: int = 64):
        try:
            import torchvision
        except ImportError:
            raise UserError("data 'imagefolder:DIR' needs torchvision; install it (pip install torchvision)") from None
        t = torchvision.transforms
        tf = t.Compose([t.Resize((base_resolution, base_resolution)), t.ToTensor()])
        train = Path(root) / "train"
        self._ds = {"train": torchvision.datasets.ImageFolder(str(train if train.is_dir() else root), tf)}
        self._ds["test"] = torchvision.datasets.ImageFolder(str(_imagefolder_val(root)), tf)
        self.num_classes = len(self._ds["train"].classes)
        self.train_size = len(self._ds["train"])
        self.test_size = len(self._ds["test"])

    def batch(self, indices: np.ndarray, resolution: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        ds = self._ds[split]
        items = [ds[int(i) % len(ds)] for i in indices]
        x = torch.stack([it[0] for it in items])
        return resize(x, resolution), torch.tensor([it[1] for it in items], dtype=torch.int64)


def load_dataset(name: str, samples: int, seed: int = 0, data_dir: str | None = None):
    """The dataset a job's `data.name` names (`samples` sizes the synthetic one)."""
    if name == "synthetic" or name.startswith("synthetic:"):
        classes = int(name.split(":", 1)[1]) if ":" in name else 10
        return SyntheticData(samples, classes, seed)
    if name in ("cifar10", "cifar100") or name.startswith(("cifar10:", "cifar100:")):
        kind, _, path = name.partition(":")
        root = path or data_dir
        if not root:
            raise UserError(f"data {kind!r} needs a directory: pass --data-dir DIR (or name it {kind}:DIR)")
        return load_cifar(kind, root)
    if name.startswith("imagefolder:"):
        return _ImageFolderData(name.split(":", 1)[1])
    if name == "digits":
        _need_sklearn(name)
        return DigitsData()
    raise UserError(f"unknown data {name!r}; use synthetic[:CLASSES], digits, cifar10, cifar100 or imagefolder:DIR "
                    f"(set job data.name or pass --data)")


def check_samples(data, name: str, samples: int, subset: bool = False) -> None:
    """A job's `data.samples` (one epoch) must be the training set's size: a smaller value
    would silently train on a prefix, a larger one repeat samples. `subset = true` allows
    the first `samples` of a larger set. Synthetic data is generated with `samples`."""
    if isinstance(data, SyntheticData):
        return
    n = data.train_size
    if subset and samples > n:
        raise UserError(f"job data.samples = {samples} but data {name!r} has only {n} training samples "
                        f"(data.subset = true takes a part of them); set data.samples <= {n}")
    if not subset and samples != n:
        raise UserError(f"job data.samples = {samples} but data {name!r} has {n} training samples; set "
                        f"data.samples = {n}, or add subset = true under [data] to train on the first {samples}")


def synthetic_batch(batch: int, resolution: int, num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic batch at `resolution` (for profiling iteration times)."""
    data = SyntheticData(max(batch, 1), num_classes, seed)
    return data.batch(np.arange(batch), resolution)


def epoch_permutation(samples: int, epoch: int, seed: int) -> np.ndarray:
    """The seeded global order of one epoch (the same in every process)."""
    return np.random.default_rng([seed, 104729, epoch]).permutation(samples)


def share_indices(perm: np.ndarray, shares: list[int], position: int) -> np.ndarray:
    """The slice of `perm` that the worker at `position` (of `shares`, in plan order) owns;
    indices wrap around when the shares sum to more than the permutation (rounding)."""
    start = sum(shares[:position])
    return perm[np.arange(start, start + shares[position]) % len(perm)]


def effective_shares(shares: list[int], lost: set[int], positions: list[int],
                     batches: list[int] | None = None, resplit: bool = False) -> list[int]:
    """The plan's shares re-split over the workers still alive (the lost ones get 0), so
    an epoch still covers the whole permutation after a worker loss. With `batches`
    (bsp) every live worker keeps the same number of steps per epoch
    (hybridps.semantics.equal_step_shares). `resplit`: `batches` are a policy's
    rebalance, so the shares are re-split even with every worker alive."""
    total = sum(shares)
    alive = [i for i, pos in enumerate(positions) if pos not in lost]
    if not alive:
        return [0] * len(shares)
    if len(alive) == len(shares) and not resplit:
        return list(shares)
    if batches is None:
        alive_total = sum(shares[i] for i in alive)
        return [max(1, round(shares[i] * total / alive_total)) if i in alive else 0 for i in range(len(shares))]
    split = iter(equal_step_shares(total, [batches[i] for i in alive]))
    return [next(split) if i in alive else 0 for i in range(len(shares))]


def check_data(name: str, data_dir: str | None = None) -> None:
    """Raise UserError for a data name that cannot load, without loading it (the launcher
    checks once, before starting any process)."""
    if name == "synthetic" or name.startswith("synthetic:"):
        if ":" in name and not name.split(":", 1)[1].isdigit():
            raise UserError(f"data {name!r}: expected synthetic:CLASSES, e.g. synthetic:100")
        return
    if name in ("cifar10", "cifar100") or name.startswith(("cifar10:", "cifar100:")):
        kind, _, path = name.partition(":")
        root = path or data_dir
        if not root:
            raise UserError(f"data {kind!r} needs a directory: pass --data-dir DIR (or name it {kind}:DIR)")
        if not Path(root).is_dir():
            raise UserError(f"data {kind!r}: {root} is not a directory")
        return
    if name.startswith("imagefolder:"):
        if not Path(name.split(":", 1)[1]).is_dir():
            raise UserError(f"data {name!r}: no such directory")
        _imagefolder_val(name.split(":", 1)[1])
        return
    if name == "digits":
        _need_sklearn(name)
        return
    raise UserError(f"unknown data {name!r}; use synthetic[:CLASSES], digits, cifar10, cifar100 or imagefolder:DIR "
                    f"(set job data.name or pass --data)")

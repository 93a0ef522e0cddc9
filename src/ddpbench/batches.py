"""Training-time loading: each rank's share of the samples per epoch, and batches gathered from
the memory-mapped uint8 tensor and normalised on the device as whole batches (or, for
comparison, the study's per-sample path); ``TrainBatches`` feeds the engine from either."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ddpbench.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from ddpbench.fetch import DataError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ddpbench.distributed import Dist
    from ddpbench.options import RunOptions


@dataclass(frozen=True)
class Shard:
    """DistributedSampler(shuffle=True, drop_last=True) semantics, as index tensors.

    Each epoch a permutation seeded by (seed + epoch) is cut to a multiple of the world size
    and dealt round-robin, so every sample is used at most once per epoch across ranks and
    every rank gets the same number of samples (hence steps).
    """

    num_items: int
    world_size: int
    rank: int
    seed: int

    @property
    def num_samples(self) -> int:
        return self.num_items // self.world_size

    def indices(self, epoch: int) -> torch.Tensor:
        if self.num_samples == 0:
            raise DataError(f"{self.num_items} samples cannot be split across {self.world_size} ranks")
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.num_items, generator=generator)
        return perm[: self.num_samples * self.world_size][self.rank :: self.world_size]

    def steps(self, batch_size: int) -> int:
        """Optimizer steps per epoch at this per-rank batch size (the last batch may be short)."""
        return math.ceil(self.num_samples / batch_size)


def eval_indices(num_items: int, world_size: int, rank: int) -> torch.Tensor:
    """Round-robin split of the test set: every sample exactly once, no padding."""
    return torch.arange(rank, num_items, world_size)


class BatchPipeline:
    """Gathers a batch from the resident uint8 tensor and turns it into normalised floats on
    the device; optional random crop (pad 4) and horizontal flip act on the whole batch."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        *,
        augment: str = "none",
        channels_last: bool = False,
        seed: int = 0,
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
    ):
        self.images, self.labels, self.device = images, labels, device
        self.augment, self.channels_last = augment, channels_last
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # ToTensor (x / 255) then Normalize ((x - mean) / std), folded into one multiply-add.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, index: torch.Tensor, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at ``index`` as normalised float images and labels on the device."""
        index = index.to(self.images.device, non_blocking=True)
        x = self.images.index_select(0, index).to(self.device, non_blocking=True)
        y = self.labels.index_select(0, index.to(self.labels.device)).to(self.device, non_blocking=True)
        if train and self.augment == "flip_crop":
            x = self._flip_crop(x)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(x.shape, dtype=torch.float32, device=self.device, memory_format=memory_format)
        torch.addcmul(self.shift, x, self.scale, out=out)
        return out, y

    def _flip_crop(self, x: torch.Tensor, pad: int = 4) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=self.generator)
        dx = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=self.generator)
        rows = (torch.arange(h, device=x.device).view(1, 1, h, 1) + dy).expand(n, 3, h, w)
        cols = (torch.arange(w, device=x.device).view(1, 1, 1, w) + dx).expand(n, 3, h, w)
        flip = torch.rand((n, 1, 1, 1), device=x.device, generator=self.generator) < 0.5
        cols = torch.where(flip, (w - 1 + 2 * dx) - cols, cols)  # mirror inside the crop window
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1).expand(n, 3, h, w)
        chans = torch.arange(3, device=x.device).view(1, 3, 1, 1).expand(n, 3, h, w)
        return padded[batch, chans, rows, cols]


class PerSampleDataset(torch.utils.data.Dataset):
    """The study's classic path: one PIL image per sample, ToTensor + Normalize per sample."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
    ):
        from torchvision import transforms

        self.images, self.labels = images.numpy(), labels.numpy()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(self.images[i].transpose(1, 2, 0)))
        return self.transform(image), int(self.labels[i])


class TrainBatches:
    """Per-epoch iterator of (x, y) device batches for this rank, from either loader."""

    def __init__(
        self,
        options: RunOptions,
        d: Dist,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        channels_last: bool,
    ):
        if options.max_train_samples:
            images, labels = images[: options.max_train_samples], labels[: options.max_train_samples]
        self.batch, self.loader, self.device = batch_size, options.loader, d.device
        self.channels_last = channels_last
        self.shard = Shard(len(labels), d.world_size, d.rank, options.seed)
        if self.shard.num_samples == 0:
            raise ValueError(
                f"{len(labels)} training samples cannot be split across {d.world_size} ranks; "
                "raise max_train_samples or use a smaller world size"
            )
        self.steps = self.shard.steps(self.batch)
        self.samples_per_epoch = self.shard.num_samples * d.world_size
        if options.loader == "resident":
            if d.device.type == "cuda":
                images, labels = images.to(d.device), labels.to(d.device)
            self.pipeline = BatchPipeline(
                images,
                labels,
                d.device,
                augment=options.augment,
                channels_last=self.channels_last,
                seed=options.seed * 1000 + d.rank,
            )
        else:
            if options.augment != "none":
                raise ValueError("augment is implemented for loader: resident only; set augment: none")
            dataset = PerSampleDataset(images, labels)
            self.sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=options.seed, drop_last=True
            )
            self.dataloader = torch.utils.data.DataLoader(dataset, batch_size=self.batch, sampler=self.sampler)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader == "resident":
            # One copy of the epoch's order to the device; per-batch copies would sync with it.
            index = self.shard.indices(epoch).to(self.device)
            for start in range(0, len(index), self.batch):
                yield self.pipeline(index[start : start + self.batch])
        else:
            self.sampler.set_epoch(epoch)
            memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
            for x, y in self.dataloader:
                yield x.to(self.device, memory_format=memory_format, non_blocking=True), y.to(self.device)

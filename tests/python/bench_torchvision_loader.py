"""torchvision's side of scripts/bench_loader.sh: ImageFolder + DataLoader with
RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize (ImageNet), batch 64,
shuffled; the clock starts when the first batch arrives, as in examples/bench_loader.rs.

Usage: python3 bench_torchvision_loader.py <image-folder split dir> <workers> [epochs]
"""

import sys
import time

import torch
from torchvision import datasets, transforms


def main(root: str, workers: int, epochs: int) -> None:
    torch.set_num_threads(1)
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(root, tf), batch_size=64, shuffle=True, num_workers=workers
    )
    start, images, checksum = None, 0, 0.0
    for _ in range(epochs):
        for x, _ in loader:
            checksum += float(x[0, 0, 0, 0])
            if start is None:
                start = time.perf_counter()
            else:
                images += x.shape[0]
    secs = time.perf_counter() - start
    print(f"images={images} seconds={secs:.3f} images_per_s={images / secs:.1f} checksum={checksum:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)

"""The PyTorch + torchvision side of scripts/bench/e2e.sh (issue 7): one epoch of training
from a JPEG image folder, as a plain PyTorch script does it.

torchvision's ImageFolder + DataLoader (shuffled, `--workers` worker processes) with
RandomResizedCrop(224), RandomHorizontalFlip, ToTensor and Normalize (ImageNet), then
torchvision's resnet18 or the twin of hondo's small CNN, cross-entropy, torch.optim.SGD
(momentum 0.9, weight decay 5e-4, nesterov), `zero_grad()` (set to none), PyTorch's defaults
otherwise (fp32, contiguous NCHW unless `--channels-last`). The clock runs from just before
the first batch is requested (worker start-up included) to the end of the last step, as
hondo's `images_per_sec` does. Prints one JSON line.

Usage: PYTHONPATH=<repo>/.pydeps python3 scripts/bench/train_folder.py <split dir>
       [--arch small_cnn|resnet18] [--batch 64] [--workers 2] [--threads 2] [--channels-last]
"""

import argparse
import json
import time

import torch
import torchvision
from torchvision import datasets, transforms

from train_step import small_cnn, status_mib


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    data = datasets.ImageFolder(a.root, tf)
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=True, num_workers=a.workers)
    classes = len(data.classes)
    model = small_cnn(classes) if a.arch == "small_cnn" else getattr(torchvision.models, a.arch)(num_classes=classes)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    images, loss = 0, 0.0
    t0 = time.perf_counter()
    for x, y in loader:
        x = x.contiguous(memory_format=fmt)
        opt.zero_grad()
        l = torch.nn.functional.cross_entropy(model(x), y)
        l.backward()
        opt.step()
        loss = l.item()
        images += x.shape[0]
    secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "arch": a.arch,
                "workers": a.workers,
                "channels_last": a.channels_last,
                "images": images,
                "seconds": round(secs, 3),
                "images_per_sec": round(images / secs, 2),
                "peak_rss_mib": round(status_mib("VmHWM"), 1),
                "loss": round(loss, 4),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Training configuration: every hyper-parameter in one frozen, typed record, saved with each run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cdul_rt.errors import CdulError

ARCHS = ("tiny-resnet", "resnet18", "resnet34", "resnet50", "resnet101")
LOSSES = ("bernoulli", "categorical")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fields that may change between a run and its --resume: they do not change the numbers the run computes
# (epochs only moves the end point; the schedule of epoch k does not depend on the total; the initial weights are
# overwritten by the checkpoint, so the --weights file need not exist any more).
# device: a run may move between machines; bit-equality with an uninterrupted run holds on the same device.
RESUMABLE_FIELDS = frozenset({"epochs", "workers", "threads", "progress", "weights", "device", "eval_every"})
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Gradient-alignment training settings (DESIGN.md 1.2). Defaults follow the paper where it states them.

    Attributes:
        arch: torchvision ResNet; the paper uses resnet101 (ImageNet pre-trained). "tiny-resnet" is a ResNet-10 at
            half width (1.2 M parameters) for the synthetic world on a CPU (``train.model.tiny_resnet``).
        image_size: the whole image is resized (not cropped) to image_size x image_size.
        epochs: total epochs (paper: 20).
        batch_size: images per network step (paper: 16 for COCO/NUS, 8 for VOC).
        lr: Adam learning rate (paper: 1e-5, end-to-end).
        weight_decay: Adam weight decay.
        warmup_epochs: epochs 1..warmup train the network only, labels fixed (paper: 3).
        eta: step size of the latent update (eq. 7). The gradient is per image (dL/dy_u = logit(y_u) - z_p), so
            eta does not depend on batch size, and eta * psi(y_u) is the fraction of the gap between the latent
            logit and the network's logit closed per update (each label is updated once per epoch). The default
            0.1 closes at most 14% per epoch (psi peaks at ~1.38): on the synthetic world (800 scenes, resnet18,
            tiny-CLIP labels at 56.5 mAP) eta 0.5 made the labels copy a still-weak network within a few epochs
            (labels 59.8, classifier 57.4 held-out vs 59.0 without alignment), eta 0.1 refined them to 61.6 with
            the classifier at 60.0.
        sigma: width of the Gaussian psi around 0.5 (supplement 6.2). 0.25 keeps labels within ~0.1 of 0 or 1
            nearly frozen (psi(0.05) ~ 0.1) while unsure ones move fastest.
        c1: scale of psi; with sigma = 0.25, psi(0.5) = 1.38 * c1.
        loss: "bernoulli" (per-class KL, default) or "categorical" (KL of softmaxes, option only).
        use_psi: False is the "no Gaussian" ablation (psi == 1).
        hard_labels: ablation: y_u = [S_final >= hard_threshold] instead of soft scores.
        hard_threshold: threshold for hard_labels.
        alignment: False trains on the fixed initial pseudo labels for all epochs (the no-alignment baseline).
        hflip: random horizontal flips (drawn from the seeded epoch generator, so runs stay deterministic).
        seed: seeds initialisation, shuffling and flips.
        weights: "imagenet-cache", a file path, or "none" (random init); resolved before the run starts.
        labels_sha256: hash of the pseudo-label file, so --resume refuses a different one.
        classes: the class names, in label-file order.
        precision: "bf16" runs forward/backward under bf16 autocast (about 2-3x faster on CPUs with AMX and on
            GPUs); the loss, the latent logits and the optimizer state stay fp32.
        device: "cpu", "cuda" or "cuda:N" for the network (the latent logits stay on the CPU).
        eval_every: with ground truth, evaluate the predictions every N epochs (and at the last); each evaluation
            is one inference pass over the images. The pseudo-label mAP is computed every epoch (it is free).
        workers, threads, progress: execution only; they do not change results.
    """

    arch: str = "resnet101"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_epochs: int = 3
    eta: float = 0.1
    sigma: float = 0.25
    c1: float = 1.0
    loss: str = "bernoulli"
    use_psi: bool = True
    hard_labels: bool = False
    hard_threshold: float = 0.5
    alignment: bool = True
    hflip: bool = True
    seed: int = 0
    weights: str = "none"
    labels_sha256: str = ""
    classes: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"
    device: str = "cpu"
    eval_every: int = 1
    workers: int = 0
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.arch in ARCHS, f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHS)}"),
            (self.loss in LOSSES, f"unknown --loss {self.loss!r}; choose one of {', '.join(LOSSES)}"),
            (self.precision in PRECISIONS, f"unknown --precision {self.precision!r}; choose fp32 or bf16"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.image_size >= 16, "--image-size must be at least 16"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, f"--lr must be a positive learning rate (got {self.lr:g})"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.eta >= 0, "--eta must be >= 0"),
            (self.sigma > 0, "--sigma must be positive"),
            (0.0 < self.hard_threshold < 1.0, "--hard-threshold must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise CdulError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("classes", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def aligns_at(self, epoch: int) -> bool:
        """Whether pseudo labels are updated during 1-based ``epoch`` (after warm-up, alignment on)."""
        return self.alignment and epoch > self.warmup_epochs


def config_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Fields (other than execution-only ones) whose values differ, as 'name: saved -> current' lines."""
    out = []
    a, b = saved.to_dict(), current.to_dict()
    for key in a:
        if key not in RESUMABLE_FIELDS and a[key] != b.get(key):
            out.append(f"{key}: {a[key]!r} -> {b.get(key)!r}")
    return out

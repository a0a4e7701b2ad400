"""PyTorch references of kcl's seven training steps, for `torch_steps.py`.

Each class is what a PyTorch user would write for the method, following
the authors' code where there is one (MoCo, SwAV, SimSiam, PIC) and kcl's
METHODS.md otherwise, with kcl's default hyperparameters. Module names
follow kcl's layers (torchvision names in the encoder, `dense_i` / `bn_i`
in the heads), so `torch_steps.py --check` can copy kcl's initial weights
into them and compare the first-step losses.

This module imports only torch (never TensorFlow), so a torch child
process measures torch alone. torchvision is not installed here, so the
ResNet is written out; it has torchvision's module layout and init.

    step = build("byol", channels=1, width=0.25)
    optimizer = torch.optim.SGD(step.param_groups(), lr=0.01, momentum=0.9)
    loss = step.loss(views)          # views: list of NCHW float tensors
    loss.backward(); optimizer.step(); step.after_step()
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

# kcl.backbones.IMAGENET_MEAN / IMAGENET_STD, repeated so that this module
# never imports TensorFlow.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stage_widths(width):
    """Channel counts of the stem and the four stages, rounded as kcl does."""
    return round(64 * width), [round(64 * width * 2**s) for s in range(4)]


# ------------------------------------------------------------------ networks


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Cifar(nn.Module):
    """kcl's `resnet18_cifar`: 3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] basic blocks."""

    def __init__(self, channels=3, width=1.0):
        super().__init__()
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean = (sum(IMAGENET_MEAN) / 3,) * channels
            std = (sum(IMAGENET_STD) / 3,) * channels
        # Non-persistent: constants, like kcl's Normalization layer.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        stem, planes = stage_widths(width)
        self.conv1 = nn.Conv2d(channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        inplanes = stem
        for stage, p in enumerate(planes):
            blocks = []
            for index in range(2):
                blocks.append(BasicBlock(inplanes, p, 2 if stage > 0 and index == 0 else 1))
                inplanes = p
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.feature_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # as torchvision and kcl
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class MLPHead(nn.Module):
    """kcl's `MLPHead`: hidden `Linear-BN-ReLU` (no bias before BN), output `Linear[-BN]`."""

    def __init__(self, in_dim, hidden_dims, out_dim, batch_norm=True, output_bn=False, output_bn_affine=True):
        super().__init__()
        self.num_hidden, self.batch_norm = len(hidden_dims), batch_norm
        for i, dim in enumerate(hidden_dims):
            setattr(self, f"dense_{i}", nn.Linear(in_dim, dim, bias=not batch_norm))
            if batch_norm:
                setattr(self, f"bn_{i}", nn.BatchNorm1d(dim))
            in_dim = dim
        n = self.num_hidden
        setattr(self, f"dense_{n}", nn.Linear(in_dim, out_dim, bias=not output_bn))
        self.out_norm = nn.BatchNorm1d(out_dim, affine=output_bn_affine) if output_bn else None

    def forward(self, x):
        for i in range(self.num_hidden):
            x = getattr(self, f"dense_{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn_{i}")(x)
            x = F.relu(x)
        x = getattr(self, f"dense_{self.num_hidden}")(x)
        return x if self.out_norm is None else self.out_norm(x)


def momentum_copy(module):
    """A frozen copy moved only by `ema_update` (BN still uses batch statistics in train mode)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target, online, m):
    """`theta_t <- m theta_t + (1 - m) theta_o` for the parameters (BN statistics stay the target's own)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(m).add_(o, alpha=1.0 - m)


def encode_groups(encoder, views):
    """Encoder features of all views, consecutive views of one size as one batch (SwAV's code)."""
    features, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
            end += 1
        features.append(encoder(torch.cat(views[start:end])))
        start = end
    return torch.cat(features)


# ------------------------------------------------------------------ methods


class Method(nn.Module):
    """One method's step: `loss(views, index)`, then the optimizer, then `after_step()`."""

    def __init__(self, channels, width):
        super().__init__()
        self.encoder = ResNet18Cifar(channels, width)
        self.feature_dim = self.encoder.feature_dim

    def loss(self, views, index=None):
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self):
        """Updates without gradient: momentum encoders, queues."""

    def reset_targets(self):
        """Re-copies momentum networks from the online ones (after weights are loaded)."""

    def param_groups(self):
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]


class SimCLR(Method):
    """NT-Xent over the 2B x 2B cosine similarities, both views as one encoder batch."""

    def __init__(self, channels, width, temperature=0.1):
        super().__init__(channels, width)
        self.projector = MLPHead(self.feature_dim, (2048,), 128)
        self.temperature = temperature

    def loss(self, views, index=None):
        b = views[0].shape[0]
        z = F.normalize(self.projector(self.encoder(torch.cat(views))), dim=1)
        logits = (z @ z.t()) / self.temperature
        logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool), -1e9)
        labels = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
        return F.cross_entropy(logits, labels)


class MoCoV2(Method):
    """MoCo v2 (moco/builder.py): query encoder, momentum key encoder, a queue of keys."""

    def __init__(self, channels, width, queue_size=65536, temperature=0.2, momentum=0.999):
        super().__init__(channels, width)
        self.projector = MLPHead(self.feature_dim, (2048,), 128, batch_norm=False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, 128), dim=1))
        self.pointer = 0
        self.temperature, self.momentum = temperature, momentum
        self.reset_targets()

    def reset_targets(self):
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)

    def loss(self, views, index=None):
        q = F.normalize(self.projector(self.encoder(views[0])), dim=1)
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_encoder(views[1])), dim=1)
        positive = (q * k).sum(1, keepdim=True)
        logits = torch.cat([positive, q @ self.queue.t()], dim=1) / self.temperature
        self._keys = k
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))

    @torch.no_grad()
    def after_step(self):
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        b = self._keys.shape[0]
        self.queue[self.pointer : self.pointer + b] = self._keys
        self.pointer = (self.pointer + b) % self.queue.shape[0]


class BYOL(Method):
    """BYOL: online encoder, projector, predictor; EMA target; 2 - 2 cos, both directions."""

    def __init__(self, channels, width, momentum=0.996):
        super().__init__(channels, width)
        self.projector = MLPHead(self.feature_dim, (4096,), 256)
        self.predictor = MLPHead(256, (4096,), 256)
        self.momentum = momentum
        self.reset_targets()

    def reset_targets(self):
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)

    def loss(self, views, index=None):
        predictions, targets = [], []
        for view in views:  # each view its own batch, as kcl and the paper's code
            predictions.append(self.predictor(self.projector(self.encoder(view))))
            with torch.no_grad():
                targets.append(self.target_projector(self.target_encoder(view)))

        def regression(p, z):
            return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)

        p1, p2 = predictions
        z1, z2 = targets
        return (regression(p1, z2) + regression(p2, z1)).mean()

    @torch.no_grad()
    def after_step(self):
        ema_update(self.target_encoder, self.encoder, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)


class SimSiam(Method):
    """SimSiam (simsiam/builder.py): 3-layer projector with output BN, bottleneck predictor."""

    def __init__(self, channels, width):
        super().__init__(channels, width)
        self.projector = MLPHead(
            self.feature_dim, (2048, 2048), 2048, output_bn=True, output_bn_affine=False
        )
        self.predictor = MLPHead(2048, (512,), 2048)

    def loss(self, views, index=None):
        z1, z2 = (self.projector(self.encoder(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)

        def d(p, z):
            return -F.cosine_similarity(p, z.detach(), dim=-1)

        return (0.5 * (d(p1, z2) + d(p2, z1))).mean()


class NNCLR(Method):
    """NNCLR: the nearest support-set neighbour of z as the positive of the other view's prediction."""

    def __init__(self, channels, width, queue_size=98304, temperature=0.1):
        super().__init__(channels, width)
        self.projector = MLPHead(self.feature_dim, (2048, 2048), 256, output_bn=True)
        self.predictor = MLPHead(256, (4096,), 256)
        self.register_buffer("support", F.normalize(torch.randn(queue_size, 256), dim=1))
        self.pointer = 0
        self.temperature = temperature

    def loss(self, views, index=None):
        b = views[0].shape[0]
        z = self.projector(self.encoder(torch.cat(views)))
        p = F.normalize(self.predictor(z), dim=1)
        with torch.no_grad():
            zn = F.normalize(z, dim=1)
            nn_ = self.support[(zn @ self.support.t()).argmax(dim=1)]
        nn1, nn2 = nn_[:b], nn_[b:]
        p1, p2 = p[:b], p[b:]
        labels = torch.arange(b)

        def both(neighbours, predictions):  # NN_i picks p_i among all p, and p_i picks NN_i
            logits = neighbours @ predictions.t() / self.temperature
            return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)

        self._support_keys = zn[:b]
        return (both(nn1, p2) + both(nn2, p1)) / 4

    @torch.no_grad()
    def after_step(self):
        b = self._support_keys.shape[0]
        self.support[self.pointer : self.pointer + b] = self._support_keys
        self.pointer = (self.pointer + b) % self.support.shape[0]


class SwAV(Method):
    """SwAV (swav/main_swav.py): multi-crop, prototypes, Sinkhorn codes, swapped prediction."""

    def __init__(
        self, channels, width, num_prototypes=3000, temperature=0.1, epsilon=0.05,
        iterations=3, num_large_crops=2, freeze_prototypes_steps=313,
    ):
        super().__init__(channels, width)
        self.projector = MLPHead(self.feature_dim, (2048,), 128)
        self.prototypes = nn.Linear(128, num_prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations
        self.num_large_crops, self.freeze_prototypes_steps = num_large_crops, freeze_prototypes_steps
        self.steps = 0

    @torch.no_grad()
    def sinkhorn(self, scores):
        q = torch.exp(scores / self.epsilon).t()  # K x B
        k, b = q.shape
        q /= q.sum()
        for _ in range(self.iterations):
            q /= q.sum(dim=1, keepdim=True)
            q /= k
            q /= q.sum(dim=0, keepdim=True)
            q /= b
        return (q * b).t()

    def loss(self, views, index=None):
        with torch.no_grad():  # prototypes back on the sphere before the forward pass
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        b = views[0].shape[0]
        z = F.normalize(self.projector(encode_groups(self.encoder, views)), dim=1)
        scores = self.prototypes(z)
        crops = len(views)
        total = 0.0
        for s in range(self.num_large_crops):
            q = self.sinkhorn(scores[s * b : (s + 1) * b].detach())
            sub = 0.0
            for v in range(crops):
                if v != s:
                    log_p = F.log_softmax(scores[v * b : (v + 1) * b] / self.temperature, dim=1)
                    sub -= torch.mean(torch.sum(q * log_p, dim=1))
            total += sub / (crops - 1)
        return total / self.num_large_crops

    def before_optimizer(self):
        """SwAV's code: no update of the prototypes during the first steps."""
        if self.steps < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def after_step(self):
        self.steps += 1


class PIC(Method):
    """PIC: every image a class of a cosine classifier W [N, D], trained by SGD with weight decay."""

    def __init__(self, channels, width, num_instances, temperature=0.2, weight_decay=1e-4):
        super().__init__(channels, width)
        self.projector = MLPHead(self.feature_dim, (2048,), 128, batch_norm=False)
        self.instance_weights = nn.Parameter(torch.randn(num_instances, 128) * 0.01)
        self.temperature, self.weight_decay = temperature, weight_decay

    def loss(self, views, index=None):
        b = views[0].shape[0]
        z = F.normalize(self.projector(encode_groups(self.encoder, views)), dim=1)
        w = F.normalize(self.instance_weights, dim=1)
        total = 0.0
        for crop in range(len(views)):  # small crops do not train W
            rows = w if crop == 0 else w.detach()
            logits = z[crop * b : (crop + 1) * b] @ rows.t() / self.temperature
            total = total + F.cross_entropy(logits, index)
        return total / len(views)

    def param_groups(self):
        others = [p for n, p in self.named_parameters() if n != "instance_weights"]
        return [{"params": others}, {"params": [self.instance_weights], "weight_decay": self.weight_decay}]


METHODS = {
    "simclr": SimCLR, "mocov2": MoCoV2, "byol": BYOL, "simsiam": SimSiam,
    "nnclr": NNCLR, "swav": SwAV, "pic": PIC,
}


def build(method, channels, width, num_instances=None):
    """The torch step of `method` (a name of `METHODS`)."""
    if method == "pic":
        return PIC(channels, width, num_instances)
    return METHODS[method](channels, width)


def train_step(step, optimizer, views, index=None, autocast=None):
    """One training step; returns the loss (detached).

    `autocast`: a dtype (`torch.bfloat16`) runs the forward pass under
    `torch.autocast("cpu", dtype)`, PyTorch's mixed precision: weights stay
    float32, matmuls and convolutions compute in the dtype.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = step.loss(views, index)
    loss.backward()
    if hasattr(step, "before_optimizer"):
        step.before_optimizer()
    optimizer.step()
    step.after_step()
    return loss.detach()

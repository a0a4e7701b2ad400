"""ResNet encoders with torchvision's exact layout and padding.

Every backbone maps float images in `[0, 1]`, channels last (`[N, H, W, C]`
with `C` 1 or 3), to globally average-pooled features `[N, F]`: `F = 512 *
width` for basic blocks (ResNet-18/34) and `2048 * width` for bottlenecks
(ResNet-50). There is no classifier: these are the encoders that the methods
in `kcl.methods` train and that downstream users keep.

Two properties make converted PyTorch checkpoints give the same numbers:

- Layer for layer, the model is torchvision's `ResNet` without `fc`. Every
  Keras weight corresponds to one `state_dict` entry, and the layer names
  spell the torchvision key with `_` for `.` (`layer1.0.downsample.0` is the
  Keras layer `layer1_0_downsample_0`); `torchvision_names` gives the map.
- Padding is PyTorch's: symmetric zero padding of `kernel_size // 2`.
  Stride-1 convs use Keras' `padding="same"`, which is exactly that for odd
  kernels. Strided convs and the max-pool get a `ZeroPadding2D` layer and
  `padding="valid"`, because Keras' `"same"` with stride 2 puts the extra
  row and column at the bottom and right only, which would shift every
  strided feature map by half a pixel relative to PyTorch.

`get("resnet18_cifar", width=0.25)` builds a registered backbone by name;
`names()` lists the registered names.

References:
    - [He et al., 2015. Deep Residual Learning for Image Recognition](
      https://arxiv.org/abs/1512.03385)
"""

import numbers

import keras
from keras import layers as L

from kcl import layers
from kcl.checks import did_you_mean

# Per-channel statistics of ImageNet, the convention of torchvision models
# and of every published self-supervised checkpoint. A one-channel input
# uses their averages, so a grey image standardises like its RGB copy would
# on average.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BLOCKS = ("basic", "bottleneck")
_STEMS = ("imagenet", "cifar")
# Output channels of a block per unit of stage width.
_EXPANSION = {"basic": 1, "bottleneck": 4}
_CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}

# torchvision initialises every conv with He init over fan-out and every BN
# with gamma = 1, beta = 0; models trained from scratch here start alike.
# A config rather than an instance: each conv deserialises its own
# initializer, where one shared unseeded instance would give every conv of
# the same shape the same kernel.
_CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}

# Architecture of each registered name. The only list of backbones: `get`,
# `names` and every error message read it.
_ARCHS = {
    "resnet18": {"block": "basic", "layers": (2, 2, 2, 2)},
    "resnet34": {"block": "basic", "layers": (3, 4, 6, 3)},
    "resnet50": {"block": "bottleneck", "layers": (3, 4, 6, 3)},
}
_REGISTRY = {
    **{name: {**arch, "stem": "imagenet"} for name, arch in _ARCHS.items()},
    **{f"{name}_cifar": {**arch, "stem": "cifar"} for name, arch in _ARCHS.items()},
}


def names():
    """Sorted names of the registered backbones, e.g. `"resnet18_cifar"`."""
    return sorted(_REGISTRY)


def get(name, /, **kwargs):
    """Builds a registered backbone by name.

    `resnet18`, `resnet34` and `resnet50` use the ImageNet stem (7x7 stride-2
    conv and max-pool, total stride 32); the `_cifar` variants use the 3x3
    stride-1 stem without max-pool (total stride 8) that SimCLR and most
    CIFAR-scale work use for small images.

    Args:
        name: string, one of `names()`.
        **kwargs: forwarded to `ResNet` (`input_shape`, `width`,
            `stem_stride`, `mean`, `std`, `synchronized_bn`,
            `zero_init_residual`, `name`). The
            architecture arguments `block`, `layers` and `stem` are fixed by
            `name`.

    Returns:
        A `keras.Model` named after `name` unless `name=` is passed in
        `kwargs`.

    Example:

    >>> encoder = get("resnet18_cifar", input_shape=(32, 32, 3), width=0.25)
    >>> encoder(np.zeros((2, 32, 32, 3))).shape
    TensorShape([2, 128])
    """
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY)
        raise ValueError(
            f"Unknown backbone. Known names: {', '.join(names())}.{hint} "
            f"Received: name={name!r}"
        )
    fixed = sorted(set(kwargs) & {"block", "layers", "stem"})
    if fixed:
        raise ValueError(
            f"The backbone {name!r} fixes block, layers and stem; call "
            f"`ResNet` directly to change them. Received: {fixed[0]}="
            f"{kwargs[fixed[0]]!r}"
        )
    kwargs.setdefault("name", name)
    return ResNet(**_REGISTRY[name], **kwargs)


def ResNet(
    block,
    layers,
    stem="imagenet",
    width=1.0,
    stem_stride=1,
    input_shape=(None, None, 3),
    mean=None,
    std=None,
    synchronized_bn=False,
    zero_init_residual=False,
    name=None,
):
    """Builds a ResNet encoder from images in `[0, 1]` to pooled features.

    The network is torchvision's `ResNet` without `fc`: a stem, four stages
    of residual blocks whose widths are `64, 128, 256, 512` times `width`
    (times 4 at the output of bottleneck blocks), stride 2 at the first
    block of stages 2 to 4, and global average pooling. Bottleneck blocks
    put the stride on their 3x3 conv ("ResNet v1.5", as torchvision and all
    published self-supervised ResNet-50s do). A block's shortcut is a 1x1
    conv with the block's stride followed by BN whenever the block changes
    the shape, and the identity otherwise.

    The first layer standardises the input per channel,
    `(x - mean) / std`, so the model takes raw `[0, 1]` images and exports
    with its preprocessing inside. Convolutions have no bias and BN uses
    PyTorch's `eps=1e-5` and momentum 0.1 (Keras `momentum=0.9`).

    Args:
        block: string, `"basic"` (two 3x3 convs) or `"bottleneck"`
            (1x1, 3x3, 1x1 convs with 4x expansion).
        layers: sequence of four positive ints, the number of blocks per
            stage: `(2, 2, 2, 2)` for ResNet-18, `(3, 4, 6, 3)` for
            ResNet-34 and ResNet-50.
        stem: string, `"imagenet"` (7x7 stride-2 conv, BN, ReLU, 3x3
            stride-2 max-pool: features at 1/32 of the input size) or
            `"cifar"` (3x3 stride-1 conv, BN, ReLU: features at 1/8).
            Defaults to `"imagenet"`.
        width: float, multiplier of every conv's channel count; counts are
            rounded to the nearest int. Defaults to `1.0`.
        stem_stride: int, 1 or 2, the stride of the CIFAR stem's conv; 2
            halves every stage's resolution (features at 1/16: 28-px images
            reach the last stage at 2x2) for a quarter of the compute, with
            the same weights' shapes. Only with `stem="cifar"`. Defaults to
            `1`.
        input_shape: tuple `(H, W, C)` with `C` 1 or 3; `H` and `W` may be
            `None`. Defaults to `(None, None, 3)`.
        mean: float or sequence of `C` floats subtracted from the input.
            Defaults to the ImageNet mean `(0.485, 0.456, 0.406)`, or its
            average `0.449` for one channel.
        std: float or sequence of `C` positive floats dividing the centred
            input. Defaults to the ImageNet std `(0.229, 0.224, 0.225)`, or
            its average `0.226` for one channel.
        synchronized_bn: bool, whether every BN layer computes its batch
            statistics over the global batch of all replicas
            (`BatchNormalization(synchronized=True)`). Defaults to `False`.
        zero_init_residual: bool, whether the last BN of each residual
            branch starts with gamma = 0, so every block starts as the
            identity (Goyal et al., 2017). Defaults to `False`.
        name: string, model name. Defaults to `"resnet{depth}"`, with
            `"_cifar"` appended for the CIFAR stem.

    Returns:
        A functional `keras.Model` from `[N, H, W, C]` images to `[N, F]`
        features.

    Example:

    >>> encoder = ResNet("basic", (2, 2, 2, 2), stem="cifar", width=0.5,
    ...                  input_shape=(32, 32, 3))
    >>> encoder(np.random.rand(4, 32, 32, 3)).shape
    TensorShape([4, 256])

    References:
        - [He et al., 2015. Deep Residual Learning for Image Recognition](
          https://arxiv.org/abs/1512.03385)
        - [Goyal et al., 2017. Accurate, Large Minibatch SGD](
          https://arxiv.org/abs/1706.02677)
    """
    if block not in _BLOCKS:
        raise ValueError(f"`block` must be one of {_BLOCKS}. Received: block={block!r}")
    if stem not in _STEMS:
        raise ValueError(f"`stem` must be one of {_STEMS}. Received: stem={stem!r}")
    if not (
        isinstance(layers, (list, tuple))
        and len(layers) == 4
        and all(isinstance(n, numbers.Integral) and n > 0 for n in layers)
    ):
        raise ValueError(
            "`layers` must be a sequence of four positive ints (blocks per "
            f"stage). Received: layers={layers!r}"
        )
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
        raise ValueError(f"`stem_stride` must be 1 or 2. Received: stem_stride={stem_stride!r}")
    if stem_stride != 1 and stem != "cifar":
        raise ValueError(
            "`stem_stride` sets the stride of the CIFAR stem; the ImageNet stem's is fixed. "
            f"Received: stem={stem!r}, stem_stride={stem_stride!r}"
        )
    if not isinstance(width, numbers.Real) or not width > 0:
        raise ValueError(f"`width` must be a positive number. Received: width={width!r}")
    if round(64 * width) < 1:
        raise ValueError(
            f"`width` leaves the stem with no channels (64 * width rounds to 0). "
            f"Received: width={width!r}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(
            "`input_shape` must be (H, W, C) with C = 1 or 3 channels. "
            f"Received: input_shape={input_shape!r}"
        )
    channels = input_shape[-1]
    mean = _per_channel("mean", mean, IMAGENET_MEAN, channels)
    std = _per_channel("std", std, IMAGENET_STD, channels)
    if any(s <= 0 for s in std):
        raise ValueError(f"`std` must be positive. Received: std={std!r}")

    if name is None:
        depth = _CONVS_PER_BLOCK[block] * sum(layers) + 2
        name = f"resnet{depth}" + ("_cifar" if stem == "cifar" else "")

    bn = _bn_factory(synchronized_bn)
    inputs = keras.Input(shape=input_shape, name="images")
    x = L.Normalization(
        axis=-1, mean=mean, variance=[s * s for s in std], name="normalize"
    )(inputs)

    stem_width = round(64 * width)
    if stem == "imagenet":
        x = _conv(x, stem_width, 7, 2, "conv1")
        x = bn("bn1")(x)
        x = L.ReLU(name="relu")(x)
        # torchvision pads the max-pool with -inf. Its input is a ReLU output
        # (>= 0) and every 3x3 window holds at least one real pixel, so zero
        # padding gives the same maxima and keeps the layer standard.
        x = L.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = L.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    else:
        x = _conv(x, stem_width, 3, stem_stride, "conv1")
        x = bn("bn1")(x)
        x = L.ReLU(name="relu")(x)

    block_fn = _basic_block if block == "basic" else _bottleneck_block
    in_channels = stem_width
    for stage, num_blocks in enumerate(layers):
        planes = round(64 * width * 2**stage)
        for index in range(num_blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            x = block_fn(
                x,
                in_channels=in_channels,
                planes=planes,
                stride=stride,
                bn=bn,
                zero_init_residual=zero_init_residual,
                prefix=f"layer{stage + 1}_{index}",
            )
            in_channels = planes * _EXPANSION[block]
    outputs = L.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, outputs, name=name)


def feature_map_layers(encoder):
    """Names of the layers of `encoder` whose output is one 4-d tensor, in graph order.

    The last is the final feature map before pooling: what Grad-CAM
    (`kcl.pictures.saliency_maps`) and Deep InfoMax's local features
    (`kcl.methods.Contrastive(pairs="context_instance")`) read.
    """
    names = []
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError):
            continue
        if not isinstance(output, (list, tuple, dict)) and len(output.shape) == 4:
            names.append(layer.name)
    return names


def set_synchronized_bn(model, synchronized):
    """Makes every batch norm inside `model` global across replicas, or per replica.

    Synchronized batch norm computes its statistics over the global batch,
    so a step on `R` replicas equals a step on one device (kcl's
    distributed rule, and SimCLR's remedy for the BN "cheating" MoCo
    describes); per-replica BN uses each replica's share only. Every
    method calls it on its encoder with its own `synchronized_bn`; call it
    yourself for a network the method does not own. Set it before the
    first training step is traced.

    Args:
        model: a `keras.Model` (or layer); nested models are included.
        synchronized: `True` for global statistics, `False` per replica.

    Returns:
        The number of `BatchNormalization` layers set.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3))
    >>> kcl.backbones.set_synchronized_bn(encoder, True)
    20
    """
    if not isinstance(synchronized, bool):
        raise ValueError(f"`synchronized` must be True or False. Received: synchronized={synchronized!r}")
    count = 0
    for layer in model._flatten_layers(include_self=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
            count += 1
    return count


def torchvision_names(model):
    """Maps each weight of a kcl ResNet to its torchvision `state_dict` key.

    Conv kernels map to `<module>.weight`; BN `gamma`, `beta`,
    `moving_mean` and `moving_variance` map to `<module>.weight`, `.bias`,
    `.running_mean` and `.running_var`, where `<module>` is the layer name
    with `_` read as `.` (`layer1_0_downsample_1` -> `layer1.0.downsample.1`).
    torchvision's `num_batches_tracked` counters have no Keras counterpart
    (PyTorch only uses them when BN momentum is `None`), and the backbones
    have no `fc`.

    Keras conv kernels are laid out `[kh, kw, in, out]` (HWIO) and torch
    weights `[out, in, kh, kw]` (OIHW): convert torch to Keras with
    `np.transpose(w, (2, 3, 1, 0))` and back with `(3, 2, 0, 1)`. BN vectors
    need no change.

    Args:
        model: a model built by `ResNet` or `get`.

    Returns:
        A dict from each weight's `weight.path` (e.g.
        `"layer1_0_conv1/kernel"`) to its torchvision key (e.g.
        `"layer1.0.conv1.weight"`), one entry per weight of `model`.

    Example:

    >>> encoder = get("resnet18")
    >>> keys = torchvision_names(encoder)
    >>> state = {keys[w.path]: w.numpy() for w in encoder.weights}
    >>> state["layer4.1.bn2.running_var"].shape
    (512,)
    """
    suffixes = {
        "kernel": "weight",
        "gamma": "weight",
        "beta": "bias",
        "moving_mean": "running_mean",
        "moving_variance": "running_var",
    }
    mapping = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if not isinstance(layer, (L.Conv2D, L.BatchNormalization)):
            raise ValueError(
                "`torchvision_names` expects a model built by `kcl.backbones`, "
                f"whose only weights are in Conv2D and BatchNormalization layers. "
                f"Received: layer={layer.name!r} ({type(layer).__name__})"
            )
        module = layer.name.replace("_", ".")
        for weight in layer.weights:
            mapping[weight.path] = f"{module}.{suffixes[weight.name]}"
    return mapping


def _per_channel(arg, value, default, channels):
    if value is None:
        value = default if channels == 3 else sum(default) / len(default)
    if isinstance(value, numbers.Real):
        return [float(value)] * channels
    value = [float(v) for v in value]
    if len(value) != channels:
        raise ValueError(
            f"`{arg}` must be a float or a sequence of {channels} floats, one "
            f"per input channel. Received: {arg}={value!r}"
        )
    return value


def _bn_factory(synchronized):
    def bn(name, zero_gamma=False):
        return layers.BatchNormalization(
            momentum=0.9,
            epsilon=1e-5,
            gamma_initializer="zeros" if zero_gamma else "ones",
            synchronized=synchronized,
            name=name,
        )

    return bn


def _conv(x, filters, kernel_size, stride, name):
    # PyTorch pads `kernel_size // 2` on every side. For an odd kernel at
    # stride 1 Keras' "same" is exactly that, and the conv kernel pads
    # internally: no Pad op forward and no Slice backward, 6% of a
    # ResNet-18/4 step on CPU (docs/benchmarks.md). At stride 2 "same" pads
    # bottom and right only, so there the padding is an explicit layer.
    pad = kernel_size // 2
    padding = "same" if stride == 1 and kernel_size % 2 == 1 else "valid"
    if pad and padding == "valid":
        x = L.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return L.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=name,
    )(x)


def _shortcut(x, out_channels, in_channels, stride, bn, prefix):
    if stride == 1 and in_channels == out_channels:
        return x
    x = _conv(x, out_channels, 1, stride, f"{prefix}_downsample_0")
    return bn(f"{prefix}_downsample_1")(x)


def _basic_block(x, in_channels, planes, stride, bn, zero_init_residual, prefix):
    shortcut = _shortcut(x, planes, in_channels, stride, bn, prefix)
    y = _conv(x, planes, 3, stride, f"{prefix}_conv1")
    y = bn(f"{prefix}_bn1")(y)
    y = L.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(y, planes, 3, 1, f"{prefix}_conv2")
    y = bn(f"{prefix}_bn2", zero_gamma=zero_init_residual)(y)
    y = L.Add(name=f"{prefix}_add")([y, shortcut])
    return L.ReLU(name=f"{prefix}_out")(y)


def _bottleneck_block(x, in_channels, planes, stride, bn, zero_init_residual, prefix):
    out_channels = planes * _EXPANSION["bottleneck"]
    shortcut = _shortcut(x, out_channels, in_channels, stride, bn, prefix)
    y = _conv(x, planes, 1, 1, f"{prefix}_conv1")
    y = bn(f"{prefix}_bn1")(y)
    y = L.ReLU(name=f"{prefix}_relu1")(y)
    # Stride on the 3x3 conv, not the first 1x1 ("v1.5"): a strided 1x1
    # would skip three quarters of the input pixels.
    y = _conv(y, planes, 3, stride, f"{prefix}_conv2")
    y = bn(f"{prefix}_bn2")(y)
    y = L.ReLU(name=f"{prefix}_relu2")(y)
    y = _conv(y, out_channels, 1, 1, f"{prefix}_conv3")
    y = bn(f"{prefix}_bn3", zero_gamma=zero_init_residual)(y)
    y = L.Add(name=f"{prefix}_add")([y, shortcut])
    return L.ReLU(name=f"{prefix}_out")(y)

"""The methods kcl knows: each registers its name and what a trainer must give it.

A method's file says, once, next to its class, what the code that trains it
must provide: `@register("pic", instance_index=True, sliding_window=True)`.
The CLI, `kcl bench`, the zoo and the tests ask `needs(cls)` instead of
special-casing classes or reading constructor signatures, so a new method
is one file and its registration.

Example:

>>> @register("toy", total_steps=True)
... class Toy(ContrastiveModel): ...
>>> get("toy") is Toy, needs(Toy).total_steps
(True, True)
"""

import dataclasses

from kcl.checks import did_you_mean


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method needs from whoever trains it.

    Attributes:
        instance_index: batches carry each image's index (`{"images",
            "index"}`) and the method is built with `num_instances=` the
            size of the training set (PIC's instance classifier, memory
            banks); `kcl pretrain` feeds it through the sliding-window
            scheduler.
        sliding_window: the sliding-window scheduler's window and stride
            are the method's to set (`kcl pretrain --window/--stride`: PIC).
        total_steps: takes `total_steps=`, the steps of the whole run (a
            schedule inside the method: BYOL's EMA).
        steps_per_epoch: takes `steps_per_epoch=` (settings given in
            epochs: SwAV's queue start).
        weak_negatives: takes `weak_negatives=` and `alpha=` (Ge et al.).
    """

    instance_index: bool = False
    sliding_window: bool = False
    total_steps: bool = False
    steps_per_epoch: bool = False
    weak_negatives: bool = False

    def run_arguments(self, total_steps, steps_per_epoch, num_instances):
        """The constructor arguments a run fills in, for what the method takes: `{name: value}`."""
        arguments = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "num_instances": num_instances}
        wanted = {"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "num_instances": self.instance_index}
        return {name: value for name, value in arguments.items() if wanted[name]}


@dataclasses.dataclass(frozen=True)
class Tiny:
    """The smallest configuration of a method that still has all its state in play.

    The contract test (tests/methods/test_contract.py) builds every
    registered method from it with a tiny encoder, 16-px greyscale images,
    24 training images and batches of 8 (`queue_size` a multiple of 8), and
    puts it through every check a method must pass. What a run fills in
    (`Needs.run_arguments`) is not part of it.

    Attributes:
        config: constructor arguments besides the encoder and augmenter,
            e.g. `{"projection_hidden_dims": (32,), "projection_dim": 16}`.
        augmenter: arguments of the class's `default_augmenter(16, ...)`,
            e.g. `{"small_size": 8}` for multi-crop.
    """

    config: dict = dataclasses.field(default_factory=dict)
    augmenter: dict = dataclasses.field(default_factory=dict)


_METHODS = {}
_NEEDS = {}
_TINY = {}


def register(name, tiny=None, tiny_augmenter=None, **needs):
    """Class decorator: records a method class under `name` (lower case) with its `Needs`.

    Args:
        name: the method's name for `get`, cards and `kcl pretrain --method`.
        tiny: the method's `Tiny.config`, the arguments of its smallest
            configuration that the contract test trains (default: the
            constructor's defaults).
        tiny_augmenter: the `Tiny.augmenter` arguments.
        **needs: the fields of `Needs` that are true for this method.
    """
    key = str(name).lower()
    recorded = Needs(**needs)
    small = Tiny(dict(tiny or {}), dict(tiny_augmenter or {}))

    def decorate(cls):
        if _METHODS.get(key, cls) is not cls:
            raise ValueError(f"A method is already registered as {key!r} ({_METHODS[key].__name__}). Received: name={name!r}")
        _METHODS[key] = cls
        _NEEDS[cls] = recorded
        _TINY[key] = small
        return cls

    return decorate


def unregister(name):
    """Forgets the method `name` (for methods registered by tests)."""
    key = str(name).lower()
    cls = _METHODS.pop(key, None)
    _NEEDS.pop(cls, None)
    _TINY.pop(key, None)


def names():
    """Sorted names of the registered methods, e.g. `["byol", "contrastive", ...]`."""
    return sorted(_METHODS)


def get(name):
    """The method class registered as `name` (case-insensitive), e.g. `get("simclr")`."""
    key = str(name).lower()
    if key not in _METHODS:
        raise ValueError(f"Unknown method. Known methods: {names()}.{did_you_mean(key, _METHODS)} Received: name={name!r}")
    return _METHODS[key]


def needs(cls):
    """The `Needs` a method class registered with (a subclass inherits its parent's; unregistered: none)."""
    for base in getattr(cls, "__mro__", (cls,)):
        if base in _NEEDS:
            return _NEEDS[base]
    return Needs()


def tiny(name):
    """The `Tiny` configuration the method `name` registered, for the contract test."""
    get(name)  # the one error for an unknown name
    return _TINY[str(name).lower()]

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


_METHODS = {}
_NEEDS = {}


def register(name, **needs):
    """Class decorator: records a method class under `name` (lower case) with its `Needs`.

    Args:
        name: the method's name for `get`, cards and `kcl pretrain --method`.
        **needs: the fields of `Needs` that are true for this method.
    """
    key = str(name).lower()
    recorded = Needs(**needs)

    def decorate(cls):
        if _METHODS.get(key, cls) is not cls:
            raise ValueError(f"A method is already registered as {key!r} ({_METHODS[key].__name__}). Received: name={name!r}")
        _METHODS[key] = cls
        _NEEDS[cls] = recorded
        return cls

    return decorate


def unregister(name):
    """Forgets the method `name` (for methods registered by tests)."""
    cls = _METHODS.pop(str(name).lower(), None)
    _NEEDS.pop(cls, None)


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

"""The method registry: names, what each method needs, and registering a new one."""

import inspect

import pytest

import kcl
from kcl.methods import ContrastiveModel, registry


@pytest.mark.parametrize("name", kcl.methods.names())
def test_what_a_method_needs_matches_its_constructor(name):
    """The registry records what the constructor takes; it must not say otherwise."""
    cls = kcl.methods.get(name)
    parameters = inspect.signature(cls).parameters
    needs = kcl.methods.needs(cls)
    assert needs.instance_index == ("num_instances" in parameters)
    assert needs.total_steps == ("total_steps" in parameters)
    assert needs.steps_per_epoch == ("steps_per_epoch" in parameters)
    assert needs.weak_negatives == ("weak_negatives" in parameters and "alpha" in parameters)
    assert not needs.sliding_window or needs.instance_index  # a window moves over instance indices


def test_the_registered_methods_are_the_shipped_ones():
    assert kcl.methods.names() == ["byol", "contrastive", "mocov2", "nnclr", "pic", "simclr", "simsiam", "swav"]
    assert kcl.methods.get("MoCoV2") is kcl.methods.MoCoV2  # case-insensitive, as cards write it


def test_run_arguments_are_only_what_the_method_takes():
    assert kcl.methods.needs(kcl.methods.BYOL).run_arguments(100, 10, 600) == {"total_steps": 100}
    assert kcl.methods.needs(kcl.methods.SwAV).run_arguments(100, 10, 600) == {"steps_per_epoch": 10}
    assert kcl.methods.needs(kcl.methods.PIC).run_arguments(100, 10, 600) == {"num_instances": 600}
    assert kcl.methods.needs(kcl.methods.SimCLR).run_arguments(100, 10, 600) == {}


def test_a_new_method_is_one_registration():
    @kcl.methods.register("toy_method", total_steps=True)
    class Toy(ContrastiveModel):
        pass

    try:
        assert kcl.methods.get("toy_method") is Toy and "toy_method" in kcl.methods.names()
        assert kcl.methods.needs(Toy).total_steps and not kcl.methods.needs(Toy).instance_index

        class Sub(Toy):  # an unregistered subclass keeps its parent's needs
            pass

        assert kcl.methods.needs(Sub) == kcl.methods.needs(Toy)
        with pytest.raises(ValueError, match="already registered as 'toy_method' \\(Toy\\).*name='Toy_Method'"):
            kcl.methods.register("Toy_Method")(Sub)
    finally:
        kcl.methods.unregister("toy_method")
    assert "toy_method" not in kcl.methods.names()
    assert kcl.methods.needs(Toy) == registry.Needs()


def test_an_unknown_method_name_says_what_is_close():
    with pytest.raises(ValueError, match=r"Unknown method.*Did you mean 'simclr'\?.*name='simclrr'"):
        kcl.methods.get("simclrr")

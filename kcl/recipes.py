"""Recipes: the settings of a `kcl pretrain` run, as data (`.json`) or code (`.py`, kcl's own).

`load_recipe("path")` (or `"path:smoke"`, the seconds-long CI variant) reads
one; `card_recipe(name, ...)` builds the settings that train a zoo card's
model, so recipe files stay a few lines; `crop_only_recipe` is a recipe
with every view a random resized crop only (the augmentation ablation).
recipes/README.md describes both forms.

Example (a recipe file, recipes/simclr_fmnist.py):

>>> def get_config(smoke=False):
...     return kcl.recipes.card_recipe("simclr_r18_fmnist", smoke, epochs=18)
"""

import importlib.util
import json
import os

from kcl import catalog, zoo


def recipes_dir():
    """kcl's own recipes/ folder, symlinks resolved; None where kcl is not a source checkout."""
    # A wheel ships no recipes; only a checkout has them.
    folder = catalog.checkout_folder("recipes")
    return os.path.realpath(folder) if folder is not None else None


def _json_recipe(path, smoke, spec):
    """The settings of a JSON recipe: parsed as data, never run (see recipes/README.md)."""
    try:
        with open(path, encoding="utf-8") as f:
            recipe = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"The recipe is not valid JSON ({error}). Received: --recipe={spec}") from None
    if not isinstance(recipe, dict):
        raise ValueError(  # noqa: TRY004 (kcl reports bad arguments as ValueError)
            f"A JSON recipe is an object of settings. Received: {type(recipe).__name__} from --recipe={spec}"
        )
    recipe = dict(recipe)
    recipe.pop("description", None)  # a note for readers, as a Python recipe's docstring
    if "config" not in recipe:  # the flat form: the settings alone, no smoke variant
        if smoke:
            raise ValueError(
                'This JSON recipe has no smoke variant; one is given as {"config": {...}, '
                f'"smoke": {{...}}}}. Received: --recipe={spec}'
            )
        return recipe
    extra = sorted(set(recipe) - {"config", "smoke"})
    config, overrides = recipe["config"], recipe.get("smoke")
    if extra or not isinstance(config, dict) or not isinstance(overrides, (dict, type(None))):
        raise ValueError(
            'A JSON recipe with "config" holds an object "config", optionally an object "smoke" '
            f'and a "description". Received: keys={sorted(recipe)} from --recipe={spec}'
        )
    if not smoke:
        return config
    if overrides is None:
        raise ValueError(f'This JSON recipe has no "smoke" variant. Received: --recipe={spec}')
    config = dict(config)
    for name, value in overrides.items():
        # Objects (set, augment) are updated key by key, as card_recipe's
        # smoke_set and smoke_augment; any other value replaces the config's.
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            value = {**config[name], **value}
        config[name] = value
    return config


def load_recipe(spec, trust=False):
    """The settings of a recipe, `"path"` or `"path:smoke"`: a `.json` file, or a Python one.

    A `.json` recipe is read as data: an object of `kcl pretrain` settings
    named like the flags' destinations (`batch_size`, `set` and `augment`
    as objects), or `{"config": {...}, "smoke": {...}}` whose `:smoke`
    variant is `config` updated by `smoke` (see recipes/README.md). A
    Python recipe's `get_config(smoke=False)` returns the dict; it runs as
    code, so only a file of kcl's own recipes/ folder (symlinks resolved)
    is imported unless `trust=True` (`--trust-recipe`). The check comes
    before the file is read.

    Args:
        spec: the `--recipe` value.
        trust: run a Python recipe from outside kcl's recipes/. Defaults to
            `False`.
    """
    path, _, variant = spec.partition(":")
    if variant not in ("", "smoke"):
        raise ValueError(f"A recipe variant must be ':smoke' or none. Received: --recipe={spec}")
    if not os.path.isfile(path):
        raise ValueError(f"No such recipe file. Received: --recipe={spec}")
    # The file the path leads to, so a symlink into recipes/ is judged (and
    # imported) as its target, and one out of recipes/ gains nothing.
    real = os.path.realpath(path)
    if real.lower().endswith(".json"):
        return _json_recipe(real, variant == "smoke", spec)
    if not real.endswith(".py"):
        raise ValueError(
            f"A recipe is a .json (data) or .py (code) file. Received: --recipe={spec} ({real})"
        )
    recipes = recipes_dir()
    if not trust and not (recipes and os.path.commonpath([real, recipes]) == recipes):
        raise ValueError(
            f"The recipe {real} is Python code from outside kcl's recipes/ folder "
            f"({recipes or 'none in this install'}), and loading it would run it with "
            "your rights. Read it, then pass --trust-recipe to run it; or write its "
            "settings as a .json recipe, which is read as data (recipes/README.md). "
            f"Received: --recipe={spec}"
        )
    module_spec = importlib.util.spec_from_file_location("kcl_recipe", real)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        config = module.get_config(smoke=variant == "smoke")
    except Exception as error:  # noqa: BLE001  any fault of the file is the user's to fix
        raise ValueError(
            f"The recipe failed ({type(error).__name__}: {error}). Received: --recipe={spec}"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"A recipe's get_config must return a dict. Received: {type(config).__name__} from --recipe={spec}"
        )
    return config


# Settings a recipe's smoke variant shares: the pipeline (train, kNN, plot)
# with the recipe's method, heads, optimizer and augmentations, on 64
# Fashion-MNIST images and a small ResNet-18, in seconds. The backbones
# themselves (ResNet-50 included) and the export have tests of their own.
SMOKE_SETTINGS = {
    "data": "fashion_mnist",
    "image_size": None,
    "backbone": "resnet18_cifar",
    "width": 0.125,
    "epochs": 1,
    "batch_size": 32,
    "train_limit": 64,
    "test_limit": 32,
    "knn_bank": 32,
    "knn_every": 0,
    "no_export": True,
}


def card_recipe(name, smoke=False, smoke_set=None, smoke_augment=None, **settings):
    """`kcl pretrain` settings that train the model of the card `name`.

    The card is the one record of the architecture: its backbone and width,
    `method_args` (as `set`) and augmenter arguments (as `augment`) become
    the recipe's, so the weights a recipe trains load into
    `kcl.zoo.load(name)`. `settings` add the training (`epochs`,
    `batch_size`, `optimizer`, `lr`, `weight_decay`, `data`, ...) and may
    override any of them. `num_instances` (PIC) is left to `kcl pretrain`,
    which sets it to the size of the training set.

    `smoke=True` gives the recipe's seconds-long CI variant:
    `SMOKE_SETTINGS` over `settings`, `smoke_set` over the method
    arguments and `smoke_augment` over the augmenter's (sizes tied to the
    data: a queue that must fit the batch, crops of 28-pixel images).

    Example (a recipe file):

    >>> def get_config(smoke=False):
    ...     return kcl.recipes.card_recipe("simclr_r18_fmnist", smoke, epochs=2, lr=2e-3)
    """
    spec = zoo.card(name)
    config = {
        "method": spec["method"].lower(),
        "backbone": spec["backbone"],
        "width": spec.get("backbone_args", {}).get("width", 1.0),
        "stem_stride": spec.get("backbone_args", {}).get("stem_stride", 1),
        "set": {k: v for k, v in spec.get("method_args", {}).items() if k != "num_instances"},
        "augment": {k: v for k, v in (spec.get("augmenter") or {}).items() if k != "size"},
    }
    config.update(settings)
    if smoke:
        config.update(SMOKE_SETTINGS)
        config["set"] = dict(config["set"], **(smoke_set or {}))
        config["augment"] = dict(config["augment"], **(smoke_augment or {}))
    return config


def crop_only_recipe(base, smoke=False):
    """The recipe `base` (a file of kcl's recipes/) with every view a random resized crop only.

    The augmentation ablation of NNCLR (section 5): the same model, data and
    training as `base`, with `crop_only=True` for the method's augmenter, so
    flip, colour distortion, grayscale, blur and solarize are all off. Used
    by the `*_crop_only.py` recipes:

    >>> def get_config(smoke=False):
    ...     return kcl.recipes.crop_only_recipe("nnclr_fmnist.py", smoke)
    """
    path = os.path.join(recipes_dir(), base)
    config = load_recipe(path + (":smoke" if smoke else ""))
    config["augment"] = dict(config.get("augment") or {}, crop_only=True)
    return config

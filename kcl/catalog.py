"""The zoo's cards (JSON files of the repository's `zoo/`) and the folder of the weights trained here.

A card names a method, a backbone and its configuration, the data and
epochs it was trained for, what was measured and where its weights come
from (`zoo/README.md` lists the keys). `kcl.zoo` builds models from cards;
`kcl.convert` reads the authors' checkpoints they list.

Example:

>>> kcl.catalog.card("simclr_r18_fmnist")["backbone"]
'resnet18_cifar'
"""

import pathlib

from kcl import files
from kcl.checks import did_you_mean

# Keys a card must have; others (`paper`, `description`, `backbone_args`,
# `method_args`, `augmenter`, and later `weights`) are optional.
_REQUIRED_CARD_KEYS = ("name", "method", "backbone")


def _data_dir(installed_name, checkout_name):
    """A data folder of kcl: `kcl/<installed_name>` in a wheel, `<checkout>/<checkout_name>` in a checkout.

    From a wheel, the package data (setup.cfg maps the top-level folders to
    the packages `kcl.cards` and `kcl.weights`); from a source checkout or
    an editable install (where `kcl` is the checkout's folder), the
    top-level folder next to the `kcl` package.
    """
    installed = pathlib.Path(__file__).resolve().parent / installed_name
    if installed.is_dir():
        return installed
    checkout = checkout_folder(checkout_name)
    if checkout is not None:
        return checkout
    raise FileNotFoundError(
        f"Neither {installed} (installed package) nor {installed.parent.parent / checkout_name} "
        "(source checkout) exists; reinstall kcl."
    )


def checkout_folder(name):
    """The top-level folder `name` of the source checkout kcl runs from, or None.

    A checkout (or an editable install) has `setup.cfg` next to the `kcl`
    package; a wheel has neither it nor the checkout's folders.
    """
    checkout = pathlib.Path(__file__).resolve().parent.parent
    folder = checkout / name
    return folder if (checkout / "setup.cfg").is_file() and folder.is_dir() else None


def weights_dir():
    """The folder of the weights trained here: `saved_models/` (`kcl/weights` in a wheel)."""
    return _data_dir("weights", "saved_models")


def cards_dir():
    """The folder holding the cards: `zoo/` (`kcl/cards` in a wheel)."""
    return _data_dir("cards", "zoo")


def cards():
    """Every card, `{name: card}`, read afresh from the JSON files (the caller's to change)."""
    cards = {}
    for path in sorted(cards_dir().glob("*.json")):
        card = files.read_json(path, f"card={path.name}")
        missing = [key for key in _REQUIRED_CARD_KEYS if key not in card]
        if missing:
            raise ValueError(f"The card {path} lacks the keys {missing}. Received: keys={sorted(card)}")
        if card["name"] != path.stem:
            raise ValueError(
                f"A card's name must be its file name ({path.stem!r}). "
                f"Received: name={card['name']!r} in {path}"
            )
        cards[card["name"]] = card
    return cards


def names():
    """Sorted names of the cards, e.g. `["nnclr_r50", ...]`."""
    return sorted(cards())


def card(name):
    """The card of the preset `name` (a dict, a copy of its JSON file).

    Raises `ValueError` for an unknown name, with the close matches and the
    known names.
    """
    known = cards()
    if name not in known:
        hint = did_you_mean(name, known)
        raise ValueError(
            f"Unknown preset: not a registered name nor a preset directory "
            f"(config.json + model.weights.h5).{hint} Known names: "
            f"{', '.join(sorted(known))}. Received: name={name!r}"
        )
    return known[name]

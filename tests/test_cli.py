"""Tests of the `kcl` command: help texts, pretrain -> eval -> export end to
end on a tiny image folder, and one-line errors (exit code 2) for bad input.

Commands run in-process through `kcl.cli.main` (fast); one test runs the
installed console script in a subprocess.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl import cli
from tests.conftest import write_image_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMANDS = ("pretrain", "eval", "export")


def run(argv, capsys):
    """`kcl argv` in-process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse: --help and bad flag syntax
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    for needle in needles:
        assert needle in last, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and test/ with 2 classes x 40 grey 16x16 PNGs: dark and bright noise."""
    return write_image_folder(tmp_path_factory.mktemp("images"), per_class=40)


# ----------------------------------------------------------------------- help
def options_of(command):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return [
        option
        for action in subparsers.choices[command]._actions
        for option in action.option_strings
        if option.startswith("--")
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_mentions_every_flag(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    options = options_of(command)
    expected = {
        "pretrain": ["--method", "--backbone", "--width", "--data", "--image-size", "--epochs",
                     "--batch-size", "--optimizer", "--lr", "--set", "--knn-every", "--knn-bank",
                     "--no-probe", "--no-export", "--seed", "--out"],
        "eval": ["--model", "--data", "--image-size", "--no-linear", "--json", "--linear-protocol",
                 "--linear-epochs", "--fine-tune", "--fine-tune-epochs", "--transfer", "--tfds-dir",
                 "--transfer-limit", "--report", "--saliency-epochs"],
        "export": ["--model", "--out", "--image-size"],
    }[command]
    assert set(expected) <= set(options)
    for option in options:
        assert option in out, option


def test_top_level_help_lists_the_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert all(command in out for command in COMMANDS)


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run([], capsys)
    assert code == 2 and "Traceback" not in err


def test_console_script_help():
    script = os.path.join(os.path.dirname(sys.executable), "kcl")
    if not os.path.exists(script):
        pytest.skip("the kcl console script is not installed")
    result = subprocess.run(
        [script, "pretrain", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--method" in result.stdout and "--knn-bank" in result.stdout


# ----------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pretrained(folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "run")
    argv = [
        "pretrain", "--data", folder, "--image-size", "16", "--channels", "1",
        "--backbone", "resnet18_cifar", "--width", "0.125", "--epochs", "1", "--batch-size", "16", "--knn-bank", "40",
        "--out", out, "--quiet",
    ]
    code = cli.main(argv)
    return code, out


def test_pretrain_end_to_end_writes_every_output(pretrained):
    code, out = pretrained
    assert code == 0
    for name in ("model.keras", "history.json", "metrics.json", "training.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.path.isfile(os.path.join(out, "saved_model", "saved_model.pb"))

    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    # The monitor's bank is the first 40 of 80 training images; on an image
    # folder they hold both classes (a bank of one class scores exactly 0.5).
    assert 0.5 < history["knn_acc"][0] <= 1.0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["method"] == "SimCLR" and metrics["epochs"] == 1
    # The command that made the run, and one line per start of it.
    assert metrics["command"].startswith("kcl pretrain --data ") and metrics["command"].endswith("--quiet")
    with open(os.path.join(out, "sessions.jsonl")) as f:
        (session,) = [json.loads(line) for line in f]
    assert session["trained"] and session["from_step"] == 0 and session["command"] == metrics["command"]
    for row in ("raw pixels", "encoder"):
        assert 0.0 <= metrics["knn"][row]["knn200_weighted"] <= 1.0
        assert 0.0 <= metrics["knn"][row]["nn20_cosine"] <= 1.0
    with open(os.path.join(out, "training.png"), "rb") as f:
        assert f.read(8) == PNG_SIGNATURE

    # The grey image folder is read with one channel (--channels 1).
    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].shape[-1] == 1
    features = serve(images=tf.zeros((2, 16, 16, 1), tf.uint8))["features"]
    assert features.shape[0] == 2 and features.dtype == tf.float32


def test_pretrain_in_mixed_bfloat16_saves_and_serves_float32(folder, tmp_path, capsys):
    # --precision bfloat16: layers compute in bfloat16 (variables float32);
    # the saved model keeps the policy, the SavedModel serves float32.
    out = str(tmp_path / "bf16")
    argv = [
        "pretrain", "--data", folder, "--image-size", "16", "--channels", "1", "--backbone", "resnet18_cifar",
        "--width", "0.125", "--epochs", "1", "--batch-size", "16", "--knn-bank", "40", "--no-probe",
        "--precision", "bfloat16", "--jit", "off", "--out", out, "--quiet",
    ]
    assert cli.main(argv) == 0
    assert "precision bfloat16, XLA off" in capsys.readouterr().out
    assert keras.config.dtype_policy().name == "float32"  # restored after the build
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["precision"] == "bfloat16" and metrics["jit_compile"] is False
    model = keras.models.load_model(os.path.join(out, "model.keras"))
    convolutions = [layer for layer in model.encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in convolutions)
    assert all(v.dtype == "float32" for v in model.encoder.trainable_weights)
    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    features = serve(images=tf.zeros((2, 16, 16, 1), tf.uint8))["features"]
    assert features.dtype == tf.float32 and np.all(np.isfinite(features.numpy()))


def test_eval_of_the_pretrained_model(pretrained, folder, tmp_path, capsys):
    _, out = pretrained
    results_path = str(tmp_path / "results.json")
    code, stdout, err = run(
        ["eval", "--model", os.path.join(out, "model.keras"), "--data", folder,
         "--image-size", "16", "--channels", "1", "--no-linear", "--json", results_path],
        capsys,
    )
    assert code == 0, err
    assert "raw pixels" in stdout and "encoder" in stdout
    with open(results_path) as f:
        results = json.load(f)
    assert results["linear_probe"] is None
    assert 0.0 <= results["knn"]["encoder"]["knn200_weighted"] <= 1.0


def test_export_of_the_pretrained_model(pretrained, tmp_path, capsys):
    _, out = pretrained
    target = str(tmp_path / "exported")
    code, _, err = run(["export", "--model", os.path.join(out, "model.keras"), "--out", target], capsys)
    assert code == 0, err
    serve = tf.saved_model.load(target).signatures["serving_default"]
    features = serve(images=tf.zeros((1, 20, 20, 1), tf.uint8))["features"]
    assert features.shape[0] == 1


def test_limits_on_an_image_folder_take_every_class(folder):
    args = cli.build_parser().parse_args(
        ["eval", "--model", "m.keras", "--data", folder, "--image-size", "8", "--channels", "3",
         "--train-limit", "10", "--test-limit", "6"]
    )
    images, labels = cli._load_split(args, "train")
    assert images.shape == (10, 8, 8, 3) and set(labels.tolist()) == {0, 1}
    again = cli._load_split(args, "train")[1]
    np.testing.assert_array_equal(labels, again)  # the same images every run
    assert len(cli._load_split(args, "test")[0]) == 6


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv, needles",
    [
        (["pretrain", "--method", "nope"], ["--method", "nope"]),
        (["pretrain", "--backbone", "resnet9000"], ["--backbone=resnet9000"]),
        (["pretrain", "--epochs", "0"], ["--epochs=0"]),
        (["pretrain", "--batch-size", "0"], ["--batch-size=0"]),
        (["pretrain", "--width", "0"], ["--width=0"]),
        (["pretrain", "--knn-bank", "0"], ["--knn-bank=0"]),
        (["pretrain", "--train-limit", "0"], ["--train-limit=0"]),
        (["eval", "--model", "missing.keras"], ["--model=missing.keras"]),
        (["eval", "--model", "__file__"], ["--model=", ".keras"]),
        (["export", "--model", "missing.keras", "--out", "x"], ["--model=missing.keras"]),
        (["pretrain", "--set", "temperature"], ["--set"]),
        (["pretrain", "--epochs", "many"], ["--epochs"]),
        (["pretrain", "--optimizer", "lamb"], ["--optimizer"]),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) and value[0] in COMMANDS else None,
)
def test_bad_flags_give_one_line_errors(argv, needles, tmp_path, capsys):
    argv = [__file__ if arg == "__file__" else arg for arg in argv]
    if argv[0] == "pretrain":
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, *needles)


def folder_argv(folder, tmp_path, *extra):
    return [
        "pretrain", "--data", folder, "--image-size", "16", "--width", "0.125",
        "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "out"), *extra,
    ]


def test_batch_larger_than_the_dataset(folder, tmp_path, capsys):
    argv = folder_argv(folder, tmp_path)
    argv[argv.index("--batch-size") + 1] = "1000"
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "--batch-size=1000")


def test_image_folder_of_mixed_sizes_without_image_size(tmp_path, capsys):
    # One size is inferred (the fixture's folder trains without --image-size);
    # several need the flag, asked for before anything trains.
    for i, size in enumerate((12, 16, 20)):
        directory = tmp_path / "mixed" / "train" / f"class{i % 2}"
        directory.mkdir(parents=True, exist_ok=True)
        keras.utils.save_img(str(directory / f"{i}.png"), np.zeros((size, size, 1), "uint8"), scale=False)
    argv = folder_argv(str(tmp_path / "mixed"), tmp_path)
    del argv[argv.index("--image-size") : argv.index("--image-size") + 2]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "several sizes (12x12, 16x16, 20x20)", "--image-size")


@pytest.mark.parametrize("setting", ["bogus=1", 'temperature="warm"'])
def test_bad_method_setting(folder, tmp_path, capsys, setting):
    code, _, err = run(folder_argv(folder, tmp_path, "--set", setting), capsys)
    assert_one_line_error(code, err, "--set")


def test_unknown_dataset_name(tmp_path, capsys):
    code, _, err = run(
        ["pretrain", "--data", "no_such_dataset_kcl", "--out", str(tmp_path / "out")], capsys
    )
    assert_one_line_error(code, err, "no_such_dataset_kcl")


def test_pic_trains_on_the_sliding_window_scheduler(folder, tmp_path, capsys):
    # 80 training images: windows of 32 moving by 16, 1 epoch -> 3 windows.
    argv = folder_argv(
        folder, tmp_path, "--method", "pic", "--channels", "1", "--window", "32", "--stride", "16",
        "--set", "num_negatives=32", "--set", "projection_hidden_dims=[16]", "--knn-every", "0",
        "--no-export", "--quiet",
    )
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "3 windows of 32, stride 16" in stdout
    with open(tmp_path / "out" / "history.json") as f:
        history = json.load(f)
    assert len(history["loss"]) == 3 and all(np.isfinite(history["loss"]))


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--window", "32"], ["--window", "SimCLR", "--method=simclr"]),
        (["--method", "pic", "--window", "100000"], ["--window", "window=100000"]),
        (["--method", "pic", "--window", "8"], ["--window=8", "--batch-size=16"]),
    ],
)
def test_bad_scheduler_flags(folder, tmp_path, capsys, extra, needles):
    code, _, err = run(folder_argv(folder, tmp_path, *extra), capsys)
    assert_one_line_error(code, err, *needles)


# ------------------------------------------------------- weak negatives
def test_pretrain_with_texture_negatives_built_by_the_cli(folder, tmp_path, capsys):
    textures = str(tmp_path / "textures")
    code, _, err = run(
        ["build-textures", "--data", folder, "--image-size", "16", "--channels", "1",
         "--split", "train", "--out", textures],
        capsys,
    )
    assert code == 0, err
    argv = folder_argv(
        folder, tmp_path, "--method", "mocov2", "--channels", "1", "--weak-negatives", "texture",
        "--textures", textures, "--alpha", "3", "--set", "queue_size=32",
        "--set", "projection_hidden_dims=[16]", "--knn-every", "0", "--no-export", "--quiet",
    )
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "texture negatives" in stdout
    with open(tmp_path / "out" / "metrics.json") as f:
        assert json.load(f)["weak_negatives"] == "texture"
    model = keras.models.load_model(str(tmp_path / "out" / "model.keras"))
    assert type(model.weak_negatives).__name__ == "TextureNegatives" and model.alpha == 3.0
    assert model.weak_negatives.pipeline is None  # it augments with the query pipeline


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--alpha", "2"], ["--alpha", "--weak-negatives"]),
        (["--textures", "somewhere"], ["--textures", "--weak-negatives"]),
        (["--method", "swav", "--weak-negatives", "patch"], ["SwAV", "--method=swav"]),
        (["--method", "mocov2", "--weak-negatives", "texture"], ["kcl build-textures", "--textures=None"]),
        (["--method", "mocov2", "--weak-negatives", "texture", "--textures", "nowhere"],
         ["--textures", "nowhere"]),
        (["--method", "mocov2", "--weak-negatives", "patch", "--textures", "x"], ["--textures=x"]),
    ],
)
def test_bad_weak_negative_flags(folder, tmp_path, capsys, extra, needles):
    code, _, err = run(folder_argv(folder, tmp_path, "--channels", "1", *extra), capsys)
    assert_one_line_error(code, err, *needles)


# ---------------------------------------------------------------- recipes
RECIPES = sorted(
    os.path.join(cli_root, "recipes", name)
    for cli_root in [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for name in os.listdir(os.path.join(cli_root, "recipes"))
    if name.endswith(".py")
)


def write_recipe(tmp_path, body):
    path = tmp_path / "recipe.py"
    path.write_text(body)
    return str(path)


def test_recipe_settings_become_defaults_and_flags_override_them(tmp_path):
    recipe = write_recipe(
        tmp_path,
        "def get_config(smoke=False):\n"
        "    return {'method': 'byol', 'epochs': 1 if smoke else 300, 'batch_size': 64,\n"
        "            'set': {'temperature': 0.3}, 'augment': {'crop_scale': [0.2, 1.0]}}\n",
    )
    args = cli.parse_args(["pretrain", "--recipe", recipe, "--trust-recipe"])
    assert (args.method, args.epochs, args.batch_size) == ("byol", 300, 64)
    assert args.set == [("temperature", 0.3)] and args.augment == [("crop_scale", [0.2, 1.0])]
    args = cli.parse_args(["pretrain", "--recipe", recipe + ":smoke", "--trust-recipe", "--batch-size", "32"])
    assert (args.epochs, args.batch_size) == (1, 32)


@pytest.mark.parametrize(
    "body, suffix, needles",
    [
        (None, "", ["No such recipe", "--recipe="]),
        ("def get_config(smoke=False):\n    return {}\n", ":fast", [":smoke", "--recipe="]),
        ("def get_config(smoke=False):\n    return {'epoch': 3}\n", "", ["epoch", "no flag"]),
        ("def get_config(smoke=False):\n    return [1]\n", "", ["return a dict", "list"]),
        ("def get_config(smoke=False)\n    return {}\n", "", ["SyntaxError", "--recipe="]),
        ("x = 1\n", "", ["AttributeError", "get_config"]),
        ("def get_config(smoke=False):\n    raise KeyError('lr')\n", "", ["KeyError", "lr"]),
    ],
)
def test_bad_recipes_give_one_line_errors(tmp_path, capsys, body, suffix, needles):
    recipe = str(tmp_path / "missing.py") if body is None else write_recipe(tmp_path, body)
    argv = ["pretrain", "--recipe", recipe + suffix, "--trust-recipe", "--out", str(tmp_path / "o")]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, *needles)


# A recipe that leaves a mark when it is imported: refused, it must not be.
MARKING_RECIPE = (
    "import pathlib\n"
    "pathlib.Path(__file__).with_name('ran').write_text('recipe code ran')\n"
    "def get_config(smoke=False):\n"
    "    return {'epochs': 7}\n"
)


def test_python_recipe_from_outside_recipes_is_refused_before_it_runs(tmp_path, capsys):
    recipe = write_recipe(tmp_path, MARKING_RECIPE)
    code, _, err = run(["pretrain", "--recipe", recipe, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(
        code, err, "Python code from outside kcl's recipes/", "--trust-recipe", ".json recipe",
        f"Received: --recipe={recipe}",
    )
    with pytest.raises(ValueError, match="--trust-recipe"):
        kcl.recipes.load_recipe(recipe + ":smoke")
    assert not (tmp_path / "ran").exists()
    # Trusted by the user, the same file runs.
    assert cli.parse_args(["pretrain", "--recipe", recipe, "--trust-recipe"]).epochs == 7
    assert (tmp_path / "ran").exists()


def test_only_files_inside_kcl_recipes_run_without_trust(tmp_path, monkeypatch):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert kcl.recipes.recipes_dir() == os.path.realpath(os.path.join(repo, "recipes"))
    for recipe in RECIPES:  # kcl's own run untrusted
        assert isinstance(kcl.recipes.load_recipe(recipe + ":smoke"), dict), recipe

    recipes, outside = tmp_path / "recipes", tmp_path / "outside"
    recipes.mkdir()
    outside.mkdir()
    monkeypatch.setattr(kcl.recipes, "recipes_dir", lambda: str(recipes))
    (recipes / "good.py").write_text("def get_config(smoke=False):\n    return {'epochs': 3}\n")
    evil = outside / "evil.py"
    evil.write_text(MARKING_RECIPE)
    assert kcl.recipes.load_recipe(str(recipes / "good.py")) == {"epochs": 3}
    # A symlink in recipes/ is judged by its target, and so is a `..` path.
    (recipes / "link.py").symlink_to(evil)
    for spec in (recipes / "link.py", recipes / ".." / "outside" / "evil.py"):
        with pytest.raises(ValueError, match=r"outside kcl's recipes/.*Received: --recipe="):
            kcl.recipes.load_recipe(str(spec))
    assert not (outside / "ran").exists()
    # A symlink elsewhere to a file of recipes/ is that file.
    (outside / "alias.py").symlink_to(recipes / "good.py")
    assert kcl.recipes.load_recipe(str(outside / "alias.py")) == {"epochs": 3}


def write_json_recipe(tmp_path, recipe):
    path = tmp_path / "recipe.json"
    path.write_text(recipe if isinstance(recipe, str) else json.dumps(recipe))
    return str(path)


def test_json_recipe_settings_and_smoke_overrides(tmp_path):
    recipe = write_json_recipe(tmp_path, {
        "description": "BYOL, 300 epochs; smoke: seconds.",
        "config": {"method": "byol", "epochs": 300, "batch_size": 64,
                   "set": {"temperature": 0.3, "queue_size": 4096}, "augment": {"crop_scale": [0.2, 1.0]}},
        "smoke": {"epochs": 1, "set": {"queue_size": 32}},
    })
    args = cli.parse_args(["pretrain", "--recipe", recipe])
    assert (args.method, args.epochs, args.batch_size) == ("byol", 300, 64)
    assert args.set == [("temperature", 0.3), ("queue_size", 4096)]
    args = cli.parse_args(["pretrain", "--recipe", recipe + ":smoke", "--batch-size", "32"])
    assert (args.method, args.epochs, args.batch_size) == ("byol", 1, 32)
    # Objects are updated key by key, other values replaced.
    assert args.set == [("temperature", 0.3), ("queue_size", 32)]
    assert args.augment == [("crop_scale", [0.2, 1.0])]
    # The flat form: the settings alone.
    flat = write_json_recipe(tmp_path, {"method": "simsiam", "epochs": 2})
    assert cli.parse_args(["pretrain", "--recipe", flat]).method == "simsiam"


def test_a_python_recipe_written_as_json_gives_the_same_flags(tmp_path):
    python = next(r for r in RECIPES if r.endswith("mocov2_fmnist.py"))
    recipe = write_json_recipe(
        tmp_path, {"config": kcl.recipes.load_recipe(python), "smoke": kcl.recipes.load_recipe(python + ":smoke")}
    )
    for suffix in ("", ":smoke"):
        from_json = vars(cli.parse_args(["pretrain", "--recipe", recipe + suffix]))
        from_python = vars(cli.parse_args(["pretrain", "--recipe", python + suffix]))
        assert from_json.pop("recipe") == recipe + suffix
        assert from_python.pop("recipe") == python + suffix
        assert from_json == from_python


@pytest.mark.parametrize(
    "recipe, suffix, needles",
    [
        ("{'epochs': 3}", "", ["not valid JSON", "--recipe="]),
        ([1], "", ["object of settings", "list"]),
        ({"epochs": 3}, ":smoke", ["no smoke variant", '"smoke"']),
        ({"config": {"epochs": 3}}, ":smoke", ['no "smoke" variant']),
        ({"config": {"epochs": 3}, "smok": {}}, "", ["smok", '"config"']),
        ({"config": [1]}, "", ['object "config"']),
        ({"epoch": 3}, "", ["epoch", "no flag"]),
        ({"trust_recipe": True}, "", ["trust_recipe", "no flag"]),
    ],
)
def test_bad_json_recipes_give_one_line_errors(tmp_path, capsys, recipe, suffix, needles):
    path = write_json_recipe(tmp_path, recipe)
    code, _, err = run(["pretrain", "--recipe", path + suffix, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_every_recipe_runs_its_smoke_variant(recipe, tmp_path, capsys):
    from kcl import data

    config = kcl.recipes.load_recipe(recipe + ":smoke")
    if config.get("data", "fashion_mnist") == "fashion_mnist":
        try:
            data.load_fashion_mnist("test", download=False, verbose=False)
        except FileNotFoundError:
            pytest.skip("Fashion-MNIST is not installed locally (make data)")
    out = str(tmp_path / "out")
    code, _, err = run(["pretrain", "--recipe", recipe + ":smoke", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["recipe"] == recipe + ":smoke"
    assert np.isfinite(metrics["knn"]["encoder"]["knn200_weighted"])
    assert os.path.isfile(os.path.join(out, "model.keras"))


def test_eval_robustness_writes_the_report_and_both_figures(pretrained, folder, tmp_path, capsys):
    _, out = pretrained
    textures = str(tmp_path / "test-textures")
    data_flags = ["--data", folder, "--image-size", "16", "--channels", "1"]
    assert run(["build-textures", *data_flags, "--split", "test", "--out", textures], capsys)[0] == 0
    report_dir = str(tmp_path / "robustness")
    code, stdout, err = run(
        ["eval", "--model", os.path.join(out, "model.keras"), *data_flags, "--no-linear",
         "--robustness", report_dir, "--textures", textures],
        capsys,
    )
    assert code == 0, err
    assert "mean corruption accuracy" in stdout
    with open(os.path.join(report_dir, "robustness.json")) as f:
        results = json.load(f)
    summary = results["summary"]
    assert 0 <= summary["mean_corruption_accuracy"] <= 1 and summary["mean_corruption_error"] > 0
    assert len(results["encoder"]["accuracy"]) == 10
    assert set(results["similarity"]) == {"positive", "negative", "patch", "texture"}
    for name in ("robustness.png", "similarity.png"):
        with open(os.path.join(report_dir, name), "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, name


def test_eval_textures_need_robustness(pretrained, folder, tmp_path, capsys):
    _, out = pretrained
    code, _, err = run(
        ["eval", "--model", os.path.join(out, "model.keras"), "--data", folder, "--image-size", "16",
         "--channels", "1", "--textures", "x"],
        capsys,
    )
    assert_one_line_error(code, err, "--textures=x", "--robustness")


# ------------------------------------------------ eval: model forms, protocols, report
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """One tiny SimCLR (16x16 grey) as a .keras file, a SavedModel, an encoder preset and its .tgz."""
    import tarfile

    import kcl
    from tests.methods.checks import tiny_encoder

    root = tmp_path_factory.mktemp("models")
    model = kcl.methods.SimCLR(
        tiny_encoder(16, 1), augmenter=kcl.methods.SimCLR.default_augmenter(16),
        projection_hidden_dims=(16,), projection_dim=8,
    )
    paths = {"keras": str(root / "model.keras"), "saved_model": str(root / "saved_model"),
             "preset": str(root / "preset"), "archive": str(root / "preset.tgz")}
    model.save(paths["keras"])
    kcl.export.export_saved_model(model, paths["saved_model"], verbose=False)
    kcl.zoo.save_preset(model.encoder, paths["preset"])
    with tarfile.open(paths["archive"], "w:gz") as tar:
        tar.add(paths["preset"], arcname="preset")
    return paths


def eval_argv(model, folder, *extra):
    return ["eval", "--model", model, "--data", folder, "--image-size", "16", "--channels", "1", *extra]


def png_links(markdown):
    import re

    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_eval_report_lists_exactly_the_figures_it_writes(tiny_models, folder, tmp_path, capsys):
    report = tmp_path / "report"
    code, stdout, err = run(
        eval_argv(tiny_models["keras"], folder, "--linear-protocol", "closed_form", "--fine-tune", "0.5",
                  "--fine-tune-epochs", "1", "--saliency-epochs", "1", "--report", str(report)),
        capsys,
    )
    assert code == 0, err
    for stage in ("linear evaluation (closed_form)", "fine-tuning", "t-SNE", "retrieval", "saliency", "report in"):
        assert f"kcl: {stage}" in stdout or stage in stdout, stage
    summary = json.loads((report / "report.json").read_text())
    assert summary["figures"] == ["tsne.png", "retrieval.png", "saliency.png"]
    for name in summary["figures"]:
        data = (report / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000, name
    # report.md links exactly the figures written, and report.json lists every file.
    markdown = (report / "report.md").read_text()
    assert png_links(markdown) == summary["figures"]
    assert sorted(summary["files"]) == sorted(
        str(p.relative_to(report)) for p in report.rglob("*") if p.is_file()
    )
    # Each table computed is in both.
    for heading in ("## kNN", "## Linear evaluation (closed_form)", "## Fine-tuning", "## Saliency"):
        assert heading in markdown, heading
    assert set(summary["linear_eval"]) == {"raw pixels", "encoder"}
    assert 0.0 <= summary["saliency"]["mean_iou"] <= 1.0
    # --fine-tune 0.5 drew a class-balanced half of the 80 training labels and saved it.
    run_05 = summary["fine_tune"]["0.5"]
    assert run_05["num_labelled"] == 40 and run_05["epochs"] == 1
    assert os.path.dirname(run_05["subset_path"]) == str(report / "subsets")
    assert "subsets/subset_50pc.json" in summary["files"]
    assert json.loads((report / "subsets" / "subset_50pc.json").read_text())["format"] == "kcl.label_subset"


def test_eval_of_a_saved_model_matches_the_keras_file(tiny_models, folder, tmp_path, capsys):
    results = {}
    for kind in ("keras", "saved_model"):
        code, _, err = run(
            eval_argv(tiny_models[kind], folder, "--no-linear", "--json", str(tmp_path / f"{kind}.json")),
            capsys,
        )
        assert code == 0, err
        results[kind] = json.loads((tmp_path / f"{kind}.json").read_text())["knn"]["encoder"]
    # The SavedModel gets the uint8 images back exactly and resizes 16x16 to 16x16:
    # the same features up to float rounding, so the same neighbours.
    for metric, accuracy in results["keras"].items():
        assert abs(results["saved_model"][metric] - accuracy) <= 1e-6, metric


def test_eval_report_of_a_saved_model_skips_saliency_with_a_note(tiny_models, folder, tmp_path, capsys):
    report = tmp_path / "report"
    code, _, err = run(eval_argv(tiny_models["saved_model"], folder, "--no-linear", "--report", str(report)), capsys)
    assert code == 0, err
    summary = json.loads((report / "report.json").read_text())
    assert summary["model_kind"] == "saved_model" and summary["saliency"] is None
    assert summary["figures"] == ["tsne.png", "retrieval.png"] and not (report / "saliency.png").exists()
    markdown = (report / "report.md").read_text()
    assert png_links(markdown) == summary["figures"]
    assert "Saliency: not computed" in markdown


def test_eval_of_a_preset_folder_and_archive(tiny_models, folder, tmp_path, capsys):
    knn = {}
    for kind in ("keras", "preset", "archive"):
        code, _, err = run(
            eval_argv(tiny_models[kind], folder, "--no-linear", "--json", str(tmp_path / f"{kind}.json")), capsys
        )
        assert code == 0, err
        knn[kind] = json.loads((tmp_path / f"{kind}.json").read_text())["knn"]["encoder"]
    assert knn["preset"] == knn["keras"] == knn["archive"]


def test_eval_fine_tune_of_a_saved_model_is_refused(tiny_models, folder, capsys):
    code, _, err = run(eval_argv(tiny_models["saved_model"], folder, "--fine-tune", "0.5"), capsys)
    assert_one_line_error(code, err, "--fine-tune", "SavedModel", f"--model={tiny_models['saved_model']}")


def test_eval_fine_tune_subsets_go_under_the_report_else_next_to_json(tmp_path):
    def subset_dir(*flags):
        return cli._subset_dir(cli.build_parser().parse_args(["eval", "--model", "m.keras", *flags]))

    report, results = str(tmp_path / "report"), str(tmp_path / "out" / "results.json")
    assert subset_dir("--report", report, "--json", results) == os.path.join(report, "subsets")
    assert subset_dir("--json", results) == str(tmp_path / "out" / "subsets")
    assert subset_dir() is None


def test_eval_transfer_to_a_mock_tfds_dataset(tiny_models, folder, capsys):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        code, stdout, err = run(
            eval_argv(tiny_models["keras"], folder, "--no-linear", "--transfer", "mnist", "--transfer-limit", "20",
                      "--linear-protocol", "closed_form"),
            capsys,
        )
    assert code == 0, err
    assert "kcl: transfer by linear evaluation (closed_form) to mnist" in stdout
    assert "| mnist | 20 | 20 | closed_form |" in stdout


def test_pretrain_compare_measures_a_zoo_card_on_the_same_bank_and_queries(tmp_path, capsys):
    from kcl import data

    try:
        x_train, y_train = data.load_fashion_mnist("train", download=False, verbose=False)
        x_test, y_test = data.load_fashion_mnist("test", download=False, verbose=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed locally (make data)")
    out = str(tmp_path / "out")
    argv = [
        "pretrain", "--method", "simclr", "--data", "fashion_mnist", "--train-limit", "64", "--test-limit", "32",
        "--backbone", "resnet18_cifar", "--width", "0.125", "--epochs", "1", "--batch-size", "32",
        "--knn-bank", "64", "--knn-every", "0", "--no-probe", "--no-export", "--quiet",
        "--compare", "simclr_r18_fmnist", "--out", out,
    ]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "simclr_r18_fmnist" in stdout  # a row of the printed table
    with open(os.path.join(out, "metrics.json")) as f:
        row = json.load(f)["knn"]["simclr_r18_fmnist"]
    # The shipped encoder measured apart on the run's bank (its 64 training
    # images) and queries (the first 32 test images) gives the same numbers.
    card = kcl.zoo.load("simclr_r18_fmnist")
    bank, queries = kcl.evaluation.embed(card, x_train[:64]), kcl.evaluation.embed(card, x_test[:32])
    assert row["knn200_weighted"] == pytest.approx(
        kcl.evaluation.knn_accuracy(bank, y_train[:64], queries, y_test[:32], k=64, temperature=0.1), abs=1e-6
    )
    assert row["nn20_cosine"] == pytest.approx(
        kcl.evaluation.knn_accuracy(bank, y_train[:64], queries, y_test[:32], k=20, weighted=False), abs=1e-6
    )


@pytest.mark.parametrize(
    "compare, needles",
    [
        ("simclr_r18_mnist", ["--compare takes a zoo card", "simclr_r18_fmnist", "Received: --compare=simclr_r18_mnist"]),
        ("simclr_r18_fmnist", ["takes 28 x 28 x 1 images", "16 x 16 x 1", "Received: --compare=simclr_r18_fmnist"]),
    ],
)
def test_pretrain_compare_refuses_what_it_cannot_measure_before_training(folder, tmp_path, capsys, compare, needles):
    argv = ["pretrain", "--data", folder, "--image-size", "16", "--channels", "1", "--width", "0.125", "--epochs", "1",
            "--batch-size", "16", "--compare", compare, "--out", str(tmp_path / "o")]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, *needles)
    assert not os.path.exists(tmp_path / "o" / "checkpoints")  # refused before training

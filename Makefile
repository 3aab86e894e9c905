# The README's two commands: `make demo` (set-up + embedded pipeline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= 2

.PHONY: setup demo test bench bench-gpu gpu-check clean

setup: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 (CUDA build) come from the pins like everything else.
$(STAMP): envs/requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' envs/requirements.lock)"
	$(PY) -m pip install -q -r envs/requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --cores $(CORES) all

test: setup
	$(PY) -m pytest

# CPU, any machine (e.g. the cluster's login node): the model step, and the loader's img/s per core of each transform
# the pipeline runs (writes results/benchmarks/loader.json, which `absvit plan` reads).
bench: setup
	$(PY) benchmarks/model_step.py
	$(PY) benchmarks/loader.py

# ViT/AbSViT train step, the real pretraining loop, the segmentation step, MFU; writes results/benchmarks/gpu.json.
# Without CUDA it says so and exits 0 (`$(PY) benchmarks/gpu.py --device cpu --smoke`: the code paths at toy size).
bench-gpu: setup
	$(PY) benchmarks/gpu.py

# Every verb that touches a model, on the GPU, at toy size, in minutes (benchmarks/gpu_check.py): run it first on a
# new cluster. DEVICE=cpu runs the same checks on CPU (the test suite does).
DEVICE ?= cuda
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --device $(DEVICE)

clean:
	rm -rf results/benchmarks .snakemake

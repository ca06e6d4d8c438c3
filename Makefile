# The few targets a newcomer needs. `make serve` and `make test` each set up what they need.
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
TRITON_VENV ?= .venv-triton
PY := $(VENV)/bin/python
REPO ?= models
MODEL ?= mnist

.PHONY: help test lint format protos serve model model-cvae compare-priors bench bench-gpu clean system-packages

help:
	@echo "make serve   install the serving extra and serve the bundled model on :50051 (metrics :8000)"
	@echo "make test    install everything the tests need and run the suite"
	@echo "make lint    ruff (lint + format check) and mypy"
	@echo "make protos  regenerate vae/v1/*_pb2*.py from protos/vae/v1/vae.proto"
	@echo "make model   reproduce models/mnist/2, the default: data, train, fine-tune, eval, export, verify, pictures"
	@echo "make model-cvae  reproduce models/mnist-cvae/1, the conditional model, and its judge's figures"
	@echo "make compare-priors  the same network under the normal, mixture and VampPrior priors, briefly"
	@echo "make bench   the side-by-side benchmark suite (docs/benchmarks.md), about 15 minutes"
	@echo "make bench-gpu  on a GPU machine: in-process sweep, CUDA parity, gpu tests, the service (docs/gpu.md), < 4 minutes"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[serve,train,dev,tracing,diffusers]'
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve]'
	touch $@

# Debian's prometheus, haproxy, nodejs and npm: the deployment, balancer and Node client tests run
# the real binaries.
system-packages:
	./scripts/debian-packages.sh

# .venv-triton too: the benchmark suite's test runs every system, Triton included.
test: $(VENV)/.installed $(TRITON_VENV)/.installed system-packages
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The generated code is committed; tests/unit/test_protos.py fails when it is stale. mypy-protobuf
# writes the typed stubs (.pyi) for the messages and for the service, which --pyi_out does not.
protos: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=. \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=. \
		protos/vae/v1/vae.proto

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/vae serve --repo $(REPO) --model $(MODEL)

clean:
	rm -rf $(VENV) $(SERVE_VENV) .pytest_cache .mypy_cache .ruff_cache

# Reproduces the bundled default models/mnist/2 end to end on 2 CPU cores and replaces the committed
# version 2 (docs/results.md): 55 minutes of ELBO training with a VampPrior, 25 of IWAE fine-tuning
# from it, then the k=5000 evaluation of the exported graphs as the service runs them (about 90
# minutes with 2 workers), which the final export copies into model.json. Version 1 (recipe
# normal.toml) stays as it is.
RUN ?= runs/default
TUNED ?= $(RUN)-iwae
model: $(VENV)/.installed
	$(VENV)/bin/vae data mnist
	$(VENV)/bin/vae train --recipe default --run $(RUN)
	$(VENV)/bin/vae curve $(RUN)
	$(VENV)/bin/vae train --recipe default-iwae --run $(TUNED) --set train.init=$(RUN)
	$(VENV)/bin/vae curve $(TUNED)
	$(VENV)/bin/vae sample $(TUNED) --out docs/pictures/v2
	rm -rf $(TUNED)/staging
	$(VENV)/bin/vae export $(TUNED) --repo $(TUNED)/staging --name $(MODEL) --score-k 0
	$(VENV)/bin/vae eval $(TUNED)/staging/$(MODEL)/1 --k 5000 --workers 2 --out $(TUNED)/eval.json
	# A deliberate rebuild of version 2: forget that the number was issued (docs/export.md).
	rm -rf $(REPO)/$(MODEL)/2 $(REPO)/$(MODEL)/.highest-version
	$(VENV)/bin/vae export $(TUNED) --repo $(REPO) --name $(MODEL) --version 2
	$(VENV)/bin/vae verify $(REPO)/$(MODEL)/2
	$(VENV)/bin/vae prior-samples $(REPO)/$(MODEL)/1 $(REPO)/$(MODEL)/2 --temperature 1 0.8 \
		--out docs/pictures/prior-samples.png

# The prior comparison in docs/results.md: the same network and training under each prior for a short
# budget (PRIOR_EPOCHS epochs, KL warm-up over the first), each measured alike: test -ELBO and IW-NLL
# k=200 on the first 1,000 test images. About 10 minutes on 2 CPU cores.
PRIOR_EPOCHS ?= 3
compare-priors: $(VENV)/.installed
	$(VENV)/bin/vae data mnist
	for prior in normal mixture vamp; do \
		$(VENV)/bin/vae train --recipe $$prior --run runs/priors/$$prior --force --no-progress \
			--set train.epochs=$(PRIOR_EPOCHS) --set train.kl_warmup_epochs=1 \
		&& $(VENV)/bin/vae eval runs/priors/$$prior --k 200 --subset 1000 --no-progress || exit 1; \
	done

# Reproduces the bundled conditional model models/mnist-cvae/1 (about 20 minutes of training, 2 hours of
# k=5000 evaluation through the checkpoint, which export copies into model.json, a few minutes for the
# judge; docs/results.md measured the same evaluation on the exported graphs, 1.5 hours).
CVAE_RUN ?= runs/cvae
model-cvae: $(VENV)/.installed
	$(VENV)/bin/vae data mnist
	$(VENV)/bin/vae train --recipe cvae --run $(CVAE_RUN)
	$(VENV)/bin/vae eval $(CVAE_RUN) --k 5000
	$(VENV)/bin/vae sample $(CVAE_RUN) --out docs/pictures/cvae
	rm -rf $(REPO)/mnist-cvae/1 $(REPO)/mnist-cvae/.highest-version
	$(VENV)/bin/vae export $(CVAE_RUN) --repo $(REPO) --name mnist-cvae --version 1
	$(VENV)/bin/vae verify $(REPO)/mnist-cvae/1
	$(VENV)/bin/vae judge $(REPO)/mnist-cvae/1 --judge $(CVAE_RUN)/judge.pt --temperature 1 0.8 --out $(CVAE_RUN)/judge.json

# The side-by-side suite: in-process onnxruntime, our service with and without batching, Triton and a
# bare gRPC echo server, interleaved over several rounds; writes $(BENCH_OUT)/{results.json,summary.md,*.png}.
BENCH_OUT ?= docs/benchmarks
BENCH_ARGS ?=

$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet -e '.[bench]'
	touch $@

# Triton has its own environment: nvidia-pytriton needs numpy<2 and protobuf<7.
$(TRITON_VENV)/.installed: benchmarks/triton-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet -r benchmarks/triton-requirements.txt
	touch $@

bench: $(VENV)/.bench-installed $(TRITON_VENV)/.installed
	$(PY) -m benchmarks.suite --repo $(REPO) --model $(MODEL) --out $(BENCH_OUT) $(BENCH_ARGS)

# On a GPU machine (docs/gpu.md): the in-process sweep, CPU/CUDA parity per TF32 setting, the tests
# marked gpu and the service under issue 29's loads, in under 4 minutes; writes docs/gpu.{md,json}.
# No venv: it runs under the GPU image's python3, with onnxruntime-gpu and the project on PYTHONPATH.
BENCH_GPU_ARGS ?=
bench-gpu:
	$(PYTHON) -m benchmarks.gpu --repo $(REPO) --model $(MODEL) --out docs $(BENCH_GPU_ARGS)

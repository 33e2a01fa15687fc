# Quickstart targets: `make demo` (train on the built-in shapes data, write pictures and metrics) and
# `make test`. Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# Extras to install: `test` for the suite; CI adds `parity` (PyTorch references) and pre-installs the CPU
# build of torch through TORCH_SPEC so that pip does not pull a CUDA build.
EXTRAS ?= test
TORCH_SPEC ?=
RUN ?= runs/demo
PYTEST_ARGS ?=

comma := ,
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))

.PHONY: demo test install clean-demo

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip setuptools wheel

$(STAMP): setup.py | $(VPY)
	$(if $(TORCH_SPEC),$(VPY) -m pip install --quiet "$(TORCH_SPEC)")
	$(VPY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

# The demo grows as models land: each line writes pictures and metrics under $(RUN).
demo: $(STAMP)
	$(VPY) -m t2i_common.data.preview --dataset shapes --num 16 --resolution 64 --out $(RUN)/data_preview
	$(VPY) -m t2i_common.data.shapes_oracle --examples $(RUN)/data_preview/examples.jsonl | tee $(RUN)/data_preview/oracle.json
	@echo "Demo finished: pictures and metrics are under $(RUN)/"

clean-demo:
	rm -rf $(RUN)

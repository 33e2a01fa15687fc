# Quickstart targets: `make demo` (train on the built-in shapes data, write pictures and metrics) and
# `make test`. Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# Extras to install: `test` for the suite; CI adds `parity` (PyTorch references) and pre-installs the CPU
# build of torch through TORCH_SPEC so that pip does not pull a CUDA build.
EXTRAS ?= test
TORCH_SPEC ?=
# Packages installed without their dependencies (CI: open_clip_torch, only for its CLIP vocabulary file;
# pytorch-fid and torch-fidelity, the FID / Inception-score references).
NODEPS_PIP ?=
# torchvision for the FID / IS parity tests, installed beside the venv's site-packages (in $(VENV)/torchvision-nodeps,
# which only those tests put on sys.path): PyPI's torchvision does not import beside the CPU build of torch, and in
# site-packages it would break transformers' imports.
TORCHVISION_SPEC ?=
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
	$(if $(NODEPS_PIP),$(VPY) -m pip install --quiet --no-deps $(NODEPS_PIP))
	$(if $(TORCHVISION_SPEC),$(VPY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/torchvision-nodeps "$(TORCHVISION_SPEC)")
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

# The demo: shapes data preview scored by the oracle; DAMSM pretraining + R-precision; AttnGAN on that DAMSM
# (samples, attention figure, R-precision + oracle); the shapes latent diffusion model (VAE, then UNet + text
# encoder) with oracle-scored samples. Everything lands under $(RUN)/.
demo: $(STAMP)
	$(VPY) -m t2i_common.data.preview --dataset shapes --num 16 --resolution 64 --out $(RUN)/data_preview
	$(VPY) -m t2i_common.data.shapes_oracle --examples $(RUN)/data_preview/examples.jsonl > $(RUN)/data_preview/oracle.json
	$(VPY) -m attngan_jax.pretrain_damsm --config configs/attngan/damsm_shapes.py --workdir $(RUN)/damsm_shapes
	$(VPY) -m attngan_jax.evaluate_damsm --config configs/attngan/damsm_shapes.py --workdir $(RUN)/damsm_shapes
	$(VPY) -m attngan_jax.train --config configs/attngan/attngan_shapes.py --workdir $(RUN)/attngan_shapes \
	    --config.damsm.workdir=$(RUN)/damsm_shapes
	$(VPY) -m attngan_jax.evaluate --config configs/attngan/attngan_shapes.py --workdir $(RUN)/attngan_shapes
	$(VPY) -m attngan_jax.sample --workdir $(RUN)/attngan_shapes --caption "a red circle and a blue square" \
	    --caption "a small yellow triangle above a large green heart" --seeds 0-3 --out $(RUN)/attngan_shapes/cli_samples
	$(VPY) -m diffusion_jax.train --config configs/diffusion/shapes_vae.py --workdir $(RUN)/shapes_vae
	$(VPY) -m diffusion_jax.train --config configs/diffusion/shapes_ldm.py --workdir $(RUN)/shapes_ldm \
	    --config.model.vae_path=$(RUN)/shapes_vae/vae
	$(VPY) -m diffusion_jax.evaluate --config configs/diffusion/shapes_ldm.py --workdir $(RUN)/shapes_ldm \
	    --config.model.sampling.num_images=96
	@echo "Demo finished. Pictures and metrics are under $(RUN)/:"
	@echo "  $(RUN)/data_preview/grid.png (+ oracle.json)   shapes examples with captions"
	@echo "  $(RUN)/damsm_shapes/attention/, eval/r_precision.json   DAMSM word attention, R-precision"
	@echo "  $(RUN)/attngan_shapes/cli_samples/grid.png, attention.png   AttnGAN samples (every stage), attention figure"
	@echo "  $(RUN)/attngan_shapes/samples/, eval/attngan.json, eval/grid.png   training pictures, R-precision + oracle"
	@echo "  $(RUN)/shapes_vae/reconstructions/   VAE reconstructions"
	@echo "  $(RUN)/shapes_ldm/samples/final.png, metrics.jsonl   LDM samples and their oracle scores"
	@echo "  $(RUN)/shapes_ldm/samples/eval.png, eval/samples.json   96 test captions sampled and scored"
	@echo "  $(RUN)/shapes_ldm/pipeline   the trained model as a diffusers folder (diffusion_jax.from_pretrained)"

clean-demo:
	rm -rf $(RUN)

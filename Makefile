# `make demo` and `make test` install what they need into .venv first.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test test-fast lint bench bench-gpu image install browser

install: $(VENV)/.installed

# PyPI's Linux torch is its CUDA build, with several GB of CUDA libraries (what the GPU image takes). Where there is
# no NVIDIA GPU (CI, a laptop): `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build.
TORCH_INDEX ?=

$(VENV)/.installed: requirements.txt requirements-test.txt
	python3.11 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PYTHON) -m pip install --quiet --index-url $(TORCH_INDEX) "$$(grep '^torch==' requirements.txt)")
	$(PYTHON) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

weights/demo/README.md: stable_diffusion_xl/weights/demo.py | install  # rebuilt when the builder changes
	$(PYTHON) -m stable_diffusion_xl demo-weights

demo: install weights/demo/README.md
	$(PYTHON) -m stable_diffusion_xl try -i '{"prompt": "cat napping"}' --demo -o out/

test: lint browser
	$(PYTHON) -m pytest -q

# The page's tests drive Debian's headless Chromium (tests/browser.py); installed once, as root or through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	    { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Everything but the tests that start Ray Serve, subprocesses or fresh environments, or make many denoising
# steps: under a minute.
test-fast: lint
	$(PYTHON) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PYTHON) bench/run.py

# On a CUDA GPU with the real weights (fetch-weights): eager, compiled and compiled + fp8, batch 1 and 4, at 1024².
bench-gpu: install
	$(PYTHON) bench/gpu.py

# `make image IMAGE=<namespace>/<model-id>:<version>` runs `instill build` in a clean folder, out/image.
# `instill build` copies its whole working folder into a temporary build context (following symlinks)
# before docker applies .dockerignore: run in the project folder, it would copy .venv (twice, through
# lib64) and weights/demo. out/image holds only the project's files (git ls-files: tracked, plus new files
# git does not ignore) and links to the fetched weights that weights/manifest.json lists (the optional safety
# checker when it was fetched), to the LoRA adapters in weights/loras and to the compile cache in
# weights/compile-cache when it was built; the SDK's copy
# then reads each weight file once (about 12 GB written to $TMPDIR, which needs the space).
IMAGE ?= admin/stable-diffusion-xl:v0.2.0
IMAGE_DIR := out/image

# The weight files the image needs: the manifest's, the optional safety checker's when it was fetched.
IMAGE_WEIGHTS := out/image-weights.txt

image: install
	mkdir -p out && $(PYTHON) -c 'from pathlib import Path; from stable_diffusion_xl.weights.layout import load_manifest; \
	    [print(f"{s.folder}/{name}") for s in load_manifest().values() for name in s.files \
	     if not s.optional or Path("weights", s.folder).is_dir()]' > $(IMAGE_WEIGHTS)
	@# Every weight file is checked before out/image is touched: a missing one leaves no half-built folder.
	@while read -r file; do test -f "weights/$$file" || { echo "weights/$$file is missing: run $(PYTHON) -m stable_diffusion_xl fetch-weights" >&2; exit 1; }; done < $(IMAGE_WEIGHTS)
	rm -rf $(IMAGE_DIR) && mkdir -p $(IMAGE_DIR)
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(IMAGE_DIR)
	while read -r file; do \
	    mkdir -p "$$(dirname "$(IMAGE_DIR)/weights/$$file")" && ln -s "$(CURDIR)/weights/$$file" "$(IMAGE_DIR)/weights/$$file" || exit 1; \
	done < $(IMAGE_WEIGHTS)
	# LoRA adapters (weights/loras/<name>.safetensors) travel with the image; their download bookkeeping does not.
	mkdir -p $(IMAGE_DIR)/weights/loras && for lora in weights/loras/*.safetensors; do \
	    test -f "$$lora" && ln -s "$(CURDIR)/$$lora" "$(IMAGE_DIR)/$$lora" || true; \
	done
	# The compile cache (`python -m stable_diffusion_xl compile-cache`), when built: SDXL_COMPILE=1 replicas load the
	# entry made for their GPU and torch instead of compiling. Half-written temporaries (.*) stay behind.
	test ! -d weights/compile-cache || find weights/compile-cache -type f ! -name '.*' | while read -r file; do \
	    mkdir -p "$$(dirname "$(IMAGE_DIR)/$$file")" && ln -s "$(CURDIR)/$$file" "$(IMAGE_DIR)/$$file" || exit 1; \
	done
	cd $(IMAGE_DIR) && $(abspath $(VENV))/bin/instill build $(IMAGE) 2>&1 | tee $(CURDIR)/out/image-build.log
	@! grep -q -e 'Build failed' -e 'Prepare failed' -e Traceback out/image-build.log  # the CLI exits 0 on failure

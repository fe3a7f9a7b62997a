# `make demo` and `make test` install what they need into .venv first.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test bench install

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt
	python3.11 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

weights/demo/README.md: | install
	$(PYTHON) -m stable_diffusion_xl demo-weights

demo: install weights/demo/README.md
	$(PYTHON) -m stable_diffusion_xl try -i '{"prompt": "cat napping"}' --demo -o out/

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/run.py

# Stacklab: `make run` to start it, `make test` to run the whole suite. Both set everything up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
export STACKLAB_RUN_DIR ?= $(CURDIR)/.run
export STACKLAB_PORT ?= 8000

.PHONY: setup venv frontend engine images run test lint bench bench-page

setup: venv frontend engine images

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	scripts/ensure-python.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# The lab page's browser libraries (xterm.js, uPlot), installed from package-lock.json and served
# by Django as static files straight from node_modules. npm ci rewrites node_modules/.package-lock.json.
frontend: node_modules/.package-lock.json

node_modules/.package-lock.json: package-lock.json
	scripts/ensure-node.sh
	npm ci --no-audit --no-fund
	touch $@

# A reachable Docker engine (installed and started on Debian as root), and the lab base image.
engine:
	scripts/ensure-docker.sh
	scripts/seed-base-image.sh

images: venv engine
	$(VENV)/bin/python manage.py build_lab_images

run: setup
	scripts/run.sh

test: setup
	scripts/ensure-browser.sh
	scripts/test.sh $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	scripts/with-redis.sh $(VENV)/bin/python bench/lab_timings.py $(BENCH_ARGS)

bench-page: setup
	scripts/ensure-browser.sh
	scripts/bench-page.sh $(BENCH_ARGS)

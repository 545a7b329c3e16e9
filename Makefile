# make run  — set up (.venv, install, migrate, demo district) and serve on :8000 with the simulator
# make test — set up, lint (ruff, mypy, hadolint) and run the whole suite (SQLite, PostgreSQL, Redis)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The demo lives inside the 2021 collection window (2020-10-01 .. 2020-12-20, Beijing time).
COLLECT_NOW ?= 2020-11-02T09:00:00+08:00
PORT ?= 8000
# what QR codes, notify URLs and the simulator's clients use: the port make run serves on
PUBLIC_BASE_URL ?= http://127.0.0.1:$(PORT)

.PHONY: run test lint install migrate demo serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(BIN)/python -m backend migrate

demo: migrate
	COLLECT_NOW=$(COLLECT_NOW) $(BIN)/python -m backend demo

run: demo
	PAYMENT_SANDBOX=1 COLLECT_NOW=$(COLLECT_NOW) PUBLIC_BASE_URL=$(PUBLIC_BASE_URL) \
		$(BIN)/python -m backend serve --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check backend payment_adapters tests bench miniprogram_contracts
	$(BIN)/mypy backend payment_adapters
	$(BIN)/hadolint Dockerfile

test: $(STAMP) lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) data

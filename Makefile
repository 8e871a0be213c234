# qbcallbacks — everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
QBDIR  ?= $(CURDIR)
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: setup run test lint typecheck bench bench-quick install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	QBDIR=$(QBDIR) $(VENV)/bin/qbsupervisor serve --config etc/qb.conf

test: setup
	$(PY) -m pytest -q
	$(MAKE) lint typecheck

lint: setup
	$(VENV)/bin/ruff check supervisord tests bench callback
	$(VENV)/bin/ruff format --check supervisord tests bench callback
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy --strict supervisord

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

bench-quick: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py --quick

install:
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	install -m 0644 systemd/qbcallbacks.service systemd/qbcallbacks.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

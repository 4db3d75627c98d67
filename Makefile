# stacklock — two commands do all the set-up on a fresh Debian 12 machine:
#   make demo   the main job on the local lab: provision dev/staging/prod, configure, verify
#   make test   the whole test suite (lint, generated files, unit, integration)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STACKLOCK := $(VENV)/bin/stacklock
STAMP := $(VENV)/.stacklock-installed
# checkov lives in its own virtual environment: it pins older boto3/packaging than stacklock
CHECKOV_VENV := .cache/checkov-venv
CHECKOV := $(CHECKOV_VENV)/bin/checkov
PYTHON ?= python3

.PHONY: demo upgrade-demo test check lint unit integration prereqs venv clean-lab render-check help monitoring

help:
	@echo "make demo   provision and verify the local lab (dev, staging, prod)"
	@echo "make upgrade-demo   the upgrading walkthrough (docs/upgrading.md): promote dev -> staging -> prod (canary), roll back"
	@echo "make test   run the whole test suite"
	@echo "make check  the fast lane: lint, types, layers, generated files, unit tests (< 3 min)"
	@echo "make monitoring  promtool on the alert rules and their tests, the dashboard, the lab Prometheus config"

prereqs:
	@scripts/bootstrap.sh

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing stacklock with its dev tools"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

$(CHECKOV):
	@echo "==> installing checkov into $(CHECKOV_VENV) (security scan of the AWS Terraform)"
	@$(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	@$(CHECKOV_VENV)/bin/pip install -q checkov==3.3.30

demo: prereqs venv
	@$(STACKLOCK) --manifest examples/lab.yaml demo

upgrade-demo: prereqs venv
	@scripts/upgrade-walkthrough.sh

test: prereqs venv $(CHECKOV)
	@STACKLOCK_CHECKOV=$(CURDIR)/$(CHECKOV) scripts/test.sh

check: prereqs venv
	@scripts/check.sh

lint: venv
	@scripts/static.sh

monitoring: venv
	@scripts/promtool.sh

clean-lab: venv
	@$(STACKLOCK) --manifest examples/lab.yaml destroy --all || true

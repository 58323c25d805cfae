# Build and test entry points of the secretserver.backup collection (repository root =
# collection root). `make help` lists the targets; tests/tools/README.md explains them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

ROOT := $(CURDIR)
TMP := $(ROOT)/.tmp
TOOLS := $(ROOT)/tests/tools
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.ssb-stamp
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)

# The dev venv runs on a real 3.11 (the default controller) when there is one; pyenv shims
# are skipped because they fail for unselected versions.
BASE_PYTHON ?= $(or $(shell python3 $(TOOLS)/find_pythons.py --quiet 3.11 2>/dev/null \
	| cut -d' ' -f2),python3)

# Playbooks and pytest find the collection through this symlink to the checkout.
COLL_PARENT := $(TMP)/collections
COLL_LINK := $(COLL_PARENT)/ansible_collections/secretserver/backup

# Set to 0 to leave the controller/managed-host matrix out of `make test`.
TEST_MATRIX ?= 1
# Set to 1 (CI does) to fail the matrix when a Python it needs is missing instead of skipping.
MATRIX_STRICT ?= 0
# One matrix cell only, e.g. MATRIX_CELL=core2.16-py3.8.
MATRIX_CELL ?=
PYTEST_ARGS ?=
# Unit tests are independent, so they use both cores; XDIST= runs them in one process.
XDIST ?= -n auto
SANITY_ARGS ?=
BENCH_ARGS ?=

# The controller and managed-host Python the tests use (tests/tools/README.md); the defaults
# are the dev venv, whose Python has requests. `make matrix` sets other ones per cell.
SSB_ANSIBLE_BIN_DIR ?= $(BIN)
SSB_MANAGED_PYTHON ?= $(PY)

# Everything that runs Ansible gets the dev venv, the collection and a loopback-safe proxy
# setting.
ANSIBLE_ENV = PATH="$(SSB_ANSIBLE_BIN_DIR):$(BIN):$$PATH" \
	ANSIBLE_COLLECTIONS_PATH="$(COLL_PARENT)" SSB_COLLECTIONS_PATH="$(COLL_PARENT)" \
	SSB_ANSIBLE_BIN_DIR="$(SSB_ANSIBLE_BIN_DIR)" SSB_MANAGED_PYTHON="$(SSB_MANAGED_PYTHON)" \
	ANSIBLE_PYTHON_INTERPRETER="$(SSB_MANAGED_PYTHON)" \
	NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"

# $(call pytest,STEP,ARGS[,PYTHONPATH]): pytest that fails loudly, also when it collected no
# test at all. No PYTHONPATH by default: tests/support.py puts the collection on sys.path, and
# on PYTHONPATH every ansible child process would see the checkout as an installed collection.
define pytest
	@echo "==> $(1): pytest $(2)"
	@rc=0; $(ANSIBLE_ENV) $(if $(3),PYTHONPATH="$(3)") $(PY) -m pytest $(2) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "$(1): FAILED, pytest collected no tests from $(2)"; \
	elif [ $$rc -ne 0 ]; then echo "$(1): FAILED (pytest exit $$rc)"; fi; exit $$rc
endef

.PHONY: help venv collection-link demo test units units-ansible-test integration integration-pytest \
	integration-pytest-run \
	integration-targets sanity lint docs bench soak matrix build changelog ee clean distclean

help:
	@echo "secretserver.backup $(VERSION)"
	@echo "  make venv         dev venv (.venv) and the collection symlink under .tmp/collections"
	@echo "  make demo         back up the emulator's exports twice with playbooks/backup.yml"
	@echo "  make test         units, integration, sanity, lint, then matrix (TEST_MATRIX=0: not)"
	@echo "  make units        pytest tests/unit"
	@echo "  make integration  pytest tests/integration + ansible-test targets, if any"
	@echo "  make sanity       ansible-test sanity, offline, on every Python 3.8-3.13 found"
	@echo "  make lint         ansible-lint (production), collection docs, changelog, EE file"
	@echo "  make docs         ansible-doc of every module and role, RST into .tmp/docs"
	@echo "  make matrix       integration on core 2.16/py3.8 hosts and newest core/py3.13 hosts"
	@echo "  make bench        tests/bench/run.py"
	@echo "  make soak         pytest tests/soak with the Hypothesis 'soak' profile (>=1000)"
	@echo "  make build        collection tarball into .tmp/dist"
	@echo "  make changelog    update changelogs/changelog.yaml for $(VERSION) and CHANGELOG.md"
	@echo "  make clean        remove .tmp and caches (distclean: also .venv)"

venv: $(STAMP) collection-link

$(STAMP): tests/requirements.txt requirements.txt
	@echo "==> venv: $(BASE_PYTHON) -> .venv"
	@test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r tests/requirements.txt -r requirements.txt
	@$(PY) -c 'import ansible.release as r; print("    ansible-core", r.__version__)'
	@touch $@

# Re-pointed every time: cheap, and right after the checkout moves.
collection-link:
	@mkdir -p $(dir $(COLL_LINK))
	@ln -sfn $(ROOT) $(COLL_LINK)

demo: venv
	@SSB_VENV_BIN=$(BIN) bash $(TOOLS)/demo.sh

test: venv
	@MAKE="$(MAKE)" bash $(TOOLS)/run_steps.sh units integration sanity lint \
		$(if $(filter 1,$(TEST_MATRIX)),matrix)

units: venv
	$(call pytest,units,tests/unit -q $(XDIST) $(PYTEST_ARGS))
	@$(MAKE) --no-print-directory units-ansible-test

# The same unit tests the way ansible-test runs them (its own venv, its pytest settings), on a
# copy laid out as ansible_collections/secretserver/backup.
units-ansible-test: venv
	@echo "==> units: ansible-test units --python 3.11"
	@$(PY) $(TOOLS)/place_get_pip.py --python $(PY) >/dev/null
	@dest=$$($(PY) $(TOOLS)/collection_copy.py $(TMP)/ansible-test-units); \
	cd "$$dest" && env -u ANSIBLE_COLLECTIONS_PATH PATH="$(BIN):$$PATH" \
		$(BIN)/ansible-test units --venv --python 3.11 --color no \
		|| { echo "units: FAILED (ansible-test units)"; exit 1; }

# Both halves run even when the first fails, so one run reports both.
integration: venv
	@rc=0; $(MAKE) --no-print-directory integration-pytest || rc=1; \
	$(MAKE) --no-print-directory integration-targets || rc=1; exit $$rc

# A short base for tmp_path: ansible-core 2.21 opens a Unix socket under TMPDIR (at most 108
# bytes of path), and tests point TMPDIR below tmp_path.
integration-pytest: venv
	@base=$$(mktemp -d /tmp/ssb-XXXXXX) && trap 'rm -rf "$$base"' EXIT \
		&& $(MAKE) --no-print-directory integration-pytest-run BASETEMP="$$base"

integration-pytest-run:
	$(call pytest,integration,tests/integration -q --basetemp $(BASETEMP) $(PYTEST_ARGS))

# ansible-test needs a real ansible_collections/<ns>/<name> directory, hence the copy.
integration-targets: venv
	@if compgen -G 'tests/integration/targets/*/' >/dev/null; then \
		echo "==> integration: ansible-test integration"; \
		dest=$$($(PY) $(TOOLS)/collection_copy.py $(TMP)/ansible-test); \
		cd "$$dest" && env -u ANSIBLE_COLLECTIONS_PATH PATH="$(BIN):$$PATH" \
			$(BIN)/ansible-test integration --color no -v \
			|| { echo "integration: FAILED (ansible-test integration)"; exit 1; }; \
	else echo "==> integration: no tests/integration/targets, ansible-test skipped"; fi

sanity: venv
	@$(PY) $(TOOLS)/run_sanity.py --venv-bin $(BIN) -- $(SANITY_ARGS) \
		|| { echo "sanity: FAILED"; exit 1; }

lint: venv ee
	@echo "==> lint: ansible-lint --profile production $(wildcard roles playbooks)"
	@$(ANSIBLE_ENV) $(BIN)/ansible-lint --offline --profile production $(if $(CI),--nocolor) \
		$(wildcard roles playbooks) || { echo "lint: FAILED (ansible-lint)"; exit 1; }
	@echo "==> lint: antsibull-docs lint-collection-docs"
	@$(ANSIBLE_ENV) $(BIN)/antsibull-docs lint-collection-docs --plugin-docs $(COLL_LINK) \
		|| { echo "lint: FAILED (antsibull-docs)"; exit 1; }
	@echo "==> lint: antsibull-changelog"
	@$(ANSIBLE_ENV) $(BIN)/antsibull-changelog lint \
		|| { echo "lint: FAILED (changelog fragments)"; exit 1; }
	@$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml \
		|| { echo "lint: FAILED (changelogs/changelog.yaml)"; exit 1; }
	@copy=$$($(PY) $(TOOLS)/collection_copy.py $(TMP)/changelog-check) \
		&& $(MAKE) --no-print-directory changelog CHANGELOG_DIR="$$copy" \
		CHANGELOG_COLLECTIONS=$(TMP)/changelog-check >/dev/null \
		&& cmp -s "$$copy/changelogs/changelog.yaml" changelogs/changelog.yaml \
		&& cmp -s "$$copy/CHANGELOG.md" CHANGELOG.md \
		|| { echo "lint: FAILED, the changelog is stale: run make changelog"; exit 1; }

# The execution-environment file must work both ways ansible-builder uses it: as the EE
# definition (create) and as this collection's dependency list inside an EE (introspect).
ee: venv
	@echo "==> ee: ansible-builder create and introspect (in .tmp/ee)"
	@rm -rf $(TMP)/ee && mkdir -p $(TMP)/ee/def
	@cp meta/execution-environment.yml requirements.txt bindep.txt $(TMP)/ee/def/
	@cd $(TMP)/ee/def && $(BIN)/ansible-builder create -f execution-environment.yml \
		-c ../context >/dev/null || { echo "ee: FAILED (ansible-builder create)"; exit 1; }
	@$(PY) $(TOOLS)/collection_copy.py $(TMP)/ee/collections >/dev/null
	@deps=$$($(BIN)/ansible-builder introspect --sanitize $(TMP)/ee/collections) \
		&& grep -q 'requests.*from collection secretserver.backup' <<<"$$deps" \
		|| { echo "ee: FAILED (introspect misses requirements.txt)"; exit 1; }

docs: venv
	@echo "==> docs: ansible-doc for every module and role"
	@for m in $$(cd plugins/modules 2>/dev/null && ls *.py | grep -v '^_' | sed 's/\.py$$//'); do \
		$(ANSIBLE_ENV) $(BIN)/ansible-doc -t module secretserver.backup.$$m >/dev/null \
			|| { echo "docs: FAILED (module $$m)"; exit 1; }; echo "    module $$m"; done
	@for r in $$(ls -d roles/*/ 2>/dev/null | xargs -rn1 basename); do \
		$(ANSIBLE_ENV) $(BIN)/ansible-doc -t role secretserver.backup.$$r >/dev/null \
			|| { echo "docs: FAILED (role $$r)"; exit 1; }; echo "    role $$r"; done
	@rm -rf $(TMP)/docs && mkdir -p $(TMP)/docs
	@$(ANSIBLE_ENV) $(BIN)/antsibull-docs collection --use-current --dest-dir $(TMP)/docs \
		secretserver.backup >/dev/null || { echo "docs: FAILED (antsibull-docs)"; exit 1; }
	@echo "    RST in $(TMP)/docs"

matrix: venv
	@$(PY) $(TOOLS)/matrix.py --harness-python $(PY) \
		$(if $(filter 1,$(MATRIX_STRICT)),--strict) $(if $(MATRIX_CELL),--only $(MATRIX_CELL)) \
		-- -q $(PYTEST_ARGS) \
		|| { echo "matrix: FAILED"; exit 1; }

bench: venv
	@test -f tests/bench/run.py || { echo "bench: FAILED, tests/bench/run.py missing"; exit 1; }
	@$(ANSIBLE_ENV) $(PY) tests/bench/run.py $(BENCH_ARGS)

# The Hypothesis profile plugin lives in tests/tools.
soak: venv
	$(call pytest,soak,-p hypothesis_profiles --hypothesis-profile soak tests/soak -q,$(TOOLS))

build: venv
	@rm -rf $(TMP)/dist && mkdir -p $(TMP)/dist
	@$(BIN)/ansible-galaxy collection build --force --output-path $(TMP)/dist . \
		|| { echo "build: FAILED"; exit 1; }
	@tar -tzf $(TMP)/dist/secretserver-backup-$(VERSION).tar.gz \
		| grep -E '^tests/(emulator|tools|bench|soak)/|^\.tmp/|^\.venv/' \
		&& { echo "build: FAILED, dev-only files in the tarball"; exit 1; } || true

# Until $(VERSION) ships, its entry is rebuilt from the kept fragments and the modules' docs:
# release adds new fragments and modules, generate refreshes edited ones. The plugin cache is
# only a speed-up, so it is not kept. CHANGELOG_DIR lets lint run this on a copy.
CHANGELOG_DIR ?= $(ROOT)
CHANGELOG_COLLECTIONS ?= $(COLL_PARENT)
CHANGELOG_ENV = $(ANSIBLE_ENV) ANSIBLE_COLLECTIONS_PATH="$(CHANGELOG_COLLECTIONS)"
changelog: venv
	@# Re-releasing an unshipped version always warns that it exists and lacks a summary.
	@cd $(CHANGELOG_DIR) && out=$$($(CHANGELOG_ENV) $(BIN)/antsibull-changelog release \
		--version $(VERSION) --reload-plugins 2>&1) || { echo "$$out"; exit 1; }; \
		grep -v -e 'already exists' -e 'no release_summary section' <<<"$$out" || true
	@cd $(CHANGELOG_DIR) && $(CHANGELOG_ENV) $(BIN)/antsibull-changelog generate \
		--reload-plugins --refresh-plugins --refresh-fragments
	@rm -f $(CHANGELOG_DIR)/changelogs/.plugin-cache.yaml

clean:
	rm -rf $(TMP) tests/output .pytest_cache .hypothesis changelogs/.plugin-cache.yaml
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

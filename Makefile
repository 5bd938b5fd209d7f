# Every target installs dependencies first when node_modules is missing, so each works on a fresh clone.
.PHONY: all deps build test lint cluster bench sim clean zodb-suites zodb-venv

all: build

node_modules/.package-lock.json: package.json package-lock.json
	npm ci

deps: node_modules/.package-lock.json

build: deps
	npm run build

test: deps zodb-venv
	npm test

lint: deps
	npm run lint

sim: deps
	npm run sim -- --seeds 200

cluster: deps
	npm run cluster

# ZODB's and ZEO's own storage test suites through the ZEO door of a three-node cluster, with the
# real Python ZEO client from a virtual environment of pinned packages (created when missing), then
# the tests that need that environment (test/zodb/*.test.ts: moving a FileStorage in with zodbconvert).
# Debian's Python (python3-venv): the one CI installs packages for.
ZODB_VENV := .venv-zodb
ZODB_PYTHON ?= /usr/bin/python3

$(ZODB_VENV)/.installed: test/zodb/requirements.txt
	rm -rf $(ZODB_VENV)
	$(ZODB_PYTHON) -m venv $(ZODB_VENV)
	$(ZODB_VENV)/bin/pip install --quiet --disable-pip-version-check -r test/zodb/requirements.txt
	touch $@

zodb-venv: $(ZODB_VENV)/.installed

# The second run: the undo, iteration, pack, history and conflict tests again over pickle framing
# (Z5), which the nodes greet with when ZEORAFT_ZEO_ENCODING=pickle.
ZODB_Z5_TESTS := -k Undo -k Iterat -k Pack -k History -k Revision -k Conflict -k Extension

zodb-suites: build $(ZODB_VENV)/.installed
	$(ZODB_VENV)/bin/python test/zodb/run_suites.py
	ZEORAFT_ZEO_ENCODING=pickle $(ZODB_VENV)/bin/python test/zodb/run_suites.py $(ZODB_Z5_TESTS)
	npx mocha --no-config --timeout 300000 --exit dist/test/zodb/*.test.js

bench: deps
	npm run bench

clean:
	rm -rf dist

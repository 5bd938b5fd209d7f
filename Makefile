# Every target installs dependencies first when node_modules is missing, so each works on a fresh clone.
.PHONY: all deps build test lint cluster bench sim clean

all: build

node_modules/.package-lock.json: package.json package-lock.json
	npm ci

deps: node_modules/.package-lock.json

build: deps
	npm run build

test: deps
	npm test

lint: deps
	npm run lint

sim: deps
	npm run sim -- --seeds 200

cluster: deps
	npm run cluster

bench: deps
	npm run bench

clean:
	rm -rf dist

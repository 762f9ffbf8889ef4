# The two commands (README): `make demo` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: demo test unit lint setup clean-cache

setup:
	@scripts/bootstrap.sh

demo: setup
	@$(ENV) .venv/bin/ray-rlhf demo $(ARGS)

test: setup
	@$(ENV) .venv/bin/ruff check ray_rlhf tests jobs benchmarks experiments examples && \
	  .venv/bin/python -m pytest -q --durations=30 $(ARGS)

unit: setup
	@$(ENV) .venv/bin/python -m pytest -q tests/unit $(ARGS)

lint: setup
	@$(ENV) .venv/bin/ruff check ray_rlhf tests jobs benchmarks experiments examples

clean-cache:
	rm -rf .cache

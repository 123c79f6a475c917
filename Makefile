# megactor-pipeline: `make demo` runs the curation flow end to end; `make test` runs the test suite.
# Both create .venv on first use (needs python3 >= 3.11 and ffmpeg on PATH).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
OUT ?= demo-out
INPUT ?=
# pip's configured find-links (e.g. a local CPU torch wheel) for uv, which does not read pip's configuration
PIP_FIND_LINKS := $(shell python3 -m pip config get global.find-links 2>/dev/null)
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

# Tests and the demo read the shared clips and small weights through these two settings.
ifneq ($(wildcard $(SHARED)/videos),)
export MEGACTOR_ASSETS ?= $(SHARED)
endif
ifneq ($(wildcard $(SHARED)/weights),)
export MEGACTOR_WEIGHTS_DIR ?= $(SHARED)/weights
endif

.PHONY: install system-deps demo test lint bench clean

install: $(VENV)/.installed

# What pip cannot install: ffmpeg, and the libraries OpenCV (from mediapipe) loads. As root on Debian/Ubuntu they
# are installed; otherwise the exact command is printed.
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing="ffmpeg"; \
	if command -v ldconfig >/dev/null; then \
	  ldconfig -p | grep -q 'libGL.so.1' || missing="$$missing libgl1"; \
	  ldconfig -p | grep -q 'libglib-2.0.so.0' || missing="$$missing libglib2.0-0"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$${missing:+ }$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "install them with: sudo apt-get install -y$$missing   (Debian/Ubuntu; macOS: brew install ffmpeg)"; \
	    exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	@command -v uv >/dev/null || python3 -m pip install -q uv
	uv venv -q --allow-existing $(VENV) --python python3
	uv pip install -q --python $(PY) $(FIND_LINKS) -e '.[dev,paper,train,augment]'
	uv pip install -q --python $(PY) --no-deps syncnet-python==0.2.3
	# the metric references the parity tests run (their declared torchvision would break this environment)
	uv pip install -q --python $(PY) --no-deps pytorch-fid==0.3.0 lpips==0.1.4 cd-fvd==0.1.1
	@touch $@

demo: install
	$(PY) -m flows.demo --output $(OUT) $(if $(INPUT),--input $(INPUT))

test: install
	$(PY) -m pytest -q --durations=25

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/curation_rtf.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

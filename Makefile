# Set-up and tests. `make install` builds .venv/ from nothing (idempotent); `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: install test clean-venv

install: $(STAMP)

# learn2learn 0.2.0's shipped C files do not compile on Python 3.11: rebuild them with Cython,
# without its pinned extras (gsutil, qpth), then add the imports the parts we use really need.
$(STAMP): pyproject.toml Makefile tasks/data/glyph_fonts.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q cython setuptools wheel numpy
	$(PY) -c "import learn2learn" 2>/dev/null || $(PIP) install -q --no-deps --no-build-isolation \
		--use-pep517 --config-settings=--build-option=build_ext learn2learn==0.2.0
	$(PIP) install -q numpy scipy requests tqdm cloudpickle higher==0.2.1
	$(PIP) install -q --no-deps gym==0.26.2  # without gym-notices, which prints a banner on every import
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	$(PY) -m tasks.data.fonts install  # the glyph set's pinned fonts, into $(VENV)/share/gessl/fonts
	touch $(STAMP)

test: install
	$(PY) -m pytest -n 2 tests

clean-venv:
	rm -rf $(VENV)

# The two Quick start commands live here: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: demo test install install-test

$(VENV)/.runtime: requirements.txt
	python3 -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.test: requirements-test.txt requirements-ray.txt $(VENV)/.runtime
	$(PIP) -r requirements-test.txt
	scripts/install-chromium.sh
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

demo: $(VENV)/.runtime
	$(PY) -m streamlit run app.py

test: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

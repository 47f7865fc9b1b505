# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# torch and torchvision are pinned to the builds that lie on this machine's disk;
# pip installs them first so the rest of the resolve never asks for another torch.
$(VENV)/.installed: pyproject.toml
	@# the HTML report's tests drive Debian's Chromium (Playwright's own browser download needs the internet)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/archfit analyze mlp-custom-op --tiny
	$(BIN)/archfit compile bert-base --target openvino

test: install
	$(BIN)/pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch is pinned and installed first so pip takes the local CPU wheel, never a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet -e ".[dev,qnn]" || echo "onnxruntime-qnn could not be installed: qnn-htp artifacts will be skipped"
	$(BIN)/pip install --quiet -e ".[dev,openvino]" "torch==2.13.0" || echo "openvino could not be installed: openvino artifacts will be skipped"
	$(BIN)/pip install --quiet -e ".[dev,executorch]" "torch==2.13.0" || echo "executorch could not be installed: executorch-* artifacts will be skipped"
	$(BIN)/pip install --quiet -e ".[dev,litert]" "torch==2.13.0" || echo "litert could not be installed: tflite-int8 artifacts will be skipped"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: install
	$(BIN)/edgeser compress --recipe recipes/demo.yaml --out runs/demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf runs .pytest_cache

# One command each: `make course` runs every lesson, `make test` runs every test.
# Each target creates .venv on first use (Python 3.11, the pinned requirements.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DALLE_HEADLESS := 1
export PYTHONHASHSEED := 0

.PHONY: setup test unit course demo lab bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	# OpenAI's released dVAE, only to test that our paper-size dVAE is weight-compatible
	# (--no-deps: its declared needs would pull torchvision and a CUDA torch)
	$(BIN)/python -m pip install -q --no-deps DALL-E==0.1
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# unit tests, then every notebook through nbval (2 workers; a notebook stays on one worker).
# One torch thread per worker: two workers of two threads on two cores oversubscribe, and
# OpenMP's spinning threads then slow every step many times over.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope -q

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q

# execute every notebook in order, in place, headless; print where the results are
course: $(STAMP)
	$(BIN)/python -m dalle_mini_impl.course

# text-to-image from the tiny system shipped in data/dalle_shapes_toy
demo: $(STAMP)
	$(BIN)/python -m dalle_mini_impl generate "a large yellow square at the top" \
		"a small red circle on the left" --n 8 --out outputs/demo.png
	@echo "wrote outputs/demo.png"

lab: $(STAMP)
	unset DALLE_HEADLESS; $(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache

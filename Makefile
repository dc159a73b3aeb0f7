# One command each: `make course` runs every lesson, `make test` runs every test.
# Each target creates .venv on first use (Python 3.11, the pinned requirements.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DALLE_HEADLESS := 1
export PYTHONHASHSEED := 0

.PHONY: setup test test-portable unit course course-portable demo lab bench clean

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

# The same tests as a CPU without bf16 instructions sees them (most AMD Zen 2/3 and older Intel
# machines): float32 forced, and the math libraries held to AVX2. On the 2-core AMD EPYC (AVX-512
# with bf16) this was written on, PyTorch honours ATEN_CPU_CAPABILITY (get_cpu_capability() says
# AVX2) and oneDNN honours ONEDNN_MAX_CPU_ISA (its verbose log says "isa:Intel AVX2", its bf16
# probe turns false and a bf16 matmul slows from about 190 to 2 GFLOP/s, as on a real AVX2 CPU).
# MKL_ENABLE_INSTRUCTIONS is set too, but MKL's own log names no instruction set on this CPU,
# so whether it is honoured here cannot be checked.
PORTABLE_ENV := DALLE_PRECISION=fp32 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

# The README's commands (two minutes of subprocesses, the same command-line code on both paths) and
# the SIGKILL fault injection (35 s; it tests the atomic checkpoint writer and resume, which no
# precision setting touches) run in `make test` only; the float32 training and resume paths they
# call are tested here too.
test-portable: $(STAMP)
	$(PORTABLE_ENV) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope -q \
		--deselect tests/test_readme.py::test_every_readme_command_works \
		--deselect tests/test_train_dalle.py::test_killed_runs_resume_to_the_uninterrupted_weights

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q

# execute every notebook in order, headless, into outputs/notebooks/ (python -m dalle_mini_impl.course
# --in-place writes them back into notebooks/); print the machine, the precision and each lesson's time
course: $(STAMP)
	$(BIN)/python -m dalle_mini_impl.course

# the course as a CPU without bf16 instructions runs it (see test-portable)
course-portable: $(STAMP)
	$(PORTABLE_ENV) $(BIN)/python -m dalle_mini_impl.course

# text-to-image from the tiny system shipped in data/dalle_shapes_two (one- and two-object scenes)
demo: $(STAMP)
	$(BIN)/python -m dalle_mini_impl generate "a large yellow square at the top" \
		"a small red circle above a large blue square" --n 8 --out outputs/demo.png
	@echo "wrote outputs/demo.png"

# as root (containers, many cloud machines) Jupyter wants --allow-root
lab: $(STAMP)
	unset DALLE_HEADLESS; $(BIN)/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# the quick benchmarks (a few minutes); the long ones (quality.py, rerank.py, elb_sweep.py, the
# DALLE-pytorch comparison) are listed in bench/README.md
BENCH_QUICK := datasets.py bpe.py attention.py throughput.py judge.py "gpu_throughput.py --steps 3"

bench: $(STAMP)
	for f in $(BENCH_QUICK); do echo "== bench/$$f"; $(BIN)/python bench/$$f || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache

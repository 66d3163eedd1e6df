# dutycycle: the two commands a new machine needs.
#   make demo   install system packages (apt-get) and the package, then run the main job
#   make test   install the test tools, then run the whole suite (C kernel test + pytest)
# Other targets: install, sanitize (ASan+UBSan build running the op tests), test-c, fuzz-c, bench, lint.

PYTHON ?= python3
PIP    := $(PYTHON) -m pip
APT_PACKAGES := build-essential libopenblas-dev libopenblas-openmp-dev wamerican
APT_PACKAGES += libopenmpi-dev openmpi-bin iproute2
APT_PACKAGES += libcurl4-openssl-dev libssl-dev libjpeg62-turbo-dev nginx clang
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SAN_DIR := build/sanitize
CFLAGS_TEST := -std=c11 -O2 -fopenmp -Wall -Icsrc
comma := ,
OPENBLAS_OMP := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_LIB := $(if $(wildcard $(OPENBLAS_OMP)/libopenblas.so),-I/usr/include/x86_64-linux-gnu/openblas-openmp -L$(OPENBLAS_OMP) -Wl$(comma)-rpath$(comma)$(OPENBLAS_OMP)) -lopenblas
CORE_C := csrc/core/status.c csrc/core/dtype.c csrc/core/backend.c $(wildcard csrc/cpu/*.c)

.PHONY: all deps install demo test test-py test-c fuzz-c sanitize cuda-sanitize bench lint format clean

all: install

# System packages, only those missing (apt-get needs root or sudo).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

install: deps
	$(PIP) install -q setuptools wheel numpy
	$(PIP) install -q --no-build-isolation -e .

demo: install
	$(PYTHON) -m dutycycle.demo $(DEMO_ARGS)

test: install
	$(PIP) install -q -e '.[test]' --no-build-isolation
	$(MAKE) test-c
	$(MAKE) fuzz-c
	$(PYTHON) -m pytest -q tests

test-py:
	$(PYTHON) -m pytest -q tests

# Plain-C test of every CPU kernel against reference loops.
test-c: build/test_cpu_kernels
	./build/test_cpu_kernels

build/test_cpu_kernels: tests/c/test_cpu_kernels.c tests/c/harness.h $(CORE_C) $(wildcard csrc/cpu/*.h csrc/core/*.h)
	@mkdir -p build
	gcc $(CFLAGS_TEST) -o $@ tests/c/test_cpu_kernels.c $(CORE_C) $(BLAS_LIB) -lm

# libFuzzer (ASan + UBSan) runs of the shard decoders, FUZZ_TIME seconds each, from the seeds in
# tests/fuzz/corpus_*/ (new inputs go to build/fuzz/work_*/); any crash, leak or UB fails.
FUZZ_DIR  := build/fuzz
FUZZ_CC   := clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Icsrc
FUZZ_TIME ?= 20
FUZZ_MAXLEN_tar := 65536
FUZZ_MAXLEN_pattern := 512
FUZZ_MAXLEN_npy_jpeg := 16384
SHARDS_H := csrc/loader/shards.h csrc/core/status.h csrc/core/dtype.h

fuzz-c: $(FUZZ_DIR)/fuzz_tar $(FUZZ_DIR)/fuzz_pattern $(FUZZ_DIR)/fuzz_npy_jpeg
	@for f in tar pattern npy_jpeg; do \
	  mkdir -p $(FUZZ_DIR)/work_$$f; \
	  case $$f in tar) n=$(FUZZ_MAXLEN_tar);; pattern) n=$(FUZZ_MAXLEN_pattern);; *) n=$(FUZZ_MAXLEN_npy_jpeg);; esac; \
	  echo "fuzz_$$f: $(FUZZ_TIME) s"; \
	  ./$(FUZZ_DIR)/fuzz_$$f -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -max_len=$$n -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_DIR)/crash_$$f- $(FUZZ_DIR)/work_$$f tests/fuzz/corpus_$$f \
	    2>$(FUZZ_DIR)/fuzz_$$f.log || { tail -50 $(FUZZ_DIR)/fuzz_$$f.log; exit 1; }; \
	  grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units)" $(FUZZ_DIR)/fuzz_$$f.log; \
	done

$(FUZZ_DIR)/fuzz_tar: tests/fuzz/fuzz_tar.c csrc/loader/tar.c csrc/core/status.c $(SHARDS_H)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) -o $@ tests/fuzz/fuzz_tar.c csrc/loader/tar.c csrc/core/status.c

$(FUZZ_DIR)/fuzz_pattern: tests/fuzz/fuzz_pattern.c csrc/loader/pattern.c csrc/core/status.c $(SHARDS_H)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) -o $@ tests/fuzz/fuzz_pattern.c csrc/loader/pattern.c csrc/core/status.c

$(FUZZ_DIR)/fuzz_npy_jpeg: tests/fuzz/fuzz_npy_jpeg.c csrc/loader/decode.c csrc/core/status.c $(SHARDS_H)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) -o $@ tests/fuzz/fuzz_npy_jpeg.c csrc/loader/decode.c csrc/core/status.c -ljpeg -lm

# ASan + UBSan build of the extension (CPU only) in build/sanitize, then the op tests against it.
sanitize: install
	$(PIP) install -q -e '.[test]' --no-build-isolation
	rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)
	cp -r python/dutycycle $(SAN_DIR)/dutycycle
	rm -f $(SAN_DIR)/dutycycle/_C*.so
	DUTYCYCLE_SANITIZE=1 DUTYCYCLE_CUDA=0 $(PYTHON) setup.py -q build_ext --build-lib $(SAN_DIR)/lib \
	  --build-temp $(SAN_DIR)/tmp
	cp $(SAN_DIR)/lib/dutycycle/_C*.so $(SAN_DIR)/dutycycle/
	gcc $(CFLAGS_TEST) -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  -o $(SAN_DIR)/test_cpu_kernels tests/c/test_cpu_kernels.c $(CORE_C) $(BLAS_LIB) -lm
	ASAN_OPTIONS=detect_leaks=1 ./$(SAN_DIR)/test_cpu_kernels
	cd $(SAN_DIR) && PYTHONPATH=$(CURDIR)/$(SAN_DIR) DUTYCYCLE_EXPECT_PATH=$(CURDIR)/$(SAN_DIR)/dutycycle \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PYTHON) -m pytest -q -p no:cacheprovider $(CURDIR)/tests/test_ops.py $(CURDIR)/tests/test_autograd.py \
	  $(CURDIR)/tests/test_tensor.py $(CURDIR)/tests/test_errors.py $(CURDIR)/tests/test_interop.py \
	  $(CURDIR)/tests/test_data.py $(CURDIR)/tests/test_loader_c.py $(CURDIR)/tests/test_memory.py \
	  $(CURDIR)/tests/test_backend_ops.py $(CURDIR)/tests/test_ops_in_c.py $(CURDIR)/tests/test_checkpoint.py \
	  $(CURDIR)/tests/test_shards.py $(CURDIR)/tests/test_shard_decode.py $(CURDIR)/tests/test_cuda_alloc.py \
	  $(CURDIR)/tests/test_cuda_plans.py

# The GPU tests under compute-sanitizer's memcheck (a lent GPU machine: scripts/gpu-check runs it with
# DC_SANITIZE=1); any out-of-bounds or misaligned device access fails.
cuda-sanitize:
	DUTYCYCLE_CUDA_POISON=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
	  $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_backend_ops.py -k "cuda or gpu"

bench: install
	$(PYTHON) benchmarks/engine.py

lint:
	@command -v clang-format >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq clang-format; }
	$(PIP) install -q ruff
	clang-format --dry-run --Werror $$(git ls-files 'csrc/*.c' 'csrc/*.h' 'cuda/*.cu' 'cuda/*.cuh')
	$(PYTHON) -m ruff check python tests benchmarks

format:
	clang-format -i $$(git ls-files 'csrc/*.c' 'csrc/*.h' 'cuda/*.cu' 'cuda/*.cuh')

clean:
	rm -rf build python/*.egg-info python/dutycycle/_C*.so

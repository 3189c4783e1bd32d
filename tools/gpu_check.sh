#!/usr/bin/env bash
# Run the GPU test suite on a machine with an NVIDIA GPU (used on the lent H100/H200).
# Installs tinygraph without touching the network (dependencies must already be there; extra
# wheels, e.g. gguf, may be put in .whl/), then runs every test that needs CUDA plus the rest.
# Logs go to $OUT (or ./gpu-logs).
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import cuda.bindings, sys; print('python', sys.version.split()[0], 'cuda-bindings', cuda.bindings.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$OUT/pytest.log"
exit ${PIPESTATUS[0]}

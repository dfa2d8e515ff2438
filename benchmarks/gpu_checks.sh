#!/usr/bin/env bash
# The GPU checks in one command, for a machine with CUDA where time is short: the memory
# benchmark's solver rows on the GPU (torch.cuda.max_memory_allocated against the plain
# training step) and the GPU tests. Each part has its own time limit and a failing part
# does not stop the next; every part's output is also written to a file in OUT. The
# limits add up to 530 s, within the 10 minutes a lent machine gives one command.
#
#     [PYTHON=python3] [WHEELS=DIR] bash benchmarks/gpu_checks.sh [OUT]   (OUT: gpu-results)
#
# It runs from the checkout without installing it (PYTHONPATH), so a machine whose
# Python already has torch, torchvision, rich, pytest and pytest-xdist needs only what
# else mlo imports. The wheels in WHEELS (say pydantic and its three dependencies,
# downloaded for that machine's Python with pip download --only-binary=:all:
# --python-version ...) are installed into a scratch folder first.
set -uo pipefail
out=$(realpath -m "${1:-gpu-results}")  # from where it was called
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/mlo-gpu-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/mlo-gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

status=0
part() {  # part NAME SECONDS COMMAND...: run one check, keep its output, note a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" -eq 0 ] || status=1
}

part versions 30 "$python" -c 'import sys, torch, mlo; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
part memory 200 "$python" benchmarks/memory.py --device cuda --rounds 1 --ticks 2 \
  --only plain first_order darts sama cg cg-forward cg-recompute neumann
part tests 300 "$python" -m pytest -q -n 0 -p no:cacheprovider -rs tests/gpu
exit "$status"

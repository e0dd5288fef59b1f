#!/usr/bin/env bash
# One entry point for newcomers and CI.
#   ./run.sh demo [seedplan demo options]   set up, then plan the bundled sample case (output: demo-output/)
#   ./run.sh test [pytest options]          set up, then run the whole test suite
#   ./run.sh setup                          only set up (.venv with the library, slicer-core, trame-slicer, pytest, playwright)
#   ./run.sh bench                          set up, then run every benchmark in benchmarks/
#   ./run.sh serve [FOLDER] [options]       set up, then serve the web planner on 127.0.0.1:8080
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SEEDPLAN_VENV:-.venv}
PY=${PYTHON:-python3}
# Playwright drives Debian's Chromium, never a browser build of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export SEEDPLAN_CHROMIUM=${SEEDPLAN_CHROMIUM:-/usr/bin/chromium}

apt_packages() {
  # OpenGL/EGL runtime for VTK's offscreen rendering (slice and 3D pictures); Debian's Chromium renders
  # the HTML report and drives `seedplan serve` in the browser tests (playwright, from pyproject's
  # test extra, is pointed at /usr/bin/chromium: no browser is ever downloaded); dicom3tools' dciodvfy
  # validates every exported DICOM object in the tests.
  local need=()
  for p in libegl1 libgl1 libosmesa6 libglu1-mesa libxrender1 libxt6 chromium dicom3tools; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "run.sh: installing Debian packages: ${need[*]}"
      if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }; then
        echo "run.sh: warning: could not install ${need[*]} (offscreen pictures, the browser tests or the DICOM validation may fail or skip)" >&2
      fi
    else
      echo "run.sh: warning: missing Debian packages ${need[*]} (offscreen pictures may fail)" >&2
    fi
  fi
}

setup() {
  apt_packages
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(cat pyproject.toml SeedImplantPlanner/Resources/requirements.txt 2>/dev/null | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "run.sh: installing the library and its dependencies into $VENV (log: $VENV/pip-install.log)"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip && "$VENV/bin/python" -m pip install -q -e ".[test]"; } \
        > "$VENV/pip-install.log" 2>&1; then
      tail -n 40 "$VENV/pip-install.log" >&2
      echo "run.sh: error: pip install failed (full log: $VENV/pip-install.log)" >&2
      exit 1
    fi
    touch "$stamp"
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup) setup ;;
  serve) setup; exec "$VENV/bin/seedplan" serve "$@" ;;
  demo)  setup; exec "$VENV/bin/seedplan" demo "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  bench) setup; for b in benchmarks/bench_*.py; do echo "== $b"; "$VENV/bin/python" "$b"; done ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# Installs cnndsl into the current Python environment (editable, from this checkout).
#   ./install.sh         the language core: check, analyze, compile to numpy/onnx source
#   ./install.sh test    everything the test suite needs too: torch (CPU), onnx, onnxruntime, ...,
#                        Playwright, and Debian's chromium for the report's browser test
# Idempotent: when everything is already installed at the right version it returns in a second.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
mode=${1:-core}

want_core='import cnndsl, click, rich, numpy, safetensors'
want_test="$want_core"'; import lark, torch, onnx, onnxruntime, pytest, hypothesis, sklearn, PIL, torchinfo, playwright, pygls
import pygments.lexers; pygments.lexers.get_lexer_by_name("cnndsl")  # the entry point: a reinstall registers it
assert torch.__version__.startswith("2.13.0"), torch.__version__'

installed() {  # is the editable install of *this* checkout present, with its extras?
  "$PY" - "$1" <<'PYEOF' 2>/dev/null
import os, sys
exec(sys.argv[1])
import cnndsl
assert os.path.realpath(os.path.dirname(cnndsl.__file__)) == os.path.realpath("cnndsl")
PYEOF
}

if [ "$mode" = "test" ]; then
  # The report test drives Debian's chromium through Playwright (never Playwright's own browser
  # download); apt runs only when it is missing, so a second run stays fast.
  if [ ! -x /usr/bin/chromium ]; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -q
    $sudo_ apt-get install -y -q chromium
  fi
  if ! installed "$want_test"; then
    # torch==2.13.0 is a local CPU wheel here; an unpinned torch would pull a multi-GB CUDA build.
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,torch]"
  fi
else
  if ! installed "$want_core"; then
    "$PY" -m pip install --quiet --disable-pip-version-check -e .
  fi
fi
# pyenv exposes new console scripts only after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
command -v cnndsl >/dev/null || echo "note: the cnndsl script is in $("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'); add it to PATH" >&2

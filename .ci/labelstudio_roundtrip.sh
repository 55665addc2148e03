#!/usr/bin/env bash
# Real-tool test of the human-label round trip (issue 16): the demo stops at a round with
# `active.labels: human`; a real Label Studio, installed into its own virtual environment,
# serves the images, takes our tasks with their brush pre-annotations through its HTTP API and
# one submitted annotation per task; its JSON export goes through `cbda import`; the recorded
# labels must equal the submission pixel for pixel; `cbda train --resume` then finishes.
# Everything lives in one temporary folder (HOME included, so no cache or config lands
# elsewhere) that is removed at exit, together with the server this script started.
#   PYTHON: the Python with cbda installed (default: python)
#   CBDA_LS_VENV: reuse an existing Label Studio venv instead of installing one (local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=$(command -v "${PYTHON:-python}")
LS_VERSION=1.23.2
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cbda-labelstudio-XXXXXX")
LS_PID=""
cleanup() {
  if [ -n "$LS_PID" ] && kill -0 "$LS_PID" 2>/dev/null; then
    kill "$LS_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$LS_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$LS_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
export HOME="$TMP/home" XDG_CACHE_HOME="$TMP/home/.cache" XDG_CONFIG_HOME="$TMP/home/.config"
export XDG_DATA_HOME="$TMP/home/.local/share" MPLCONFIGDIR="$TMP/home/mpl" PYTHONDONTWRITEBYTECODE=1
mkdir -p "$HOME"
t0=$SECONDS

LS_VENV=${CBDA_LS_VENV:-$TMP/lsvenv}
if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  python3 -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
fi
echo "label studio $LS_VERSION installed after $((SECONDS - t0)) s"

# the codec against label-studio-sdk's own brush converter, through the Label Studio venv
(cd "$TMP" && CBDA_LABEL_STUDIO_PYTHON="$LS_VENV/bin/python" "$PY" -m pytest -q -p no:cacheprovider \
  "$REPO/tests/test_annotate_rle.py" -k label_studio)

# the demo, small: one round, stopped for human labels
RUN="$TMP/run"
cbda_() { (cd "$TMP" && "$PY" -m cbda.train "$@"); }
cbda_ train --config demo --work-dir "$RUN" --no-progress active.labels=human \
  data.generate.size=[48,96] data.generate.num_source=24 data.generate.num_train=8 data.generate.num_val=4 \
  data.source_size=[48,96] data.target_size=[48,96] data.eval_size=[48,96] model.width=8 model.head_channels=16 \
  model.low_channels=8 train.iters=12 train.poly_iters=12 train.checkpoint_every=0 train.log_every=4 \
  active.rounds=1 active.schedule=[6] eval.batch_size=4 eval.before_rounds=false
DOC_ROOT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["labelstudio_local_files"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"])' "$RUN/annotate/round_0001/cbda_export.json")

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=cbda-ci-$RANDOM$RANDOM$RANDOM
(
  cd "$TMP"
  export LABEL_STUDIO_BASE_DATA_DIR="$TMP/lsdata" LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
  export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$DOC_ROOT" LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true
  export COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false SENTRY_DSN= FRONTEND_SENTRY_DSN=
  export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
  exec "$LS_VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$PORT" \
    --data-dir "$TMP/lsdata" --username ci@cbda.invalid --password "$TOKEN" --user-token "$TOKEN" \
    --enable-legacy-api-token --log-level WARNING
) > "$TMP/labelstudio.log" 2>&1 &
LS_PID=$!

if ! "$PY" "$REPO/.ci/labelstudio_roundtrip.py" annotate "http://127.0.0.1:$PORT" "$TOKEN" "$RUN" "$TMP/export.json"; then
  echo "--- label studio log (tail) ---"; tail -40 "$TMP/labelstudio.log"; exit 1
fi
cbda_ import --work-dir "$RUN" "$TMP/export.json"
"$PY" "$REPO/.ci/labelstudio_roundtrip.py" check "$RUN"
cbda_ train --work-dir "$RUN" --resume --no-progress
test -f "$RUN/metrics.json" && "$PY" -c 'import json, sys; m = json.load(open(sys.argv[1])); assert "final" in m and len(m["rounds"]) == 1' "$RUN/metrics.json"
echo "label studio round trip passed in $((SECONDS - t0)) s"

#!/usr/bin/env bash
# Follows a household's SSE feed from the notifier and prints
# "<name> arrived at <place>" for each place event, with curl and jq only.
#
#   NOTIFIER_URL=http://127.0.0.1:8080 TOKEN=<household token> examples/sse.sh weasleys
#
# The feed opens with a snapshot (everyone's current state), then sends one
# `presence` event per change; `id:` is the PRESENCE stream sequence, which
# a client sends back as Last-Event-ID to resume (LAST_EVENT_ID here).
# Late events (history, not news) are not printed.
set -euo pipefail
household=${1:?usage: sse.sh <household>}
url=${NOTIFIER_URL:-http://127.0.0.1:8080}
args=(--silent --show-error --no-buffer --fail -H "Accept: text/event-stream")
if [ -n "${TOKEN:-}" ]; then args+=(-H "Authorization: Bearer $TOKEN"); fi
if [ -n "${LAST_EVENT_ID:-}" ]; then args+=(-H "Last-Event-ID: $LAST_EVENT_ID"); fi

event=""
curl "${args[@]}" "$url/v1/households/$household/events" | while IFS= read -r line; do
    line=${line%$'\r'}
    case $line in
        "event: "*) event=${line#event: } ;;
        "data: "*)
            if [ "$event" = presence ]; then
                jq --unbuffered -r \
                    'select(.kind == "place" and (.late | not)) | "\(.state.name) arrived at \(.place)"' \
                    <<<"${line#data: }"
            fi
            ;;
        "") event="" ;;
    esac
done

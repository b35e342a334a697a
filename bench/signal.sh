#!/usr/bin/env bash
# Kept for old instructions: the signaling benchmark lives in bench/signal/run.sh (same
# environment variables: PAIRS, RATE, SIZE, DURATION, IDLE_PAIRS, OUT, NO_BUILD).
exec "$(dirname "$0")/signal/run.sh" "$@"

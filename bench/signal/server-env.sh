# Sourced by run.sh and compare.sh (needs RATE and PAIRS): the server limits the benchmark
# runs with.
# Benchmark-only limits: each camera sends RATE/PAIRS frames/s (the default per-connection
# limit, 20/s burst 60, is for real clients), and the idle phase holds 19,000 sessions (default
# cap 16,000). Every camera and viewer has its own token sub, so the per-user cap is not hit.
export ICEWAY_SIGNAL__RATE_PER_SECOND=$((RATE / PAIRS * 4 + 100))
export ICEWAY_SIGNAL__RATE_BURST=$((RATE / PAIRS * 8 + 200))
export ICEWAY_SIGNAL__MAX_CONNECTIONS=19900
# All of the load comes from 127.0.0.1: the per-address socket cap and upgrade rate (for real
# clients behind a NAT) are off or opened wide here.
export ICEWAY_SIGNAL__MAX_CONNECTIONS_PER_IP=0
export ICEWAY_SIGNAL__UPGRADES_PER_MINUTE=6000000
export ICEWAY_SIGNAL__UPGRADE_BURST=40000
ulimit -n 20000 2>/dev/null || true

#!/usr/bin/env bash
# A Prometheus for the lab (docs/observability.md): Debian's prometheus, listening on 127.0.0.1
# only, storage in a temporary folder, scraping the controller's stacklock textfile and every
# lab node's TorchServe metrics (through the node's metrics proxy), with monitoring/alerts.yml
# loaded. It stops itself: after --duration seconds, or with --once as soon as every target
# has been scraped, and removes its folder.
#
#   scripts/lab-prometheus.sh [--port 9090] [--inventories lab/inventories] [--env ENV]...
#                             [--textfile FILE] [--duration 300 | --once] [--keep DIR]
#                             [--extra-jobs FILE]
#                             [-- monitoring/prometheus_config.py options: --node-port N
#                                 --scheme https --ca-file F --bearer-token-file F
#                                 --cert-file F --key-file F --server-name NAME
#                                 --scrape-interval 15s]
#
# --once prints each target's health and exits 0 when all are up, 1 when any is not, 3 when
# Prometheus did not start or a target was never scraped in time (--wait seconds, default 60).
# --keep DIR copies the TSDB and the config there before the temporary folder goes.
# --extra-jobs FILE appends the scrape configs of FILE (a YAML list) to the generated ones (a
# test's second job: the same nodes with a wrong token); promtool checks the whole config.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
VENV=${VENV:-.venv}
PY=${PY:-$repo/$VENV/bin/python}

port=9090
inventories=lab/inventories
textfile=lab/.stacklock/audit/stacklock.prom
duration=300
once=0
wait_s=60
keep=""
extra_jobs=""
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --inventories) inventories=$2; shift 2 ;;
    --env) envs+=(--env "$2"); shift 2 ;;
    --textfile) textfile=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --once) once=1; shift ;;
    --wait) wait_s=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --extra-jobs) extra_jobs=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "lab-prometheus: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/promtool.sh --install-only
command -v prometheus >/dev/null || { echo "lab-prometheus: prometheus is missing" >&2; exit 3; }

tmp=$(mktemp -d /tmp/stacklock-prometheus.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$keep" ]; then
    mkdir -p "$keep" && cp -a "$tmp/prometheus.yml" "$tmp/data" "$keep/" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# the controller's textfile, served alone on 127.0.0.1 (the file is read at each scrape)
mkdir -p "$tmp/www"
case "$textfile" in /*) ;; *) textfile=$repo/$textfile ;; esac
ln -s "$textfile" "$tmp/www/stacklock.prom"
tport=$(free_port)
"$PY" -m http.server --bind 127.0.0.1 --directory "$tmp/www" "$tport" >"$tmp/textfile.log" 2>&1 &
pids+=($!)

"$PY" monitoring/prometheus_config.py --inventories "$inventories" "${envs[@]}" \
  --textfile-target "127.0.0.1:$tport" --rules "$repo/monitoring/alerts.yml" \
  --out "$tmp/prometheus.yml" "$@"
if [ -n "$extra_jobs" ]; then
  "$PY" - "$tmp/prometheus.yml" "$extra_jobs" <<'EOF'
import sys, yaml
path, extra = sys.argv[1:3]
header, _, body = open(path, encoding="utf-8").read().partition("\n")
config = yaml.safe_load(body)
jobs = yaml.safe_load(open(extra, encoding="utf-8"))
if not isinstance(jobs, list) or not all(isinstance(j, dict) and "job_name" in j for j in jobs):
    sys.exit(f"lab-prometheus: {extra} is not a YAML list of scrape configs")
config["scrape_configs"] += jobs
with open(path, "w", encoding="utf-8") as f:
    f.write(f"{header}\n# with the jobs of {extra} appended\n")
    f.write(yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000))
EOF
fi
promtool check config "$tmp/prometheus.yml" >/dev/null

echo "==> prometheus on http://127.0.0.1:$port (config $tmp/prometheus.yml)"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)

"$PY" - "$port" "$wait_s" "$once" <<'EOF' || { rc=$?; [ "$rc" != 3 ] || tail -20 "$tmp/prometheus.log" >&2; exit "$rc"; }
import json, sys, time, urllib.request
port, wait_s, once = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + wait_s
while True:
    try:
        urllib.request.urlopen(f"{base}/-/ready", timeout=2).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            print("lab-prometheus: prometheus did not become ready", file=sys.stderr)
            sys.exit(3)
        time.sleep(0.5)
if not once:
    sys.exit(0)
while True:
    with urllib.request.urlopen(f"{base}/api/v1/targets?state=active", timeout=5) as r:
        targets = json.load(r)["data"]["activeTargets"]
    if targets and all(t["health"] != "unknown" for t in targets):
        break
    if time.monotonic() > deadline:
        print("lab-prometheus: not every target was scraped in time", file=sys.stderr)
        for t in targets:
            print(f"  {t['scrapeUrl']}: {t['health']}", file=sys.stderr)
        sys.exit(3)
    time.sleep(0.5)
rows = sorted((t["labels"].get("job", ""), t["labels"].get("environment", "-"),
               t["labels"].get("node", "-"), t["scrapeUrl"], t["health"], t["lastError"])
              for t in targets)
print(f"{'job':<11} {'environment':<12} {'node':<14} {'health':<7} url / error")
for job, env, node, url, health, error in rows:
    print(f"{job:<11} {env:<12} {node:<14} {health:<7} {url}" + (f"  {error}" if error else ""))
sys.exit(0 if all(row[4] == "up" for row in rows) else 1)
EOF

if [ "$once" = 1 ]; then
  exit 0
fi
if [ "$duration" = 0 ]; then
  echo "==> running until interrupted (Ctrl-C)"
  wait "${pids[1]}"
else
  echo "==> running for $duration s"
  sleep "$duration" &
  pids+=($!)
  wait "${pids[2]}" || true
fi

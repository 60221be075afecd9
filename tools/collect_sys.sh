#!/usr/bin/env bash
# Shell fallback of the Tracekit collector (USE_PY_COLLECT=0): the same samples.jsonl / node.json formats
# as tools/tracekit/node/collector.py, whitelist mode only (PID sentinels), bash builtins only in the loop.
# Started and stopped by tools/collect_sys.py start|stop (pidfile logs/$RUN_ID/<node>/collector.pid).
# Differences from the Python collector: no PROC_MATCH mode, no clock offset (node.json clock = unknown),
# monotonic time from /proc/uptime (10 ms resolution).
set -u
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  echo "environment: RUN_ID (required), NODE_ID [hostname], PROC_PID_DIR [logs/\$RUN_ID/pids],"
  echo "             PROC_INTERVAL_MS [200], STAGE, TRACEKIT_LOGS [<repo>/logs]"
  exit 0
fi
if ((BASH_VERSINFO[0] < 5)); then echo "collect_sys.sh: error: needs bash >= 5 (EPOCHREALTIME)" >&2; exit 2; fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_ID="${RUN_ID:-}"
[[ -z "$RUN_ID" && -f "$here/../run_id.env" ]] && RUN_ID="$(sed -n 's/^\(export \)\{0,1\}RUN_ID=//p' "$here/../run_id.env" | tr -d "'\"")"
[[ "$RUN_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$ ]] || { echo "collect_sys.sh: error: bad or missing RUN_ID" >&2; exit 2; }
NODE_ID="${NODE_ID:-$(hostname)}"
[[ "$NODE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$ ]] || { echo "collect_sys.sh: error: bad NODE_ID" >&2; exit 2; }
LOGS="${TRACEKIT_LOGS:-$here/../logs}"
PID_DIR="${PROC_PID_DIR:-$LOGS/$RUN_ID/pids}"
INTERVAL_MS="${PROC_INTERVAL_MS:-200}"
[[ "$INTERVAL_MS" =~ ^[0-9]+$ ]] && ((INTERVAL_MS >= 10)) || { echo "collect_sys.sh: error: PROC_INTERVAL_MS must be an integer >= 10" >&2; exit 2; }
NODE_DIR="$LOGS/$RUN_ID/$NODE_ID"
mkdir -p "$NODE_DIR" "$PID_DIR"
PIDFILE="$NODE_DIR/collector.pid"
SAMPLES="$NODE_DIR/samples.jsonl"
META="$NODE_DIR/node.json"
if [[ -f "$PIDFILE" ]]; then
  read -r other < "$PIDFILE"
  if [[ -n "$other" && "$other" != "$$" && -r "/proc/$other/cmdline" ]] && grep -qa collect_sys "/proc/$other/cmdline"; then
    echo "collect_sys.sh: error: a collector for RUN_ID=$RUN_ID node $NODE_ID already runs (pid $other)" >&2; exit 2
  fi
fi
echo "$$" > "$PIDFILE.$$" && mv -f "$PIDFILE.$$" "$PIDFILE"

now_ms() { local us=${EPOCHREALTIME/./}; printf -v "$1" '%d.%03d' $((us / 1000)) $((us % 1000)); }
mono_ms() { local up; read -r up _ < /proc/uptime; printf -v "$1" '%d0' "${up/./}"; }
json_str() { [[ -n "$1" ]] && printf '"%s"' "$1" || printf 'null'; }

CLK_TCK=$(getconf CLK_TCK); PAGE_SIZE=$(getconf PAGESIZE); CORES=$(nproc --all 2>/dev/null || nproc)
MODEL=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1 | tr -d '"\\')
MHZ=$(sed -n 's/^cpu MHz[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)
if [[ "$MODEL" =~ @[[:space:]]*([0-9.]+)GHz ]]; then MHZ=$(awk -v g="${BASH_REMATCH[1]}" 'BEGIN{printf "%.1f", g*1000}'); fi
[[ -n "${CPU_FREQ_MHZ:-}" ]] && MHZ="$CPU_FREQ_MHZ"  # the original's override (checked by collect_sys.py start)
MEM_MB=$(( $(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo) / 1024 ))
read -r UP _ < /proc/uptime
now_ms NOW; BOOT_MS=$(awk -v n="$NOW" -v u="$UP" 'BEGIN{printf "%.1f", n - u*1000}')
STARTED="$NOW"; TICKS=0; NSAMPLES=0; LATE=0

write_meta() {  # $1 = stopped_ms or null, $2 = cpu_s or null
  cat > "$META.$$" <<EOF
{
 "node_id": "$NODE_ID",
 "stage": $(json_str "${STAGE:-}"),
 "hostname": "$(hostname)",
 "cpu_cores": $CORES,
 "cpu_model": $(json_str "$MODEL"),
 "cpu_freq_mhz": ${MHZ:-null},
 "mem_mb": $MEM_MB,
 "clk_tck": $CLK_TCK,
 "page_size": $PAGE_SIZE,
 "boot_time_ms": $BOOT_MS,
 "clock": {"offset_ms": null, "rtt_ms": null, "measured_at_ms": null, "error": "the shell collector does not measure the clock offset"},
 "clock_stop": null,
 "collector": {"mode": "sh-whitelist", "interval_ms": $INTERVAL_MS, "started_ms": $STARTED, "stopped_ms": $1, "cpu_s": $2, "ticks": $TICKS, "samples": $NSAMPLES, "late_ticks": $LATE, "pid": $$, "pid_dir": "$PID_DIR", "match": null}
}
EOF
  mv -f "$META.$$" "$META"
}
write_meta null null
echo "$(date +%FT%T) collector: started pid=$$ run=$RUN_ID node=$NODE_ID mode=sh-whitelist interval=${INTERVAL_MS}ms pid_dir=$PID_DIR" >&2

declare -A ACKED=()   # pid -> "starttime" or "starttime final"
TOT=0; RSS=0
add_proc() {  # $1 pid, $2 depth: adds the process's and its live descendants' ticks/rss to TOT/RSS
  local line f kids k t
  read -r line < "/proc/$1/stat" 2>/dev/null || return 1
  f=(${line##*) })
  TOT=$((TOT + f[11] + f[12] + f[13] + f[14])); RSS=$((RSS + f[21]))
  [[ "${f[0]}" == Z || $2 -gt 16 ]] && return 0
  for t in /proc/$1/task/*/children; do
    read -r kids < "$t" 2>/dev/null || continue
    for k in $kids; do add_proc "$k" $(($2 + 1)); done
  done
  return 0
}

STOP=0
trap 'STOP=1' TERM INT
exec {SLEEPFD}<> <(:)
start_us=${EPOCHREALTIME/./}; step_us=$((INTERVAL_MS * 1000)); k=0
while ((STOP == 0)); do
  rows=""; declare -A SEEN=()
  for s in "$PID_DIR"/[0-9]*; do
    [[ -f "$s" ]] || continue
    pid=${s##*/}; [[ "$pid" =~ ^[0-9]+$ ]] || continue
    js=""; read -r js < "$s" 2>/dev/null; [[ -n "$js" ]] || continue   # no trailing newline: read says EOF
    [[ "$js" =~ \"node_id\":\"([^\"]*)\" && "${BASH_REMATCH[1]}" == "$NODE_ID" ]] || continue
    [[ "$js" =~ \"starttime\":([0-9]+) ]] || continue; st=${BASH_REMATCH[1]}
    tid=""; [[ "$js" =~ \"trace_id\":\"([^\"]*)\" ]] && tid=${BASH_REMATCH[1]}
    SEEN[$pid]=1
    read -r line < "/proc/$pid/stat" 2>/dev/null || continue
    f=(${line##*) })
    [[ "${f[19]}" == "$st" ]] || continue   # the PID belongs to another process now
    TOT=0; RSS=0; add_proc "$pid" 0 || continue
    cgc=null; cgm=null
    if [[ "$js" =~ \"version\":1 && "$js" =~ \"cpuacct\":\"([^\"]+)\" ]]; then
      read -r v < "${BASH_REMATCH[1]}/cpuacct.usage" 2>/dev/null && cgc=$((v / 1000))
      if [[ "$js" =~ \"memory\":\"([^\"]+)\" ]]; then read -r v < "${BASH_REMATCH[1]}/memory.usage_in_bytes" 2>/dev/null && cgm=$((v / 1024)); fi
    elif [[ "$js" =~ \"version\":2 && "$js" =~ \"cpu\":\"([^\"]+)\" ]]; then
      d=${BASH_REMATCH[1]}
      while read -r key v; do [[ "$key" == usage_usec ]] && cgc=$v; done < "$d/cpu.stat" 2>/dev/null
      read -r v < "$d/memory.current" 2>/dev/null && cgm=$((v / 1024))
    fi
    [[ -n "$tid" ]] && tj="\"$tid\"" || tj=null
    rows+="${rows:+,}[$pid,$st,$tj,$TOT,$RSS,$cgc,$cgm]"
    NSAMPLES=$((NSAMPLES + 1))
    if [[ "${f[0]}" == Z && "${ACKED[$pid]:-}" != "$st final" ]]; then
      echo "$st final" > "$PID_DIR/.$pid.ack.$$" && mv -f "$PID_DIR/.$pid.ack.$$" "$PID_DIR/$pid.ack"; ACKED[$pid]="$st final"
    elif [[ "${ACKED[$pid]:-}" != "$st"* ]]; then
      echo "$st" > "$PID_DIR/.$pid.ack.$$" && mv -f "$PID_DIR/.$pid.ack.$$" "$PID_DIR/$pid.ack"; ACKED[$pid]="$st"
    fi
  done
  for p in "${!ACKED[@]}"; do   # sentinel gone: our ack goes too
    [[ -n "${SEEN[$p]:-}" ]] || { rm -f "$PID_DIR/$p.ack"; unset "ACKED[$p]"; }
  done
  unset SEEN
  TICKS=$((TICKS + 1))
  if [[ -n "$rows" ]]; then
    now_ms ts; mono_ms mono
    printf '{"ts":%s,"mono":%s,"procs":[%s]}\n' "$ts" "$mono" "$rows" >> "$SAMPLES"
  fi
  k=$((k + 1)); now_us=${EPOCHREALTIME/./}
  if ((start_us + k * step_us <= now_us)); then   # overran: skip missed deadlines, keep the grid
    missed=$(( (now_us - start_us) / step_us + 1 - k )); LATE=$((LATE + missed)); k=$((k + missed))
  fi
  wait_us=$((start_us + k * step_us - now_us))
  ((STOP == 0)) && read -t "$((wait_us / 1000000)).$(printf '%06d' $((wait_us % 1000000)))" -u "$SLEEPFD" _
done
for p in "${!ACKED[@]}"; do rm -f "$PID_DIR/$p.ack"; done
read -r line < /proc/$$/stat; f=(${line##*) })
now_ms STOPPED
CPU_S=$(awk -v t=$((f[11] + f[12] + f[13] + f[14])) -v h="$CLK_TCK" 'BEGIN{printf "%.4f", t/h}')
write_meta "$STOPPED" "$CPU_S"
[[ "$(cat "$PIDFILE" 2>/dev/null)" == "$$" ]] && rm -f "$PIDFILE"
echo "$(date +%FT%T) collector: stopped: ticks=$TICKS samples=$NSAMPLES late_ticks=$LATE cpu_s=$CPU_S" >&2

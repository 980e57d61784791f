#!/usr/bin/env bash
# Load test of the DPoP gateway, on loopback, in one run (method: docs/benchmarks.md).
#
# Rows, each --connections $CONNECTIONS --duration $DURATION after a $WARMUP s warmup:
#   1. upstream direct            dpop-loadgen run -> dpop-loadgen upstream
#   1b. generator overhead        the same with --dpop (the upstream ignores the
#                                 headers: this is what signing-free proof sending costs)
#   2. gateway, plain proxy       a route with DPoP off
#   3. gateway, DPoP, memory      the in-process replay store
#   4. gateway, DPoP, Redis       --replay-store redis://...
#   (with rows 2 and 3: `dpop-loadgen verify`, the CPU time of one bare ES256 signature
#   verification in this run, which the DPoP row's cost beyond proxying is divided by)
#   3n. nginx, plain proxy        nginx (NGINX_BIN) as a reverse proxy to the same
#                                 upstream: worker_processes = cores, upstream keepalive
#   3a. nginx + dpop authz, DPoP, memory   nginx with the shipped examples/authz/nginx.conf
#                                 (ports substituted) asking `dpop authz --listen`
#                                 (forward-auth) about every request; the generator sends
#                                 DPoP proofs for the nginx URL
#   4a. gateway, DPoP, TLS (HTTP/1.1)  row 3 on a TLS listener (--tls-cert/--tls-key)
#   4b. gateway, DPoP, TLS (HTTP/2)    the same, the generator speaking HTTP/2 (ALPN h2)
#   4c. gateway, plain proxy, TLS (HTTP/1.1)  row 2 on a TLS listener
#   4d. gateway, DPoP, https upstream  row 3 with an https upstream ([upstream] url, ca_file)
#   5. issuer, SQLite             `dpop issuer`: client_credentials (client_secret_post)
#                                 with a fresh DPoP proof carrying the server nonce, per token
#   6. issuer, PostgreSQL         the same on PostgreSQL (POSTGRES_URL, or the server on
#                                 127.0.0.1:5432 with database test; skipped without one)
# Rows 2-4d are skipped while `dpop gateway` does not exist; row 4 when no Redis is found;
# rows 3n and 3a when there is no nginx at NGINX_BIN, row 3a while `dpop authz` does not exist;
# rows 4a-4d while `dpop gateway --help` does not list --tls-cert. Certificates come
# from `dpop-loadgen certs` (a private CA, a server certificate for 127.0.0.1).
#
# Every row also reports the CPU time (user + system) the process under test spent per
# request in the timed phase (the upstream, the gateway or the issuer; `run --cpu-pid`;
# on the nginx rows nginx's master and all its workers, plus the authorizer on row 3a,
# whose cell also shows the split: the nginx part and the authz part). The gateway's
# involuntary context switches per request (plain, DPoP) and the bare verification's
# spread over the rounds are reported as information among the checks.
#
# Prints a markdown table with the ratios against their targets on stdout; progress
# goes to stderr. Environment: DURATION (15), WARMUP (2), CONNECTIONS (32),
# ROUNDS (1): how many times the compared rows (plain, memory, their baseline rows, the nginx
# rows, redis, and the bare verification) run, in turns, each beside the rows it is
# compared with, every other round in reverse order; each row then shows the median of
# its rounds, and each check the median of its per-round ratios (every ratio from rows
# of the same round) with their range, so that a machine whose speed drifts while it is
# shared moves both sides of a ratio together,
# BASE_PORT (18400, first port tried), STRICT=1 to exit 1 when a target is missed,
# ROWS=key,key,... to run only those rows (keys: upstream overhead plain memory
# nginx_plain nginx_authz plain_base memory_base redis redis_base tls_h1 tls_h2 tls_plain
# https_upstream issuer_sqlite issuer_postgres; e.g. ROWS=upstream,plain,memory,nginx_plain,nginx_authz),
# NGINX_BIN (/usr/sbin/nginx) for the nginx rows,
# DPOP_BIN (target/release/dpop) to measure another build of the gateway; BASELINE_BIN, a
# second `dpop` binary (say, a build of the previous release) whose plain-proxy and DPoP
# rows (memory store, and Redis store when there is one) run in the same run right after
# this build's, for a before/after ratio; PROFILE=profiling
# builds release code with line tables, for perf; PROFILE=dev a quick debug build for a
# smoke run (its figures mean nothing). CARGO_TARGET_DIR is honoured.
# SUT_CPUS (a taskset CPU list, e.g. 0 or 0-1): the processes under test (the gateway, nginx,
# the authorizer, the issuer, and the bare verification) run on these CPUs only, and
# everything else (the load generator, the upstream, the token issuer, Redis) on the others,
# as on separate machines, so that neither side preempts the other; the gateway then has
# one serving thread and nginx one worker per CPU of the list. A run with SUT_CPUS starts
# its own redis-server on the other CPUs when one is installed, instead of reusing the one
# on 6379 (which may run anywhere). Unset (the default), every process may run on every CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
STRICT=${STRICT:-0}
AUD="https://api.example.com"
PROFILE=${PROFILE:-release}
if [[ $PROFILE == dev ]]; then
    BIN=${CARGO_TARGET_DIR:-target}/debug
else
    BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
fi
LOADGEN=$BIN/dpop-loadgen
DPOP=${DPOP_BIN:-$BIN/dpop}

log() { printf '==> %s\n' "$*" >&2; }

# ROWS: the rows to run (all when empty); an unknown key is an error, not a silent no-op.
ALL_ROWS=" upstream overhead plain memory nginx_plain nginx_authz plain_base memory_base redis redis_base tls_h1 tls_h2 tls_plain https_upstream issuer_sqlite issuer_postgres "
ROW_FILTER=" ${ROWS:-} "
ROW_FILTER=${ROW_FILTER//,/ }
for key in $ROW_FILTER; do
    if [[ $ALL_ROWS != *" $key "* ]]; then
        log "ROWS: unknown row \"$key\" (known:$ALL_ROWS)"
        exit 2
    fi
done
# wanted KEY: whether row KEY is to run.
wanted() { [[ -z ${ROW_FILTER// /} || $ROW_FILTER == *" $1 "* ]]; }

log "building the binaries (profile $PROFILE)"
cargo build --profile "$PROFILE" -p dpop-loadgen -p dpop-cli --locked >&2

# cpu_list LIST: the CPU numbers of a taskset-style list ("0", "0-1", "0,2-3"), one per
# line, in order and each once (so that "1,0" and the kernel's "0-1" compare equal); fails
# on anything else.
cpu_list() {
    local part parts lo hi numbers=""
    IFS=, read -ra parts <<<"$1"
    ((${#parts[@]})) || return 1
    for part in "${parts[@]}"; do
        [[ $part =~ ^([0-9]+)(-([0-9]+))?$ ]] || return 1
        lo=$((10#${BASH_REMATCH[1]})) hi=$((10#${BASH_REMATCH[3]:-${BASH_REMATCH[1]}}))
        ((lo <= hi)) || return 1
        numbers+=$(seq "$lo" "$hi")$'\n'
    done
    sort -nu <<<"$numbers" | sed '/^$/d'
}

# SUT: the command prefix that puts a process under test on SUT_CPUS (empty without it).
MACHINE_CPUS=$(nproc)
SUT=() SUT_LIST="" SUT_NCPU="" OTHER_CPUS=""
if [[ -n ${SUT_CPUS:-} ]]; then
    command -v taskset >/dev/null || { log "SUT_CPUS needs taskset (util-linux)"; exit 2; }
    SUT_LIST=$(cpu_list "$SUT_CPUS") || { log "SUT_CPUS: \"$SUT_CPUS\" is not a CPU list like 0 or 0-1"; exit 2; }
    allowed=$(taskset -pc $$) && allowed_list=$(cpu_list "${allowed##*: }") ||
        { log "cannot read this process's CPU affinity"; exit 2; }
    others=()
    for cpu in $allowed_list; do
        grep -qx "$cpu" <<<"$SUT_LIST" || others+=("$cpu")
    done
    for cpu in $SUT_LIST; do
        grep -qx "$cpu" <<<"$allowed_list" || { log "SUT_CPUS: CPU $cpu is not available here (allowed: ${allowed##*: })"; exit 2; }
    done
    ((${#others[@]})) || { log "SUT_CPUS: no CPU is left for the load generator and the upstream"; exit 2; }
    OTHER_CPUS=$(IFS=,; echo "${others[*]}")
    SUT_NCPU=$(wc -l <<<"$SUT_LIST")
    # Every process this script starts from now on inherits the other CPUs; those under
    # test are moved to SUT_CPUS as they start.
    taskset -pc "$OTHER_CPUS" $$ >/dev/null
    SUT=(taskset -c "$SUT_CPUS")
    log "processes under test on CPUs $SUT_CPUS, the load generator and the upstream on $OTHER_CPUS"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dpop-loadtest.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- ports and processes ---------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

NEXT_PORT=${BASE_PORT:-18400}
# alloc_port VAR: sets VAR to the next port nothing listens on.
alloc_port() {
    while port_in_use "$NEXT_PORT"; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    printf -v "$1" '%s' "$NEXT_PORT"
    NEXT_PORT=$((NEXT_PORT + 1))
}

# start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log; sets LAST_PID.
# A CMD that starts with the SUT prefix is remembered, for wait_port to check where it runs.
SUT_PIDS=" "
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    if ((${#SUT[@]})) && [[ $1 == "${SUT[0]}" ]]; then
        SUT_PIDS+="$LAST_PID "
    fi
}

# on_sut_cpus PID NAME: whether a process under test may run on SUT_CPUS only (read once
# it listens, after taskset has set its affinity and started it).
on_sut_cpus() {
    local status allowed
    status=$(<"/proc/$1/status") || return 1
    allowed=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' <<<"$status")
    if [[ $(cpu_list "$allowed") != "$SUT_LIST" ]]; then
        log "$2 runs on CPUs $allowed, not on SUT_CPUS ($SUT_CPUS)"
        return 1
    fi
}

# wait_port PORT PID NAME: waits up to 15 s for PORT to listen while PID is alive.
wait_port() {
    local port=$1 pid=$2 name=$3 i
    for ((i = 0; i < 150; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited at startup; its output:"
            tail -n 40 "$WORK/$name.log" >&2
            return 1
        fi
        if port_in_use "$port"; then
            [[ $SUT_PIDS != *" $pid "* ]] || on_sut_cpus "$pid" "$name"
            return
        fi
        sleep 0.1
    done
    log "$name is not listening on port $port after 15 s; its output:"
    tail -n 40 "$WORK/$name.log" >&2
    return 1
}

# stop PID: SIGTERM, then wait for it.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

redis_ping() {
    # The inner script expands its own "$1", passed as an argument.
    # shellcheck disable=SC2016
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "PING\r\n" >&3
        read -r -t 2 line <&3 || exit 1
        [[ $line == +PONG* ]]' _ "$1" 2>/dev/null
}

# --- measurements ------------------------------------------------------------------

# SPLIT_A: on a row whose CPU is split between two processes (split_cpu), the first one's
# part (the gateway's on the Redis row). INVOL: involuntary context switches per request
# of the process(es) under test. EACH: each `--cpu-pid` process's CPU µs/request, in the
# order given, space-separated.
declare -A RPS P50 P99 NON2XX ERRORS SECS CPU CPU_SPLIT SPLIT_A INVOL EACH
# Per round (ROUNDS), space-separated, one value per round in order: R_RPS, R_P50, R_P99,
# R_CPU, R_INVOL, and R_SPLIT_A, R_SPLIT_B (both parts of a split row, the names in
# SPLIT_NAMES).
declare -A R_RPS R_P50 R_P99 R_CPU R_SPLIT_A R_SPLIT_B SPLIT_NAMES R_INVOL
# And the load generator's own CPU µs per request, per round (R_GEN).
declare -A R_GEN
# Also per round: non-2xx answers and transport errors (the table shows their sums), and
# whether any round's proofs ran out.
declare -A R_NON2XX R_ERRORS PROOFS_RAN_OUT
ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || { echo "ROUNDS must be 1 to 99" >&2; exit 2; }
TABLE_KEYS=" "
# table_row KEY LABEL: the row's line in the table, once however many rounds it runs.
table_row() {
    [[ $TABLE_KEYS == *" $1 "* ]] && return 0
    TABLE_KEYS+="$1 "
    TABLE_ROWS+=("$1|$2")
}
TABLE_ROWS=()

is_number() { [[ ${1:-} =~ ^[0-9.]+$ ]]; }
json_num() { sed -n "s/.*\"$2\":\([0-9.eE+-]*\).*/\1/p" <<<"$1"; }

# measure KEY LABEL URL [run flags...]: one loadgen run; records its figures under KEY
# (with --cpu-pid PID among the flags, also PID's CPU µs per request).
measure() {
    local key=$1 label=$2 url=$3 out gen
    shift 3
    wanted "$key" || return 0
    log "measuring: $label${ROUND:+ (round $ROUND of $ROUNDS)}"
    table_row "$key" "$label"
    # A round that fails must not leave the previous round's figures behind.
    unset 'RPS[$key]' 'P50[$key]' 'P99[$key]' 'NON2XX[$key]' 'ERRORS[$key]' 'SECS[$key]' \
        'CPU[$key]' 'CPU_SPLIT[$key]' 'SPLIT_A[$key]' 'INVOL[$key]' 'EACH[$key]'
    if out=$("$LOADGEN" run --url "$url" --connections "$CONNECTIONS" \
        --duration "$DURATION" --warmup "$WARMUP" --label "$label" "$@"); then
        RPS[$key]=$(json_num "$out" rps)
        P50[$key]=$(json_num "$out" p50_ms)
        P99[$key]=$(json_num "$out" p99_ms)
        NON2XX[$key]=$(json_num "$out" non_2xx)
        ERRORS[$key]=$(json_num "$out" errors)
        SECS[$key]=$(json_num "$out" seconds)
        CPU[$key]=$(json_num "$out" cpu_us_per_request)
        # Each --cpu-pid process's own part, in the order given, space-separated.
        EACH[$key]=$(sed -n 's/.*"cpu_us_per_request_each":\[\([0-9.,eE+-]*\)\].*/\1/p' <<<"$out" | tr ',' ' ')
        # Involuntary context switches of the process(es) under test per request.
        INVOL[$key]=$(json_num "$out" involuntary)
        R_INVOL[$key]+="${INVOL[$key]:-NA} "
        gen=$(json_num "$out" generator_cpu_us_per_request)
        R_GEN[$key]+="${gen:-NA} "
        R_RPS[$key]+="${RPS[$key]:-NA} " R_P50[$key]+="${P50[$key]:-NA} "
        R_P99[$key]+="${P99[$key]:-NA} " R_CPU[$key]+="${CPU[$key]:-NA} "
        R_NON2XX[$key]+="${NON2XX[$key]:-0} " R_ERRORS[$key]+="${ERRORS[$key]:-0} "
        if [[ $out == *'"proofs_exhausted":true'* ]]; then
            # The figures stay valid, over the shorter window the table shows.
            log "$label: the pre-generated proofs ran out after ${SECS[$key]} s"
            SECS[$key]="${SECS[$key]} (proofs ran out)"
            PROOFS_RAN_OUT[$key]=1
        fi
    else
        round_missing "$key"
        log "$label: the load generator failed"
    fi
}

# round_missing KEY: KEY has no figures this round (failed or skipped); its per-round lists
# get a gap so that they stay aligned, round for round, with the other rows'.
round_missing() {
    R_RPS[$1]+="NA " R_P50[$1]+="NA " R_P99[$1]+="NA " R_CPU[$1]+="NA " R_INVOL[$1]+="NA "
    R_SPLIT_A[$1]+="NA " R_SPLIT_B[$1]+="NA " R_GEN[$1]+="NA "
}

skip() {
    wanted "$1" || return 0
    table_row "$1" "$2"
    round_missing "$1"
    RPS[$1]="skipped: $3"
}

DPOP_FLAGS=(--dpop --key "$WORK/client.pem" --token "$WORK/token")

alloc_port UPSTREAM_PORT
start upstream "$LOADGEN" upstream --listen "127.0.0.1:$UPSTREAM_PORT"
UPSTREAM_PID=$LAST_PID
wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" upstream
UPSTREAM_URL="http://127.0.0.1:$UPSTREAM_PORT"

# The token must outlive every round: up to eight rows a round, each its warmup, duration
# and start-up (proof signing included), with an hour to spare.
TOKEN_LIFETIME=$((3600 + ROUNDS * 8 * (DURATION + WARMUP + 30)))
alloc_port ISSUER_PORT
start issuer "$LOADGEN" issuer --listen "127.0.0.1:$ISSUER_PORT" --aud "$AUD" \
    --token-out "$WORK/token" --key-out "$WORK/client.pem" --lifetime "$TOKEN_LIFETIME"
wait_port "$ISSUER_PORT" "$LAST_PID" issuer
for ((i = 0; i < 100; i++)); do
    [[ -s $WORK/token ]] && break
    sleep 0.1
done
[[ -s $WORK/token ]] || { log "the issuer wrote no token"; exit 1; }
ISSUER_URL="http://127.0.0.1:$ISSUER_PORT"

measure upstream "upstream direct" "$UPSTREAM_URL/bench" --cpu-pid "$UPSTREAM_PID"
measure overhead "upstream direct + DPoP headers (generator overhead)" \
    "$UPSTREAM_URL/bench" --cpu-pid "$UPSTREAM_PID" "${DPOP_FLAGS[@]}"

# The bare ES256 verification (aws-lc-rs, key parsed each time) on this machine now: what
# the DPoP rows are compared with. Only when a DPoP gateway row and the plain row run; once
# per round, beside that round's rows.
VERIFY_US="" R_VERIFY=""
measure_verify() {
    local out
    wanted memory && wanted plain || return 0
    log "measuring: bare ES256 signature verification${ROUND:+ (round $ROUND of $ROUNDS)}"
    if out=$("${SUT[@]}" "$LOADGEN" verify --seconds 2) && VERIFY_US=$(json_num "$out" cpu_us_per_verification) &&
        is_number "$VERIFY_US"; then
        R_VERIFY+="$VERIFY_US "
        log "bare ES256 verification: $VERIFY_US µs of CPU"
    else
        VERIFY_US=""
        R_VERIFY+="NA "
        log "the verification measurement failed"
    fi
}

# ticks PID...: user + system clock ticks of the processes so far (/proc/PID/stat
# fields 14 and 15, after the command name in parentheses).
ticks() {
    local pid stat sum=0 f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || return 1
        read -ra f <<<"${stat##*) }"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

# split_cpu KEY NAME-A COUNT NAME-B: splits KEY's measured CPU µs/request between the
# first COUNT processes given to `--cpu-pid` (NAME-A) and the others (NAME-B), from each
# process's own CPU time over the timed phase (the loadgen's `cpu_us_per_request_each`);
# the cell then shows "NAME-A A + NAME-B B" (each part the median of the rounds when there
# are several). A round that could not be split leaves a gap; a failed round has its gap
# already (round_missing).
split_cpu() {
    local key=$1 count=$3 a="" b=""
    is_number "${CPU[$key]:-}" || return 0
    if [[ -n ${EACH[$key]:-} ]]; then
        read -r a b < <(awk -v n="$count" '{
            for (i = 1; i <= NF; i++) { if (i <= n) a += $i; else b += $i }
            printf "%.3f %.3f\n", a, b }' <<<"${EACH[$key]}")
    fi
    if [[ -z $a ]]; then
        R_SPLIT_A[$key]+="NA " R_SPLIT_B[$key]+="NA "
        return 0
    fi
    SPLIT_NAMES[$key]="$2 $4"
    SPLIT_A[$key]=$a
    R_SPLIT_A[$key]+="$a " R_SPLIT_B[$key]+="$b "
    CPU_SPLIT[$key]=$(printf '%s %.1f + %s %.1f' "$2" "$a" "$4" "$b")
}

# Redis: reuse one on the default port, else start a private one, else skip row 4.
# REDIS_PID: its process, when known and readable, for the Redis row's CPU split.
REDIS_URL="" REDIS_PID=""
if redis_ping 6379 && { [[ -z ${SUT_CPUS:-} ]] || ! command -v redis-server >/dev/null; }; then
    REDIS_URL="redis://127.0.0.1:6379"
    log "using the Redis already on 127.0.0.1:6379${SUT_CPUS:+ (wherever it runs: no redis-server to start one beside the load generator)}"
    if command -v redis-cli >/dev/null; then
        REDIS_PID=$(redis-cli -p 6379 info server 2>/dev/null | tr -d '\r' |
            awk -F: '$1 == "process_id" { print $2 }')
    fi
elif command -v redis-server >/dev/null; then
    alloc_port REDIS_PORT
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize no --dir "$WORK"
    wait_port "$REDIS_PORT" "$LAST_PID" redis
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    REDIS_PID=$LAST_PID
    log "started redis-server on 127.0.0.1:$REDIS_PORT"
fi
if [[ -n $REDIS_PID ]] && ! ticks "$REDIS_PID" >/dev/null 2>&1; then
    log "cannot read redis-server's CPU time (pid $REDIS_PID): the Redis row shows the gateway's alone"
    REDIS_PID=""
fi

# gateway_row KEY LABEL SCHEME GATEWAY-ARGS... -- RUN-FLAGS...: starts the gateway on
# $GATEWAY_PORT, measures SCHEME://127.0.0.1:$GATEWAY_PORT/bench with the gateway's CPU.
# With HELPER_PID (and HELPER_NAME) set, that process's CPU is added to the row's and the
# cell shows the split (the gateway's part and the helper's, each measured on its own over
# the timed phase).
gateway_row() {
    local key=$1 label=$2 scheme=$3 port args=() flags=()
    wanted "$key" || return 0
    shift 3
    while (($#)) && [[ $1 != -- ]]; do
        args+=("$1")
        shift
    done
    (($#)) && shift
    flags=("$@")
    port=$GATEWAY_PORT
    start "gateway-$key" "${SUT[@]}" "${ROW_BIN:-$DPOP}" gateway "${args[@]}"
    local pid=$LAST_PID
    if wait_port "$port" "$pid" "gateway-$key"; then
        if [[ -n ${HELPER_PID:-} ]]; then
            measure "$key" "$label" "$scheme://127.0.0.1:$port/bench" --cpu-pid "$pid" \
                --cpu-pid "$HELPER_PID" "${flags[@]}"
            split_cpu "$key" gateway 1 "$HELPER_NAME"
        else
            measure "$key" "$label" "$scheme://127.0.0.1:$port/bench" --cpu-pid "$pid" "${flags[@]}"
        fi
        if [[ ${NON2XX[$key]:-0} != 0 ]]; then
            log "$label: ${NON2XX[$key]} non-2xx answers; the gateway's last lines:"
            tail -n 20 "$WORK/gateway-$key.log" >&2
        fi
    else
        skip "$key" "$label" "the gateway did not start (see above)"
    fi
    stop "$pid"
}

# --- nginx: plain, and in front of `dpop authz` (forward-auth) ------------------------

NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
# nginx runs with `access_log off`, so the gateway's access log (target dpop::access, on
# by default) is filtered out too, like for like; ACCESS_LOG=1 measures with it.
if [[ ${ACCESS_LOG:-0} == 0 ]]; then
    export RUST_LOG=${RUST_LOG:-info,dpop::access=off}
fi
# Serving processes per CPU under test: every CPU, or those of SUT_CPUS.
NCPU=${SUT_NCPU:-$MACHINE_CPUS}
NGINX_SNIPPET=examples/authz/nginx.conf
# The defaults of the shipped snippet, replaced by this run's (as its tests do).
SNIPPET_PROXY_LISTEN="listen 8080;"
SNIPPET_AUTHZ="127.0.0.1:9191"
SNIPPET_UPSTREAM="127.0.0.1:3000"

# substitute FILE FROM TO: replaces every FROM in FILE by TO; FROM must occur (a snippet
# that no longer has the default is an error, not a run against the wrong ports).
substitute() {
    local file=$1 from=$2 to=$3 text
    text=$(<"$file")
    if [[ $text != *"$from"* ]]; then
        log "$file no longer contains \"$from\""
        return 1
    fi
    printf '%s\n' "${text//"$from"/"$to"}" >"$file"
}

# nginx_harness PREFIX: what the run adds to an http block: no access log (the gateway
# logs no line per request either), temporary files in PREFIX (Debian's build puts them
# under /var/lib/nginx).
nginx_harness() {
    printf '    access_log off;\n'
    local t
    for t in client_body proxy fastcgi uwsgi scgi; do
        printf '    %s_temp_path %s/%s;\n' "$t" "$1" "$t"
    done
}

# nginx_start KEY CONF PORT: nginx in the foreground with CONF, prefix $WORK/nginx-KEY,
# one worker per core; sets NGINX_PIDS to the master and its workers.
nginx_start() {
    local key=$1 conf=$2 port=$3 globals pid i workers=()
    local prefix=$WORK/nginx-$key
    mkdir -p "$prefix"
    globals="daemon off; master_process on; worker_processes $NCPU; pid $prefix/nginx.pid; error_log stderr notice;"
    # As root the workers would switch to nobody, who cannot use the temporary
    # directories under $WORK (mode 0700); as another user the directive is ignored.
    ((EUID == 0)) && globals+=" user root;"
    start "nginx-$key" "${SUT[@]}" "$NGINX_BIN" -p "$prefix/" -c "$conf" -e stderr -g "$globals"
    pid=$LAST_PID
    wait_port "$port" "$pid" "nginx-$key" || return 1
    for ((i = 0; i < 50; i++)); do
        mapfile -t workers < <(pgrep -P "$pid" || true)
        ((${#workers[@]} >= NCPU)) && break
        sleep 0.1
    done
    if ((${#workers[@]} != NCPU)); then
        log "nginx-$key: ${#workers[@]} worker processes, expected $NCPU"
        stop "$pid"
        return 1
    fi
    NGINX_PIDS=("$pid" "${workers[@]}")
}


# http_status PORT PATH: the status of GET PATH on 127.0.0.1:PORT without credentials.
http_status() {
    # The inner script expands its own "$1" and "$2", passed as arguments.
    # shellcheck disable=SC2016
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n" "$2" "$1" >&3
        read -r _ status _ <&3 && echo "$status"' _ "$1" "$2" 2>/dev/null
}

nginx_rows() {
    if ! wanted nginx_plain && ! wanted nginx_authz; then
        return 0
    fi
    if [[ ! -x $NGINX_BIN ]]; then
        log "no nginx at $NGINX_BIN (set NGINX_BIN): skipping the nginx rows"
        skip nginx_plain "nginx, plain proxy" "no nginx at $NGINX_BIN"
        skip nginx_authz "nginx + dpop authz, DPoP, memory replay store" "no nginx at $NGINX_BIN"
        return 0
    fi
    local port conf

    # Plain: the snippet's proxying without the auth_request (same upstream keepalive,
    # HTTP/1.1 upstream connections, Host as sent). Each worker keeps at least its share
    # of the connections idle for reuse (the snippet's 16 is that share for 32 connections
    # on two workers), so fewer workers (SUT_CPUS) do not mean connections closed.
    if wanted nginx_plain; then
        local keepalive=$(((CONNECTIONS + NCPU - 1) / NCPU))
        ((keepalive < 16)) && keepalive=16
        alloc_port port
        conf=$WORK/nginx-plain.conf
        mkdir -p "$WORK/nginx-nginx_plain"
        cat >"$conf" <<EOF
events {
    worker_connections 1024;
}
http {
$(nginx_harness "$WORK/nginx-nginx_plain")
    upstream api {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive $keepalive;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_set_header Host \$http_host;
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://api;
        }
    }
}
EOF
        if nginx_start nginx_plain "$conf" "$port"; then
            local cpu_flags=() pid
            for pid in "${NGINX_PIDS[@]}"; do cpu_flags+=(--cpu-pid "$pid"); done
            measure nginx_plain "nginx, plain proxy" "http://127.0.0.1:$port/bench" "${cpu_flags[@]}"
            stop "${NGINX_PIDS[0]}"
        else
            skip nginx_plain "nginx, plain proxy" "nginx did not start (see above)"
        fi
    fi

    if ! wanted nginx_authz; then
        return 0
    fi
    local label="nginx + dpop authz, DPoP, memory replay store"
    if ! "$DPOP" authz --help >/dev/null 2>&1; then
        log "\`dpop authz\` does not exist yet: skipping the nginx + dpop authz row"
        skip nginx_authz "$label" "no \`dpop authz\` yet"
        return 0
    fi
    local authz_port authz_pid
    alloc_port port
    alloc_port authz_port
    # The shipped snippet, only its ports replaced and the harness lines added.
    conf=$WORK/nginx-authz.conf
    mkdir -p "$WORK/nginx-nginx_authz"
    cp "$NGINX_SNIPPET" "$conf"
    if ! substitute "$conf" "$SNIPPET_PROXY_LISTEN" "listen 127.0.0.1:$port;" ||
        ! substitute "$conf" "$SNIPPET_AUTHZ" "127.0.0.1:$authz_port" ||
        ! substitute "$conf" "$SNIPPET_UPSTREAM" "127.0.0.1:$UPSTREAM_PORT" ||
        ! substitute "$conf" $'\nhttp {\n' $'\nhttp {\n'"$(nginx_harness "$WORK/nginx-nginx_authz")"$'\n'; then
        skip nginx_authz "$label" "$NGINX_SNIPPET changed shape (see above)"
        return 0
    fi
    # The authorizer: the gateway memory row's checks, for the URL clients use (nginx's),
    # believing the forwarded target from loopback only.
    start authz "${SUT[@]}" "$DPOP" authz --listen "127.0.0.1:$authz_port" --issuer "$ISSUER_URL" \
        --audience "$AUD" --public-url "http://127.0.0.1:$port" --trusted-proxy 127.0.0.1
    authz_pid=$LAST_PID
    if ! wait_port "$authz_port" "$authz_pid" authz; then
        skip nginx_authz "$label" "dpop authz did not start (see above)"
        stop "$authz_pid"
        return 0
    fi
    if ! nginx_start nginx_authz "$conf" "$port"; then
        skip nginx_authz "$label" "nginx did not start (see above)"
        stop "$authz_pid"
        return 0
    fi
    # The row measures the checks only if they are made: a request without credentials
    # must be refused with 401 (polled: until the authorizer has the issuer's keys it
    # refuses with 403).
    local status="" i
    for ((i = 0; i < 50; i++)); do
        status=$(http_status "$port" /bench) || status=""
        [[ $status == 401 ]] && break
        sleep 0.2
    done
    if [[ $status != 401 ]]; then
        log "nginx + dpop authz answered ${status:-nothing} to a request without credentials (expected 401); the authorizer's and nginx's last lines:"
        tail -n 20 "$WORK/authz.log" "$WORK/nginx-nginx_authz.log" >&2
        skip nginx_authz "$label" "a request without credentials was not refused with 401"
        stop "${NGINX_PIDS[0]}"
        stop "$authz_pid"
        return 0
    fi
    local cpu_flags=() pid
    for pid in "${NGINX_PIDS[@]}" "$authz_pid"; do cpu_flags+=(--cpu-pid "$pid"); done
    measure nginx_authz "$label" "http://127.0.0.1:$port/bench" "${cpu_flags[@]}" "${DPOP_FLAGS[@]}"
    split_cpu nginx_authz nginx "${#NGINX_PIDS[@]}" authz
    if [[ ${NON2XX[nginx_authz]:-0} != 0 ]]; then
        log "$label: ${NON2XX[nginx_authz]} non-2xx answers; the authorizer's and nginx's last lines:"
        tail -n 20 "$WORK/authz.log" "$WORK/nginx-nginx_authz.log" >&2
    fi
    stop "${NGINX_PIDS[0]}"
    stop "$authz_pid"
}

TLS_ROWS=("tls_h1|gateway, DPoP, TLS (HTTP/1.1)" "tls_h2|gateway, DPoP, TLS (HTTP/2)"
    "tls_plain|gateway, plain proxy, TLS (HTTP/1.1)" "https_upstream|gateway, DPoP, https upstream")

if ! GATEWAY_HELP=$("$DPOP" gateway --help 2>&1); then
    log "\`dpop gateway\` does not exist yet: skipping the gateway rows"
    for row in "plain|gateway, plain proxy (DPoP off)" "memory|gateway, DPoP, memory replay store" \
        "redis|gateway, DPoP, Redis replay store" "${TLS_ROWS[@]}"; do
        skip "${row%%|*}" "${row#*|}" "no \`dpop gateway\` yet"
    done
    nginx_rows
else
    # ---- THE ONE PLACE TO ADJUST when the gateway's config schema settles ----------
    # Row 2 needs a route with DPoP off, which only the config file can say. This is
    # the shape agreed before the schema existed; change it here if the schema differs.
    #
    # plain_config FILE: a gateway on $GATEWAY_PORT with DPoP off on every path.
    plain_config() {
        cat >"$1" <<EOF
listen = "127.0.0.1:$GATEWAY_PORT"
upstream = "$UPSTREAM_URL"
issuer = "$ISSUER_URL"
audience = "$AUD"
allowed_hosts = ["127.0.0.1:$GATEWAY_PORT"]
[[routes]]
path_prefix = "/"
dpop = "off"
EOF
    }
    # ---------------------------------------------------------------------------------
    # The compared rows, ROUNDS times in turns; every other round runs them in reverse order,
    # so that a row's place in a round (the machine drifting while a round runs) weighs on
    # both sides of every ratio alike.
    # row_plain, row_memory, row_redis: this build's rows; with `base` as argument, the same
    # row of the baseline build (key `…_base`), or nothing when there is no BASELINE_BIN.
    # base_row KEY [base]: sets ROW_KEY, ROW_BIN and ROW_LABEL_PREFIX (the caller's locals);
    # fails when the row is not to run.
    base_row() {
        ROW_KEY=$1 ROW_BIN="" ROW_LABEL_PREFIX=""
        [[ ${2:-} == base ]] || return 0
        [[ -n ${BASELINE_BIN:-} ]] || return 1
        ROW_KEY=${1}_base ROW_BIN=$BASELINE_BIN ROW_LABEL_PREFIX="baseline build: "
    }
    row_plain() {
        local ROW_KEY ROW_BIN ROW_LABEL_PREFIX
        base_row plain "${1:-}" || return 0
        alloc_port GATEWAY_PORT
        plain_config "$WORK/$ROW_KEY.toml"
        gateway_row "$ROW_KEY" "${ROW_LABEL_PREFIX}gateway, plain proxy (DPoP off)" http --config "$WORK/$ROW_KEY.toml" --
    }
    GATEWAY_FLAGS=(--upstream "$UPSTREAM_URL" --issuer "$ISSUER_URL" --audience "$AUD")
    row_memory() {
        local ROW_KEY ROW_BIN ROW_LABEL_PREFIX
        base_row memory "${1:-}" || return 0
        alloc_port GATEWAY_PORT
        gateway_row "$ROW_KEY" "${ROW_LABEL_PREFIX}gateway, DPoP, memory replay store" http \
            --listen "127.0.0.1:$GATEWAY_PORT" --allowed-host "127.0.0.1:$GATEWAY_PORT" \
            "${GATEWAY_FLAGS[@]}" -- "${DPOP_FLAGS[@]}"
    }
    row_redis() {
        local ROW_KEY ROW_BIN ROW_LABEL_PREFIX
        base_row redis "${1:-}" || return 0
        if [[ -n $REDIS_URL ]]; then
            alloc_port GATEWAY_PORT
            HELPER_PID=$REDIS_PID HELPER_NAME=redis-server \
                gateway_row "$ROW_KEY" "${ROW_LABEL_PREFIX}gateway, DPoP, Redis replay store" http \
                --listen "127.0.0.1:$GATEWAY_PORT" --allowed-host "127.0.0.1:$GATEWAY_PORT" \
                "${GATEWAY_FLAGS[@]}" --replay-store "$REDIS_URL" -- "${DPOP_FLAGS[@]}"
        elif [[ -z $ROW_BIN ]]; then
            log "no Redis on 127.0.0.1:6379 and no redis-server on PATH: skipping the Redis row"
            skip redis "gateway, DPoP, Redis replay store" "no Redis available"
        fi
    }
    # Each ratio's two rows run next to each other (the baseline build's row right after
    # this build's), so that the machine has as little time as it can to change speed
    # between them: nginx and the plain proxy; the plain proxy, the bare verification and
    # the DPoP row; the memory and the Redis rows.
    ROUND_STEPS=("nginx_rows" "row_plain" "row_plain base" "measure_verify" "row_memory"
        "row_memory base" "row_redis" "row_redis base")
    for ((round_i = 1; round_i <= ROUNDS; round_i++)); do
        ROUND=""
        ((ROUNDS > 1)) && ROUND=$round_i
        if ((round_i % 2)); then
            for step in "${ROUND_STEPS[@]}"; do $step; done
        else
            for ((step_i = ${#ROUND_STEPS[@]} - 1; step_i >= 0; step_i--)); do
                ${ROUND_STEPS[step_i]}
            done
        fi
    done
    ROUND=""

    if ! wanted tls_h1 && ! wanted tls_h2 && ! wanted tls_plain && ! wanted https_upstream; then
        :
    elif [[ $GATEWAY_HELP != *--tls-cert* ]]; then
        log "\`dpop gateway\` has no --tls-cert yet: skipping the TLS rows"
        for row in "${TLS_ROWS[@]}"; do
            skip "${row%%|*}" "${row#*|}" "no TLS in \`dpop gateway\` yet"
        done
    else
        "$LOADGEN" certs --out "$WORK/certs"
        CERT_FLAGS=(--tls-cert "$WORK/certs/server.pem" --tls-key "$WORK/certs/server.key")
        CA_FLAGS=(--ca-file "$WORK/certs/ca.pem")

        # TLS listener, DPoP: the memory row's settings with the public URL spelled out,
        # so the proofs' htu is https://.
        for http in 1.1 2; do
            alloc_port GATEWAY_PORT
            key=tls_h${http%%.*}
            h2=()
            [[ $http == 2 ]] && h2=(--http2)
            gateway_row "$key" "gateway, DPoP, TLS (HTTP/$http)" https \
                --listen "127.0.0.1:$GATEWAY_PORT" --public-url "https://127.0.0.1:$GATEWAY_PORT" \
                "${CERT_FLAGS[@]}" "${GATEWAY_FLAGS[@]}" -- "${CA_FLAGS[@]}" "${h2[@]}" "${DPOP_FLAGS[@]}"
        done

        # TLS listener, DPoP off: row 2's file plus a [tls] table. (This file and the
        # next follow the gateway's config schema too: adjust them with the one above.)
        alloc_port GATEWAY_PORT
        cat >"$WORK/plain-tls.toml" <<EOF
listen = "127.0.0.1:$GATEWAY_PORT"
upstream = "$UPSTREAM_URL"
issuer = "$ISSUER_URL"
audience = "$AUD"
allowed_hosts = ["127.0.0.1:$GATEWAY_PORT"]
[tls]
cert_file = "$WORK/certs/server.pem"
key_file = "$WORK/certs/server.key"
[[routes]]
path_prefix = "/"
dpop = "off"
EOF
        gateway_row tls_plain "gateway, plain proxy, TLS (HTTP/1.1)" https \
            --config "$WORK/plain-tls.toml" -- "${CA_FLAGS[@]}"

        # Plain listener, DPoP, and an https upstream (dpop-loadgen upstream over TLS,
        # with the same certificate), trusted through ca_file.
        if wanted https_upstream; then
            alloc_port TLS_UPSTREAM_PORT
            start upstream-tls "$LOADGEN" upstream --listen "127.0.0.1:$TLS_UPSTREAM_PORT" "${CERT_FLAGS[@]}"
            TLS_UPSTREAM_PID=$LAST_PID
            if wait_port "$TLS_UPSTREAM_PORT" "$TLS_UPSTREAM_PID" upstream-tls; then
                alloc_port GATEWAY_PORT
                cat >"$WORK/https-upstream.toml" <<EOF
listen = "127.0.0.1:$GATEWAY_PORT"
issuer = "$ISSUER_URL"
audience = "$AUD"
allowed_hosts = ["127.0.0.1:$GATEWAY_PORT"]
[upstream]
url = "https://127.0.0.1:$TLS_UPSTREAM_PORT"
ca_file = "$WORK/certs/ca.pem"
EOF
                gateway_row https_upstream "gateway, DPoP, https upstream" http \
                    --config "$WORK/https-upstream.toml" -- "${DPOP_FLAGS[@]}"
            else
                skip https_upstream "gateway, DPoP, https upstream" "the https upstream did not start"
            fi
            stop "$TLS_UPSTREAM_PID"
        fi
    fi
fi

# --- the issuer: tokens per second ------------------------------------------------

ISSUER_SECRET="loadtest-secret-$RANDOM$RANDOM$RANDOM"
# issuer_row KEY LABEL DATABASE-URL
issuer_row() {
    local key=$1 label=$2 database=$3 port pid
    wanted "$key" || return 0
    alloc_port port
    mkdir -p "$WORK/issuer-$key"
    cat >"$WORK/issuer-$key/issuer.toml" <<EOF
issuer = "http://127.0.0.1:$port"
listen = "127.0.0.1:$port"
data_dir = "data"
database = "$database"
[[clients]]
id = "bench"
secret = "env:LOADTEST_CLIENT_SECRET"
grants = ["client_credentials"]
scopes = ["read"]
audiences = ["$AUD"]
EOF
    LOADTEST_CLIENT_SECRET=$ISSUER_SECRET start "issuer-$key" "${SUT[@]}" "$DPOP" issuer --config "$WORK/issuer-$key/issuer.toml"
    pid=$LAST_PID
    if wait_port "$port" "$pid" "issuer-$key"; then
        measure "$key" "$label" "http://127.0.0.1:$port/token" --cpu-pid "$pid" \
            --method POST --token-endpoint \
            --key "$WORK/client.pem" \
            --form "grant_type=client_credentials&client_id=bench&client_secret=$ISSUER_SECRET"
        if [[ ${NON2XX[$key]:-0} != 0 ]]; then
            log "$label: ${NON2XX[$key]} non-2xx answers; the issuer's last lines:"
            tail -n 20 "$WORK/issuer-$key.log" >&2
        fi
    else
        skip "$key" "$label" "the issuer did not start (see above)"
    fi
    stop "$pid"
}

if ! "$DPOP" issuer --help >/dev/null 2>&1; then
    skip issuer_sqlite "issuer, client_credentials + DPoP, SQLite" "no \`dpop issuer\` yet"
else
    issuer_row issuer_sqlite "issuer, client_credentials + DPoP, SQLite" "sqlite://data/issuer.db"
    PG_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
    PG_SCHEMA="loadtest_$$"
    if ! wanted issuer_postgres; then
        :
    elif command -v psql >/dev/null && psql "$PG_URL" -Atqc "CREATE SCHEMA $PG_SCHEMA" >/dev/null 2>&1; then
        issuer_row issuer_postgres "issuer, client_credentials + DPoP, PostgreSQL" \
            "$PG_URL?options=-c%20search_path%3D$PG_SCHEMA"
        psql "$PG_URL" -Atqc "DROP SCHEMA $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
    else
        skip issuer_postgres "issuer, client_credentials + DPoP, PostgreSQL" "no PostgreSQL at $PG_URL"
    fi
fi

# --- report ------------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# stat KIND A B [C]: over the rounds (space-separated lists, one value per round, NA for a
# round that failed), the per-round values of KIND (ratio: A/B; excess: (A - B) / C;
# median: A alone), rounds missing a value skipped; prints "MEDIAN MIN MAX N", or nothing.
stat() {
    awk -v kind="$1" -v a="$2" -v b="${3:-}" -v c="${4:-}" 'BEGIN {
        na = split(a, A, " "); split(b, B, " "); split(c, C, " "); n = 0
        for (i = 1; i <= na; i++) {
            if (A[i] == "NA") continue
            if (kind == "median") v = A[i]
            else if (B[i] == "NA" || B[i] == "" || B[i] + 0 <= 0) continue
            else if (kind == "ratio") v = A[i] / B[i]
            else if (C[i] == "NA" || C[i] == "" || C[i] + 0 <= 0) continue
            else v = (A[i] - B[i]) / C[i]
            V[++n] = v + 0
        }
        if (n == 0) exit
        for (i = 2; i <= n; i++) {
            x = V[i]
            for (j = i - 1; j > 0 && V[j] > x; j--) V[j + 1] = V[j]
            V[j + 1] = x
        }
        m = (n % 2) ? V[(n + 1) / 2] : (V[n / 2] + V[n / 2 + 1]) / 2
        printf "%.6f %.6f %.6f %d", m, V[1], V[n], n
    }'
}

# product A B: the per-round products of two per-round lists ("NA" where either lacks one).
product() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, A, " "); split(b, B, " ")
        for (i = 1; i <= n; i++) printf "%s ", (A[i] == "NA" || B[i] == "NA" || B[i] == "") ? "NA" : A[i] * B[i]
    }'
}

# spread_pct LO HI: how far HI is above LO, in per cent (one decimal).
spread_pct() {
    awk -v lo="$1" -v hi="$2" 'BEGIN { printf "%.1f", (lo > 0 ? (hi / lo - 1) * 100 : 0) }'
}

# paired KIND A B [C]: sets R (the median of the per-round values, two decimals) and NOTE
# (" (median of N rounds: MIN-MAX)" with several rounds, " of ROUNDS" added when some
# rounds lack a value, else empty); R is empty when no round has every value.
paired() {
    local m lo hi n
    R="" NOTE=""
    read -r m lo hi n <<<"$(stat "$@")" || true
    [[ -n ${n:-} ]] || return 0
    R=$(printf '%.2f' "$m")
    local of=""
    ((n < ROUNDS)) && of=" of $ROUNDS"
    if ((n > 1)); then
        NOTE=$(printf ' (median of %d%s rounds: %.2f–%.2f)' "$n" "$of" "$lo" "$hi")
    elif ((ROUNDS > 1)); then
        NOTE=" (1 round$of)"
    fi
    return 0
}

# versus FIELD KEY BASE: sets R and NOTE for KEY's FIELD (RPS or CPU) over BASE's: paired
# by round when both rows ran in the same rounds, else the ratio of the two rows' figures.
versus() {
    local -n field=$1 rounds="R_$1"
    local a=${rounds[$2]:-} b=${rounds[$3]:-}
    if [[ -n $a && -n $b ]] && (($(wc -w <<<"$a") == $(wc -w <<<"$b"))); then
        paired ratio "$a" "$b"
    else
        R=$(ratio "${field[$2]}" "${field[$3]}") NOTE=""
    fi
}

# sum LIST: the sum of a space-separated list of numbers.
sum() { awk -v l="$1" 'BEGIN { n = split(l, v, " "); for (i = 1; i <= n; i++) s += v[i]; print s + 0 }'; }

# With several rounds, each row's figures become the medians of its rounds.
if ((ROUNDS > 1)); then
    for key in $TABLE_KEYS; do
        for name in RPS P50 P99 CPU SPLIT_A INVOL; do
            declare -n round_list="R_$name" figure="$name"
            if [[ -n ${round_list[$key]:-} ]]; then
                read -r m _ <<<"$(stat median "${round_list[$key]}")" || true
                if [[ -n ${m:-} ]]; then
                    figure[$key]=$(printf '%.3f' "$m")
                fi
            fi
            unset -n round_list figure
        done
        # Non-2xx answers and errors: the sums over the rounds, so that a bad round shows.
        if [[ -n ${R_NON2XX[$key]:-} ]]; then
            NON2XX[$key]=$(sum "${R_NON2XX[$key]}")
            ERRORS[$key]=$(sum "${R_ERRORS[$key]}")
            SECS[$key]=${SECS[$key]:-$DURATION}
            if [[ -n ${PROOFS_RAN_OUT[$key]:-} && ${SECS[$key]} != *"ran out"* ]]; then
                SECS[$key]+=" (proofs ran out in a round)"
            fi
        fi
        if [[ -n ${SPLIT_NAMES[$key]:-} ]]; then
            read -r m_a _ <<<"$(stat median "${R_SPLIT_A[$key]}")" || true
            read -r m_b _ <<<"$(stat median "${R_SPLIT_B[$key]}")" || true
            read -r name_a name_b <<<"${SPLIT_NAMES[$key]}"
            [[ -n ${m_a:-} && -n ${m_b:-} ]] &&
                CPU_SPLIT[$key]=$(printf '%s %.1f + %s %.1f (medians)' "$name_a" "$m_a" "$name_b" "$m_b")
        fi
    done
    if [[ -n $R_VERIFY ]]; then
        read -r m _ <<<"$(stat median "$R_VERIFY")" || true
        VERIFY_US=""
        [[ -n ${m:-} ]] && VERIFY_US=$(printf '%.3f' "$m")
    fi
fi
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

MISSED=0
# check NAME VALUE TARGET TEST...: one row of the checks table; TEST decides met/missed.
check() {
    local name=$1 value=$2 target=$3 result="met"
    shift 3
    if ! "$@"; then
        result="**missed**"
        MISSED=1
    fi
    echo "| $name | $value | $target | $result |"
}

echo
echo "### Load test, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
rounds_note=""
((ROUNDS > 1)) && rounds_note=" The compared rows ran $ROUNDS rounds in turns: each shows the median of its rounds (non-2xx and errors: their sums), each check the median of its per-round ratios."
pin_note=""
[[ -n $OTHER_CPUS ]] && pin_note=" Processes under test on CPUs $SUT_CPUS (the gateway with one serving thread and nginx with one worker per CPU there), the load generator, the upstream and the run's own Redis on CPUs $OTHER_CPUS."
echo "Machine: $MACHINE_CPUS cores, Linux $(uname -r); $CONNECTIONS connections, ${DURATION} s per row after a ${WARMUP} s warmup, loopback.$rounds_note$pin_note"
echo
echo "| row | requests/s | p50 ms | p99 ms | non-2xx | errors | seconds | server CPU µs/request |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for row in "${TABLE_ROWS[@]}"; do
    key=${row%%|*}
    label=${row#*|}
    if is_number "${RPS[$key]:-}"; then
        printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$label" "${RPS[$key]}" \
            "${P50[$key]}" "${P99[$key]}" "${NON2XX[$key]}" "${ERRORS[$key]}" "${SECS[$key]}" \
            "${CPU[$key]:-}${CPU_SPLIT[$key]:+ (${CPU_SPLIT[$key]})}"
    else
        printf '| %s | %s | | | | | | |\n' "$label" "${RPS[$key]:-failed}"
    fi
done
echo
echo "| check | value | target | |"
echo "|---|---:|---:|---|"
# Requests/s with DPoP against the plain proxy: information. It was a target (>= 0.40x)
# while proxying cost several times what it does now; the faster the plain proxy, the lower
# this ratio, since every DPoP request still pays one signature verification (the plain
# proxy's CPU over that plus one bare verification bounds it). What DPoP adds is checked
# below in bare verifications, which a faster proxy does not move.
if is_number "${RPS[memory]:-}" && is_number "${RPS[plain]:-}"; then
    paired ratio "${R_RPS[memory]}" "${R_RPS[plain]}"
    echo "| DPoP (memory store) vs plain proxy, requests/s | ${R}x$NOTE | (information) | |"
fi
# The Redis store's target is the gateway's, as the plain proxy's and the DPoP check's
# are: requests per CPU second of the gateway process with Redis against the memory
# store (the memory row's CPU µs/request ÷ the Redis row's gateway part). redis-server's
# own CPU is the store's, not the gateway's: in a deployment it runs elsewhere, shared by
# every instance, and here it is shown beside the check. Without a split (redis-server's
# CPU could not be read), the Redis row's figure is the gateway's alone.
REDIS_GATEWAY_CPU="" R_REDIS_GATEWAY_CPU=""
if is_number "${SPLIT_A[redis]:-}"; then
    REDIS_GATEWAY_CPU=${SPLIT_A[redis]} R_REDIS_GATEWAY_CPU=${R_SPLIT_A[redis]}
elif [[ -z $REDIS_PID ]] && is_number "${CPU[redis]:-}"; then
    REDIS_GATEWAY_CPU=${CPU[redis]} R_REDIS_GATEWAY_CPU=${R_CPU[redis]}
fi
if is_number "$REDIS_GATEWAY_CPU" && is_number "${CPU[memory]:-}"; then
    paired ratio "${R_CPU[memory]}" "$R_REDIS_GATEWAY_CPU"
    check "Redis vs memory replay store, the gateway's requests per CPU second (its CPU µs/request, memory ÷ Redis)" \
        "${R}x (${CPU[memory]} vs $REDIS_GATEWAY_CPU)$NOTE" ">= 0.90x" at_least "${R:-0}" 0.90
elif wanted redis && wanted memory; then
    echo "| Redis vs memory replay store, the gateway's requests per CPU second | n/a | >= 0.90x | |"
fi
if is_number "${SPLIT_A[redis]:-}" && is_number "${CPU[memory]:-}"; then
    # The store's whole cost: redis-server's CPU counted with the gateway's.
    paired ratio "${R_CPU[memory]}" "${R_CPU[redis]}"
    echo "| Redis vs memory replay store, requests per CPU second of the gateway and redis-server together | ${R}x (${CPU[memory]} vs ${CPU[redis]})$NOTE | (information) | |"
fi
if is_number "${RPS[redis]:-}" && is_number "${RPS[memory]:-}"; then
    # Requests/s: on a machine whose cores redis-server shares with the gateway, the
    # generator and the upstream, its CPU (6-7 µs per insert on the guests of
    # docs/benchmarks.md) comes out of everyone's, so this reads near the line above;
    # with SUT_CPUS, redis-server runs beside the generator, away from the gateway.
    paired ratio "${R_RPS[redis]}" "${R_RPS[memory]}"
    where="on the same cores"
    if [[ -n $OTHER_CPUS ]]; then
        where="on 127.0.0.1:6379, wherever it runs"
        [[ $REDIS_URL != redis://127.0.0.1:6379 ]] && where="on CPUs $OTHER_CPUS, apart from the gateway"
    fi
    echo "| Redis vs memory replay store, requests/s (redis-server $where) | ${R}x$NOTE | (information) | |"
fi
if is_number "${RPS[redis]:-}" && is_number "${RPS[memory]:-}" && [[ -n ${R_GEN[redis]:-} && -n ${R_GEN[memory]:-} ]]; then
    # The same with each row's speed taken out: the generator does the same work per
    # request on both rows, so requests/s times its CPU per request (its share of the
    # machine) moves with the stores' costs, not with how fast the machine ran that row.
    paired ratio "$(product "${R_RPS[redis]}" "${R_GEN[redis]}")" "$(product "${R_RPS[memory]}" "${R_GEN[memory]}")"
    [[ -n $R ]] && echo "| Redis vs memory replay store, requests/s times the generator's CPU per request (the machine's speed in each row taken out) | ${R}x$NOTE | (information) | |"
fi
for key in plain memory redis; do
    if is_number "${P99[$key]:-}"; then
        check "p99, gateway row \"$key\"" "${P99[$key]} ms" "< 5 ms" below "${P99[$key]}" 5
    fi
done
if is_number "${RPS[issuer_postgres]:-}" && is_number "${RPS[issuer_sqlite]:-}"; then
    echo "| issuer tokens/s, PostgreSQL vs SQLite | $(ratio "${RPS[issuer_postgres]}" "${RPS[issuer_sqlite]}")x | (information) | |"
fi
if is_number "${RPS[overhead]:-}" && is_number "${RPS[upstream]:-}"; then
    echo "| generator with DPoP headers vs without (upstream direct) | $(ratio "${RPS[overhead]}" "${RPS[upstream]}")x | (information) | |"
fi
# Each TLS row against the row that differs from it only by TLS, and this build against
# the baseline build (BASELINE_BIN): requests/s, and the gateway's CPU µs per request.
for pair in "tls_h1|memory|DPoP, TLS (HTTP/1.1) vs plain listener" \
    "tls_h2|memory|DPoP, TLS (HTTP/2) vs plain listener (HTTP/1.1)" \
    "tls_plain|plain|plain proxy, TLS (HTTP/1.1) vs plain listener" \
    "https_upstream|memory|DPoP, https upstream vs http upstream" \
    "plain|plain_base|plain proxy, this build vs the baseline build" \
    "memory|memory_base|DPoP (memory store), this build vs the baseline build" \
    "redis|redis_base|DPoP (Redis store), this build vs the baseline build"; do
    IFS='|' read -r key base name <<<"$pair"
    if is_number "${RPS[$key]:-}" && is_number "${RPS[$base]:-}"; then
        versus RPS "$key" "$base"
        echo "| $name, requests/s | ${R}x$NOTE | (information) | |"
    fi
    if is_number "${CPU[$key]:-}" && is_number "${CPU[$base]:-}"; then
        versus CPU "$key" "$base"
        whose="gateway"
        [[ $key == redis ]] && whose="gateway + redis-server"
        echo "| $name, $whose CPU µs/request | ${R}x (${CPU[$key]} vs ${CPU[$base]})$NOTE | (information) | |"
    fi
done

# The authorizer behind nginx against the gateway doing the same checks, against nginx
# alone, and the gateway's plain proxy against nginx's (CPU: all the processes of each
# row, nginx's master and workers and the authorizer together).
for pair in "nginx_authz|memory|nginx + dpop authz vs gateway, DPoP (memory store)" \
    "nginx_authz|nginx_plain|nginx + dpop authz vs nginx alone (plain proxy)"; do
    IFS='|' read -r key base name <<<"$pair"
    if is_number "${RPS[$key]:-}" && is_number "${RPS[$base]:-}"; then
        versus RPS "$key" "$base"
        echo "| $name, requests/s | ${R}x$NOTE | (information) | |"
    fi
    if is_number "${CPU[$key]:-}" && is_number "${CPU[$base]:-}"; then
        versus CPU "$key" "$base"
        echo "| $name, CPU µs/request | ${R}x (${CPU[$key]} vs ${CPU[$base]})$NOTE | (information) | |"
    fi
done
if is_number "${RPS[plain]:-}" && is_number "${RPS[nginx_plain]:-}"; then
    versus RPS plain nginx_plain
    echo "| gateway plain proxy vs nginx plain proxy, requests/s | ${R}x$NOTE | (information) | |"
fi
if is_number "${VERIFY_US:-}" && is_number "${CPU[memory]:-}" && is_number "${CPU[plain]:-}"; then
    # What a DPoP request costs beyond proxying, in bare signature verifications measured
    # in this run: 1 would be the signature alone. Reported against its target, which
    # belongs to the gateway's own work: not a check of this script (STRICT ignores it).
    paired excess "${R_CPU[memory]}" "${R_CPU[plain]}" "$R_VERIFY"
    if awk -v a="${R:-9}" 'BEGIN { exit !(a <= 1.30) }'; then result="met"; else result="**missed** (not checked)"; fi
    echo "| DPoP (memory store) minus plain proxy, CPU µs/request, in bare ES256 verifications (${VERIFY_US} µs) | ${R}x$NOTE | <= 1.30x | $result |"
fi
if is_number "${INVOL[memory]:-}" && is_number "${INVOL[plain]:-}"; then
    # Where much of what DPoP adds besides the signature goes on a machine whose cores the
    # gateway shares with the load: a DPoP request keeps the gateway busy, so a peer woken
    # by one of its writes takes its CPU rather than an idle one.
    invol="${INVOL[memory]} per DPoP request (memory store), ${INVOL[plain]} per plain one"
    # (Not the Redis row's: its figure counts redis-server's threads with the gateway's.)
    echo "| the gateway's involuntary context switches | $invol | (information) | |"
fi
if [[ -n $R_VERIFY ]]; then
    # How far the machine's speed moved between rounds, as the bare verification saw it:
    # the DPoP check pairs rows measured at different moments, so it moves with this.
    read -r m lo hi n <<<"$(stat median "$R_VERIFY")" || true
    if [[ -n ${n:-} ]] && ((n > 1)); then
        spread=$(spread_pct "$lo" "$hi")
        unsteady=""
        if awk -v s="$spread" 'BEGIN { exit !(s > 10) }'; then
            unsteady="; the machine's speed moved by more than 10 % between rounds, and the DPoP check with it"
        fi
        of=""
        ((n < ROUNDS)) && of=" of $ROUNDS"
        printf '| bare ES256 verification over %d%s rounds, µs of CPU | %.1f (%.1f–%.1f, %s %% apart%s) | (information) | |\n' \
            "$n" "$of" "$m" "$lo" "$hi" "$spread" "$unsteady"
    fi
fi
# The same seen from the rows themselves: the generator's work per request is the same on
# every DPoP row over plain HTTP (the same headers, the same answer), so its own CPU per
# request over those rows moves only with the machine's speed while they ran.
gen_rows=""
for key in memory redis memory_base redis_base; do
    gen_rows+="${R_GEN[$key]:-}"
done
read -r m lo hi n <<<"$(stat median "$gen_rows")" || true
if [[ -n ${n:-} ]] && ((n > 1)); then
    spread=$(spread_pct "$lo" "$hi")
    printf '| the load generator'"'"'s own CPU per DPoP request over %d runs of the DPoP rows (its work is the same in each: the machine'"'"'s speed), µs | %.1f (%.1f–%.1f, %s %% apart) | (information) | |\n' \
        "$n" "$m" "$lo" "$hi" "$spread"
fi
if is_number "${CPU[plain]:-}" && is_number "${CPU[nginx_plain]:-}"; then
    # Reported against its target, which belongs to the gateway's own work: not a check
    # of this script (STRICT ignores it).
    paired ratio "${R_CPU[plain]}" "${R_CPU[nginx_plain]}"
    if awk -v a="${R:-9}" 'BEGIN { exit !(a <= 1.20) }'; then result="met"; else result="**missed** (not checked)"; fi
    echo "| gateway plain proxy vs nginx plain proxy, CPU µs/request | ${R}x (${CPU[plain]} vs ${CPU[nginx_plain]})$NOTE | <= 1.20x | $result |"
fi

if [[ $STRICT == 1 && $MISSED == 1 ]]; then
    exit 1
fi

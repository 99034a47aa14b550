#!/bin/bash
# The two-node demo behind `make demo` / `make demo-stop`, as root.
#
#   demo.sh start   pyglfsd on 127.0.0.2 and 127.0.0.3, replica-2 volume gvol0 with a
#                   brick on each, mounted at .demo/mnt; writes a file and shows it
#                   in the mount and in both bricks
#   demo.sh stop    unmounts, stops the volume and both daemons (by the PIDs recorded
#                   under .demo/run); keeps .demo (state, bricks, logs)
#
# Both are safe to repeat: start only does what is missing (a daemon that died is
# started again, and restarts its bricks), stop only stops what runs.
# Every state dir, log, brick and PID file is under .demo/ of the current directory.
# For tests: PYGLFS_DEMO_DIR (instead of ./.demo), PYGLFS_DEMO_PORT (pyglfsd's port,
# 24750), PYGLFS_DEMO_BRICK_PORT (first brick port, 49750).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH=$ROOT/.venv/bin:$PATH
DEMO=$(realpath -m "${PYGLFS_DEMO_DIR:-$PWD/.demo}")
PORT=${PYGLFS_DEMO_PORT:-24750}
BRICK_PORT=${PYGLFS_DEMO_BRICK_PORT:-49750}
NODE1=127.0.0.2
NODE2=127.0.0.3
VOL=gvol0
MNT=$DEMO/mnt
WAIT=30  # seconds: the bound of every wait below

if [ "$PORT" = 24750 ]; then MGMT=$NODE1 PEER=$NODE2 PORT_OPT=""
else MGMT=$NODE1:$PORT PEER=$NODE2:$PORT PORT_OPT=",volfile-server-port=$PORT"; fi

say() { printf '\n== %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { echo "demo: $*" >&2; exit 1; }
# Its output is matched with `grep >/dev/null`, not `grep -q`: under pipefail a grep
# that quits early could make the pipe fail with SIGPIPE.
cli() { pyglfs --mgmt "$MGMT" "$@"; }
clirun() { run pyglfs --mgmt "$MGMT" "$@"; }

# PID runs (not a zombie) a program whose command line holds WORD and this demo's dir:
# a recorded PID that the system gave to another process since is not ours to stop.
ours() {
    local pid=$1 word=$2 cmd state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmd=$(tr '\0' ' ' 2>/dev/null </proc/"$pid"/cmdline) || return 1
    state=$(sed 's/.*) \(.\).*/\1/' 2>/dev/null </proc/"$pid"/stat) || return 1
    [ "$state" != Z ] && [[ $cmd == *"$word"* && $cmd == *"$DEMO"* ]]
}

# Poll COMMAND... every 0.2 s until it succeeds; fail after $WAIT seconds.
wait_until() {
    local what=$1 i
    shift
    for ((i = 0; i < WAIT * 5; i++)); do
        "$@" && return 0
        sleep 0.2
    done
    die "timed out after ${WAIT}s waiting for $what"
}

stop_pid() {  # PID: SIGTERM, SIGKILL after $WAIT seconds
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < WAIT * 5; i++)); do
        [ -d /proc/"$pid" ] && [ "$(sed 's/.*) \(.\).*/\1/' </proc/"$pid"/stat 2>/dev/null)" != Z ] \
            || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

state_dir() { echo "$DEMO/state/$1"; }
pid_file() { echo "$DEMO/run/pyglfsd-$1.pid"; }

# The PID of this demo's pyglfsd for node IP, from our PID file or its listen record.
daemon_pid() {
    local ip=$1 pid
    for pid in "$(cat "$(pid_file "$ip")" 2>/dev/null)" \
               "$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$(state_dir "$ip")/listen" 2>/dev/null)"; do
        if ours "$pid" pyglfsd; then echo "$pid"; return 0; fi
    done
    return 1
}

start_daemon() {
    local ip=$1 pid
    if pid=$(daemon_pid "$ip"); then
        echo "pyglfsd on $ip: already running (pid $pid)"
    else
        mkdir -p "$(state_dir "$ip")" "$DEMO/logs" "$DEMO/run"
        run pyglfsd --state-dir "$(state_dir "$ip")" --listen "$ip:$PORT" \
            --brick-port "$BRICK_PORT" --log-file "$DEMO/logs/pyglfsd-$ip.log" \
            || die "pyglfsd on $ip did not start; see $DEMO/logs/pyglfsd-$ip.log"
        pid=$(daemon_pid "$ip") || die "pyglfsd on $ip started but left no listen record"
    fi
    echo "$pid" >"$(pid_file "$ip")"
}

peer_connected() { cli peer status 2>/dev/null | grep "State: Peer in Cluster (Connected)" >/dev/null; }

# Every brick of the volume online, per `volume status --json`.
bricks_online() {
    cli volume status "$VOL" --json 2>/dev/null | python3 -c '
import json, sys
bricks = json.load(sys.stdin)["volumes"][0]["bricks"]
sys.exit(0 if bricks and all(b["online"] for b in bricks) else 1)'
}

# In the mount table: mountpoint(1) cannot tell for a mount whose client died, which
# answers ENOTCONN to everything.
mounted() { awk -v m="$MNT" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
mount_alive() { mounted && stat -t "$MNT" >/dev/null 2>&1; }

start() {
    [ "$(id -u)" = 0 ] || die "run as root (it starts daemons and mounts a FUSE filesystem)"
    [ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is not available on this machine"
    mkdir -p "$DEMO/bricks"
    mounted || mkdir -p "$MNT"

    say "Management daemons ($NODE1 and $NODE2 stand in for two servers)"
    start_daemon $NODE1
    start_daemon $NODE2

    say "Trusted storage pool"
    if cli peer status | grep -x "Hostname: $NODE2" >/dev/null; then
        echo "$NODE2 is already in the pool"
    else
        clirun peer probe "$PEER"
    fi
    wait_until "$NODE1 to see $NODE2 connected" peer_connected
    clirun pool list

    say "Volume $VOL: replica 2, one brick on each node"
    if cli volume info "$VOL" >/dev/null 2>&1; then
        echo "volume $VOL already exists"
    else
        # GlusterFS refuses bricks on the root file system unless told `force`.
        local force=""
        [ "$(stat -c %d "$DEMO/bricks")" = "$(stat -c %d /)" ] && force=force
        clirun volume create $VOL replica 2 "$NODE1:$DEMO/bricks/b1" \
            "$NODE2:$DEMO/bricks/b2" $force
    fi
    if cli volume info "$VOL" | grep -x "Status: Started" >/dev/null; then
        echo "volume $VOL is already started"
        # A brick that is down (its supervisor gave up, or was never started) comes back.
        bricks_online || clirun volume start $VOL force
    else
        clirun volume start $VOL
    fi
    wait_until "the bricks of $VOL to be online" bricks_online

    say "Mount"
    if mount_alive; then
        echo "$MNT: already mounted"
    else
        if mounted; then
            echo "$MNT: the mount's client is gone; unmounting it first"
            run umount -l "$MNT"
        fi
        run mount -t fuse.pyglfs "$NODE1:/$VOL" "$MNT" \
            -o "backup-volfile-servers=$NODE2$PORT_OPT,log-file=$DEMO/logs/mnt.log"
    fi

    say "A file written through the mount"
    printf '+ echo "hello from pyglfs" > %s\n' "$MNT/hello.txt"
    echo "hello from pyglfs" >"$MNT/hello.txt"
    run ls -l "$MNT"
    run cat "$MNT/hello.txt"

    say "The same file in both bricks (plain directories)"
    run ls -l "$DEMO/bricks/b1" "$DEMO/bricks/b2"
    run cat "$DEMO/bricks/b1/hello.txt" "$DEMO/bricks/b2/hello.txt"

    say "Volume"
    clirun volume info $VOL
    clirun volume status $VOL

    local d=${DEMO#"$PWD"/}  # shorter to read when it is under the current directory
    cat <<EOF

== The demo is running
  Volume $VOL is mounted at $d/mnt: every file written there lands in
  $d/bricks/b1 and $d/bricks/b2.
  Try:
    echo more > $d/mnt/more.txt; ls -l $d/bricks/b*/
    pyglfs --mgmt $MGMT volume status $VOL     # brick ports and PIDs
    kill BRICK_PID                          # pyglfsd starts it again
    pyglfs --mgmt $MGMT volume set $VOL network.ping-timeout 5
  Logs: $d/logs (daemons, mount) and $d/state/*/logs/bricks
  Stop: make demo-stop (unmounts, stops the volume and both daemons; keeps $d:
        rm -rf $d afterwards removes it)
EOF
}

stop() {
    if [ ! -d "$DEMO" ]; then
        echo "demo: nothing to stop ($DEMO does not exist)"
        return 0
    fi
    if mounted; then
        run umount "$MNT" || run umount -l "$MNT"
        wait_until "$MNT to be unmounted" eval '! mounted'
    fi
    local ip pid f up=1
    for ip in $NODE1 $NODE2; do daemon_pid "$ip" >/dev/null || up=0; done
    if [ $up = 1 ] && cli volume info "$VOL" 2>/dev/null | grep -x "Status: Started" >/dev/null; then
        run pyglfs --mode=script --mgmt "$MGMT" volume stop $VOL \
            || echo "demo: volume stop failed; stopping the bricks by PID instead"
    fi
    for ip in $NODE1 $NODE2; do
        if pid=$(daemon_pid "$ip"); then
            echo "stopping pyglfsd on $ip (pid $pid)"
            stop_pid "$pid"
        fi
        rm -f "$(pid_file "$ip")"
    done
    # Bricks outlive their pyglfsd: any left (the volume could not be stopped) go by
    # the PIDs their daemons recorded.
    for f in "$DEMO"/state/*/vols/*/run/*.json; do
        [ -e "$f" ] || continue
        pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$f")
        if ours "$pid" brickd; then
            echo "stopping brick pid $pid"
            stop_pid "$pid"
        fi
    done
    echo "demo stopped; $DEMO keeps the state, bricks and logs (rm -rf $DEMO removes them)"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

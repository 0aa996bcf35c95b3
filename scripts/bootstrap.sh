#!/bin/sh
# Bootstrap a Debian 12 box (as root) for criu-macvlan, idempotently:
# criu 4.1.1 + python3-pycriu from Debian trixie (pinned low) without moving the
# system's Python (criu 4.1.1 needs trixie's libc6 >= 2.38; python3-pycriu is pure
# Python and runs on bookworm's python3 3.11 and python3-protobuf), iptables, iproute2,
# runc + busybox-static (the user-namespace container tests), lxc (the LXC tests:
# its busybox template works offline), gcc (the criu < 4.2
# socket-option shim, scripts/criu-sockopt-compat.c),
# and a .venv built from the system python with the project installed editable.
set -eu
cd "$(dirname "$0")/.."

need_apt=0
criu_ok() {
    command -v criu >/dev/null 2>&1 || return 1
    v=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p')
    dpkg --compare-versions "${v:-0}" ge 3.19 || return 1
    [ -d /usr/lib/python3/dist-packages/pycriu ] || return 1
}
for bin in iptables ip unshare setsid runc lxc-checkpoint cc; do
    command -v "$bin" >/dev/null 2>&1 || need_apt=1
done
criu_ok || need_apt=1
dpkg -s busybox-static >/dev/null 2>&1 || need_apt=1  # a static busybox: the test containers' rootfs
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt=1

if [ "$need_apt" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! grep -rqs 'trixie' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat > /etc/apt/sources.list.d/criu-macvlan-trixie.sources <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    if [ ! -e /etc/apt/preferences.d/criu-macvlan-trixie ]; then
        cat > /etc/apt/preferences.d/criu-macvlan-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
    fi
    apt-get update -qq
    apt-get install -y -qq iptables iproute2 util-linux python3 python3-venv python3-pip \
        runc busybox-static lxc gcc libc6-dev >/dev/null
    if ! criu_ok; then
        # -t trixie for criu and the libraries it links (libc6 and friends) only, and
        # no Recommends: with -t trixie they bring trixie's python3-pycriu, and with it
        # trixie's python3-protobuf and python3 3.13. pycriu alone comes from trixie.
        apt-get install -y -qq -t trixie --no-install-recommends criu >/dev/null
        apt-get install -y -qq --no-install-recommends python3-pycriu/trixie >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hooks/criu-macvlan-action -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q --config-settings editable_mode=compat -e '.[test]'
    touch "$stamp"
fi
# Byte-compile the package: with PYTHONDONTWRITEBYTECODE set (as in this project's
# shells and CI) Python never writes .pyc itself, and every action-script run would
# compile criu_macvlan from source again. Cheap when nothing changed.
.venv/bin/python -m compileall -q criu_macvlan

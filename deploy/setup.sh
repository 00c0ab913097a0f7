#!/usr/bin/env bash
# Set up dnstrail on a fresh Debian 12 machine, as root.
#
#   deploy/setup.sh          python3-venv + python3-bpfcc + gcc from apt, the project into .venv
#   deploy/setup.sh --lab    also what the tests and the lab need: kernel headers (linked to the
#                            running kernel when it has none of its own), tracefs, dnsmasq,
#                            unbound, dig/kdig, golang, musl, iodine, dns2tcp, dnsperf, tshark,
#                            tcpdump, chromium-headless-shell (the HTML report in a browser)
#   deploy/setup.sh --jupyter  also JupyterLab and ipykernel in .venv (the "jupyter" extra) and
#                            the venv's kernel "dnstrail" registered inside it; then
#                            .venv/bin/jupyter lab notebooks/incident.ipynb
#
# Idempotent: a second run only checks. The venv sees Debian's bcc module (the PyPI package
# named "bcc" is an unrelated project) through a .pth file that exposes bcc and nothing else.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lab=0
jupyter=0
for arg in "$@"; do
  case "$arg" in
    --lab) lab=1 ;;
    --jupyter) jupyter=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (apt-get, kernel headers and tracefs need it)" >&2
  exit 1
fi

# gcc + libc6-dev: pip compiles the recorder's spool routine (capture/_spool.c) at install
apt_pkgs=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools gcc libc6-dev)
if [ "$lab" = 1 ]; then
  apt_pkgs+=(linux-headers-amd64 iproute2 procps psmisc dnsmasq-base unbound bind9-dnsutils
             knot-dnsutils golang-go musl-tools iodine dns2tcp dnsperf tshark
             tcpdump net-tools chromium-headless-shell)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# unbound's package enables a system service we do not want answering on :53 of the host.
if [ "$lab" = 1 ] && command -v systemctl >/dev/null && systemctl is-enabled unbound >/dev/null 2>&1; then
  systemctl disable --now unbound >/dev/null 2>&1 || true
fi

if [ "$lab" = 1 ]; then
  # BCC compiles against /lib/modules/$(uname -r)/{build,source}. When the running kernel has no
  # headers package (true on the CI machines), link the newest Debian headers: tracepoint
  # programs only read what the tracepoints hand them, so the layout mismatch does not matter.
  kdir="/lib/modules/$(uname -r)"
  if [ ! -e "$kdir/build/include" ]; then
    build="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$build" ]; then
      echo "setup: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2
      exit 1
    fi
    common="${build%-amd64}-common"
    mkdir -p "$kdir"
    ln -sfn "$build" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
    echo "setup: linked $kdir/build -> $build (no headers for $(uname -r))"
  fi
  if ! mountpoint -q /sys/kernel/tracing; then
    mount -t tracefs tracefs /sys/kernel/tracing
    echo "setup: mounted tracefs at /sys/kernel/tracing"
  fi
  if [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
  fi
fi

cd "$here"
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
extras=()
[ "$lab" = 1 ] && extras+=(dev)
[ "$jupyter" = 1 ] && extras+=(jupyter)
if [ "${#extras[@]}" -gt 0 ]; then
  .venv/bin/python -m pip install -q -e ".[$(IFS=,; echo "${extras[*]}")]"
else
  .venv/bin/python -m pip install -q -e .
fi
if [ "$jupyter" = 1 ]; then
  # inside the venv (not a user's home): the venv's jupyter lists it, and so does any Jupyter
  # started with this venv's data path
  .venv/bin/python -m ipykernel install --sys-prefix --name dnstrail \
    --display-name "Python (dnstrail .venv)" >/dev/null
  echo "setup: kernel dnstrail in $here/.venv/share/jupyter/kernels; open the notebook with" \
       ".venv/bin/jupyter lab notebooks/incident.ipynb"
fi
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p .venv/bcc-only
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-only/bcc
  echo "$here/.venv/bcc-only" > "$site/dnstrail-debian-bcc.pth"
fi
.venv/bin/dnstrail --version

# Shared by scripts/serve and scripts/test: install what is missing, idempotently.
# Sourced, not run.

# Runs a command as root (directly, or through sudo when there is one).
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: '$*' needs root and there is no sudo" >&2; return 1; fi
}

APT_UPDATED=
# Installs Debian packages.
apt_install() {
    echo "==> installing Debian packages: $*"
    [ -n "$APT_UPDATED" ] || { as_root apt-get update -qq; APT_UPDATED=1; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Installs the packages whose commands are missing: apt_need COMMAND:PACKAGE ...
apt_need() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

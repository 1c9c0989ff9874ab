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

# ONNX Runtime for the node (load-dynamic): PyPI's onnxruntime wheel in the project's .venv,
# where the binary looks for it. The version is the one tests/requirements.txt pins.
ensure_onnxruntime() {
    local version
    version=$(sed -n 's/^onnxruntime==//p' tests/requirements.txt)
    if ! ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$version" >/dev/null 2>&1; then
        python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv
        echo "==> installing ONNX Runtime $version (PyPI's onnxruntime) into .venv"
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/pip install -q --disable-pip-version-check "onnxruntime==$version"
    fi
}

# Sourced by tests/run.sh and host/benches/run.sh: makes sure target/py is a
# Python virtual environment (installing Debian's python3-venv when missing
# and running as root), for pip and the pinned fetch scripts.
python_env() {
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
    fi
    [ -x target/py/bin/python ] || python3 -m venv target/py
}

# Shared by tests/run, tests/demo and tests/bench (sourced, not run): install what the
# scripts need from nothing. python3-venv comes from Debian if missing; everything else
# goes with pip into virtual environments under .venv/ (or $PRS_VENV_DIR).
VENVS=${PRS_VENV_DIR:-$PWD/.venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_python_venv() {
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo "installing python3 and python3-venv from Debian" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    fi
}

need_debian_tool() {   # need_debian_tool COMMAND [PACKAGE]: install it from Debian if missing
    if ! command -v "$1" >/dev/null; then
        echo "installing ${2:-$1} from Debian" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${2:-$1}" >/dev/null
    fi
}

pip_quiet() {   # pip, without the per-package notes of this machine's local mirrors
    "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

venv_for() {    # venv_for NAME REQUIREMENT... -> path of a ready virtual environment
    # with tests/requirements.txt too, unless PRS_BARE_VENV=1 (e.g. ProxLB's own venv)
    local name=$1 dir="$VENVS/$1" stamp reqs=(-r tests/requirements.txt)
    shift
    [ -n "${PRS_BARE_VENV:-}" ] && reqs=()
    stamp="$([ -n "${PRS_BARE_VENV:-}" ] || cat tests/requirements.txt; echo "$@")"
    if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.prs-stamp" 2>/dev/null)" != "$stamp" ]; then
        need_python_venv
        echo "preparing $dir ($*)" >&2
        rm -rf "$dir"
        python3 -m venv "$dir"
        pip_quiet "$dir/bin/python" -m pip install -q --disable-pip-version-check "${reqs[@]}" "$@" >&2
        printf '%s' "$stamp" > "$dir/.prs-stamp"
    fi
    echo "$dir"
}

need_node_modules() {   # jsdom + extjs-gpl for tests/webui (node --test) in $PRS_NODE_DIR
    local dir=${PRS_NODE_DIR:-$VENVS/node}
    need_debian_tool node nodejs
    need_debian_tool npm
    if [ ! -d "$dir/node_modules/jsdom" ] || ! cmp -s tests/webui/package-lock.json "$dir/package-lock.json"; then
        echo "preparing $dir (npm ci: jsdom, extjs-gpl)" >&2
        mkdir -p "$dir"
        cp tests/webui/package.json tests/webui/package-lock.json "$dir/"
        npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
    fi
    export PRS_NODE_DIR=$dir
}

# need_realui: for tests/lib.sh (sourced; uses its as_root and need_debian_tool). Installs what
# tests/test_realui.py needs besides the Proxmox source mirrors: Debian chromium, Template Toolkit
# (renders pve-manager's index.html.tpl), libjs-marked (bundled into proxmoxlib.js), Font Awesome,
# make/git (tests/realui/build.sh), and npm's extjs-gpl 6.2.0 into $PRS_REALUI_CACHE/npm.
need_realui() {
    local cache=${PRS_REALUI_CACHE:-$PWD/.venv/realui} missing='' p
    for p in chromium libtemplate-perl libjs-marked fonts-font-awesome make git; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "installing$missing from Debian" >&2
        as_root apt-get update -qq
        # shellcheck disable=SC2086
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    if [ ! -f "$cache/npm/node_modules/extjs-gpl/build/ext-all.js" ]; then
        need_debian_tool npm
        echo "installing extjs-gpl 6.2.0 from npm into $cache/npm" >&2
        mkdir -p "$cache/npm"
        npm install --prefix "$cache/npm" --no-save --no-audit --no-fund --loglevel=error extjs-gpl@6.2.0 >&2
    fi
    export PRS_REALUI_CACHE=$cache
}

#!/bin/sh
# tests/realui/build.sh RELEASE: prepare the real Proxmox VE web UI of RELEASE (7.4, 8.4, 9.0 or 9.2) from the
# Proxmox source mirrors, laid out like an installed PVE (usr/share/...), and print that root.
#
# Sources are bare git mirrors (no work tree): git archive <rev> | tar -x. The bundles are built with
# the upstream Makefiles, as the Debian packages do, minus tools a test host lacks:
#   pve-manager www/manager6/Makefile  pvemanagerlib.js = cat OnlineHelpInfo.js $(JSSRC)
#       (BIOME=true skips the linter; OnlineHelpInfo.js, made by pve-docs' asciidoc-pve, is a stub)
#   proxmox-widget-toolkit src/Makefile  proxmoxlib.js = "// v<version>" + $(JSSRC) + marked.js
#       (Debian libjs-marked; proxmoxlib.min.js and the proxmox-dark theme, uglifyjs/sassc, are skipped)
# ExtJS: npm extjs-gpl 6.2.0 (Proxmox ships its own 7.0.0 GPL build, on neither npm nor Debian), laid
# out like libjs-extjs' /usr/share/javascript/extjs; Font Awesome from Debian fonts-font-awesome.
# Needs: git, make, tar, /usr/share/javascript/marked/marked.js, /usr/share/fonts-font-awesome and
# extjs-gpl in $CACHE/npm/node_modules (tests/lib.sh need_realui installs all of them).
# (A)GPL code: fetched and built at test time into the cache, never shipped.
#
# Environment: PRS_REALUI_CACHE (default <repo>/.venv/realui), PRS_MIRROR_DIR (default /work/.mirror).
set -eu

RELEASE=${1:?usage: build.sh 7.4|8.4|9.0|9.2}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${PRS_REALUI_CACHE:-$(dirname "$(dirname "$HERE")")/.venv/realui}
MIRRORS=${PRS_MIRROR_DIR:-/work/.mirror}
PVE_GIT=$MIRRORS/proxmox+pve-manager/repo
PWT_GIT=$MIRRORS/proxmox+proxmox-widget-toolkit/repo
MARKEDJS=/usr/share/javascript/marked/marked.js
FONTAWESOME=/usr/share/fonts-font-awesome

# The release commits ("bump version to ..."), each with the toolkit release installed beside it.
case $RELEASE in
    7.4) PVE_REV=5d6e3351 PWT_REV=ad53b6d ;;    # pve-manager 7.4-20 (stable-7), toolkit 3.7.3 (stable-bullseye)
    8.4) PVE_REV=2606ac85 PWT_REV=33e1079 ;;    # pve-manager 8.4.21 (stable-8), toolkit 4.3.17 (stable-bookworm)
    9.0) PVE_REV=5cacb35d PWT_REV=89f178f ;;    # pve-manager 9.0.18 (master), toolkit 5.1.1 (master; its debian/control minimum)
    9.2) PVE_REV=14a22df3 PWT_REV=4490430 ;;    # pve-manager 9.2.11 (master), toolkit 5.2.7 (master)
    *) echo "build.sh: unknown release $RELEASE (7.4, 8.4, 9.0 or 9.2)" >&2; exit 2 ;;
esac

EXTJS=
for d in "$CACHE/npm/node_modules/extjs-gpl/build" "${PRS_NODE_DIR:-/nonexistent}/node_modules/extjs-gpl/build"; do
    [ -f "$d/ext-all.js" ] && { EXTJS=$d; break; }
done
for need in "$PVE_GIT/HEAD" "$PWT_GIT/HEAD" "$MARKEDJS" "$FONTAWESOME/css/font-awesome.css" "$EXTJS/ext-all.js"; do
    [ -e "$need" ] || { echo "build.sh: missing $need" >&2; exit 3; }
done

OUT=$CACHE/$RELEASE
STAMP="pve-manager $PVE_REV toolkit $PWT_REV extjs $EXTJS layout 2"
if [ -f "$OUT/root/.stamp" ] && [ "$(cat "$OUT/root/.stamp")" = "$STAMP" ]; then
    echo "$OUT/root"
    exit 0
fi

echo "build.sh: preparing the PVE $RELEASE web UI in $OUT" >&2
rm -rf "$OUT"
mkdir -p "$OUT/src/pve-manager" "$OUT/src/widget-toolkit"
SRC=$OUT/src
ROOT=$OUT/root
git --git-dir="$PVE_GIT" archive "$PVE_REV" | tar -x -C "$SRC/pve-manager"
git --git-dir="$PWT_GIT" archive "$PWT_REV" | tar -x -C "$SRC/widget-toolkit"
PVE_VERSION=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$SRC/pve-manager/debian/changelog")
PWT_VERSION=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$SRC/widget-toolkit/debian/changelog")

# pve-manager: www/Makefile installs the template and u2f-api.js; its subdirectories the rest.
echo 'const proxmoxOnlineHelpInfo = {};' > "$SRC/pve-manager/www/manager6/OnlineHelpInfo.js"
# Releases before the switch to biome lint with eslint first (the .lint-incremental target of both
# Makefiles): a stamp newer than every source makes that step a no-op, as BIOME=true does later.
touch "$SRC/pve-manager/www/manager6/.lint-incremental" "$SRC/widget-toolkit/src/.lint-incremental"
make -s -C "$SRC/pve-manager/www/manager6" install DESTDIR="$ROOT" BIOME=true WIDGETKIT= >&2
make -s -C "$SRC/pve-manager/www/css" install DESTDIR="$ROOT" >&2
make -s -C "$SRC/pve-manager/www/images" install DESTDIR="$ROOT" >&2
install -m 0644 "$SRC/pve-manager/www/index.html.tpl" "$ROOT/usr/share/pve-manager/"
install -m 0644 "$SRC/pve-manager/www/u2f-api.js" "$ROOT/usr/share/pve-manager/js/"
echo "$PVE_VERSION" > "$ROOT/usr/share/pve-manager/version"     # PVE::pvecfg::version()

# proxmox-widget-toolkit: src/Makefile (proxmoxlib.js) and its css/images subdirectories.
PWT=$ROOT/usr/share/javascript/proxmox-widget-toolkit
make -s -C "$SRC/widget-toolkit/src" proxmoxlib.js BIOME=true MARKEDJS="$MARKEDJS" DEB_VERSION="$PWT_VERSION" \
    SOURCE_DATE_EPOCH=0 >&2
install -d "$PWT" "$PWT/themes"
install -m 0644 "$SRC/widget-toolkit/src/proxmoxlib.js" "$PWT/"
make -s -C "$SRC/widget-toolkit/src/css" install DESTDIR="$ROOT" >&2
make -s -C "$SRC/widget-toolkit/src/images" install DESTDIR="$ROOT" >&2
# Stub: the dark theme needs sassc; index.html.tpl loads it for prefers-color-scheme: dark only.
echo '/* stub: proxmox-dark is not built for the tests */' > "$PWT/themes/theme-proxmox-dark.css"

# ExtJS laid out like libjs-extjs (/usr/share/javascript/extjs), as the template's URLs expect.
EXT=$ROOT/usr/share/javascript/extjs
install -d "$EXT"
for f in ext-all.js ext-all-debug.js; do ln -s "$EXTJS/$f" "$EXT/$f"; done
for f in charts.js charts-debug.js; do ln -s "$EXTJS/packages/charts/classic/$f" "$EXT/$f"; done
ln -s "$EXTJS/classic/theme-crisp" "$EXT/theme-crisp"
ln -s "$EXTJS/packages/charts/classic/crisp" "$EXT/crisp"
ln -s "$EXTJS/classic/locale" "$EXT/locale"
ln -s "$FONTAWESOME" "$ROOT/usr/share/fonts-font-awesome"
# Stub for /qrcode.min.js (Debian libjs-qrcodejs; only the TFA setup uses it).
install -d "$ROOT/usr/share/javascript/qrcodejs"
echo 'var QRCode = function () {};' > "$ROOT/usr/share/javascript/qrcodejs/qrcode.min.js"

echo "$STAMP" > "$ROOT/.stamp"
echo "$ROOT"

#!/usr/bin/env bash
# Create benchmarks/.venv-topaz: a separate virtual environment holding Topaz 0.3.20
# (PyPI `topaz-em`) on the CPU build of torch 2.13.0, so Topaz's own pins never touch
# the project's environment. Idempotent: re-running checks, completes and re-verifies.
#
#   bash benchmarks/setup_topaz.sh            # create / repair the venv, then verify
#   PYTHON=python3.11 bash benchmarks/setup_topaz.sh
#   TOPAZ_VENV=/some/where bash benchmarks/setup_topaz.sh   # another location
#
# What it does
#   1. python -m venv benchmarks/.venv-topaz (if missing or broken)
#   2. pip install torch==2.13.0 ALONE first (pip's find-links on this machine hold the
#      CPU wheel; with no torch installed, anything unpinned would pull a multi-GB CUDA build)
#   3. pip install torch==2.13.0 torchvision==0.28.0 topaz-em==0.3.20 mrcfile (pinned)
#   4. patch torchvision: PyPI's torchvision 0.28.0 is a CUDA build whose compiled ops
#      (_C.so) cannot load beside the CPU torch, and `import torchvision` then dies on
#      "operator torchvision::nms does not exist" (unconditional fake registrations of
#      nms/qnms in _meta_registrations.py). Topaz only uses the image transforms, so
#      _C.so is renamed away and those two registrations are made conditional on the
#      operator existing. Done by a Python snippet keyed on the decorator text, with a
#      marker so that re-running is a no-op.
#   5. verify: `topaz --version` and loading the pretrained resnet16_u64 detector.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TOPAZ_VENV:-$HERE/.venv-topaz}"
PYTHON="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
TV_PIN="torchvision==0.28.0"
TOPAZ_PIN="topaz-em==0.3.20"

die() { echo "setup_topaz.sh: ERROR: $*" >&2; exit 1; }
say() { echo "setup_topaz.sh: $*"; }

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=/path/to/python3.11)"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
  3.8|3.9|3.10|3.11|3.12|3.13) ;;
  *) die "topaz-em 0.3.20 needs Python 3.8-3.13, '$PYTHON' is $PYVER" ;;
esac
[ "$PYVER" = "3.11" ] || say "WARNING: the local CPU torch wheel is for Python 3.11; '$PYTHON' is $PYVER (pip may try to download a CUDA build)"

# 1. venv ----------------------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "using existing venv $VENV"
else
  [ -e "$VENV" ] && { say "removing broken venv $VENV"; rm -rf "$VENV"; }
  say "creating venv $VENV (with $PYTHON, Python $PYVER)"
  "$PYTHON" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
fi
VPY="$VENV/bin/python"
# keep the venv out of git without touching the repository's .gitignore
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
PIP=("$VPY" -m pip --disable-pip-version-check)

# 2./3. packages ----------------------------------------------------------------------
have_pins() {
  "$VPY" - <<'EOF' >/dev/null 2>&1
from importlib.metadata import version
assert version("torch").split("+")[0] == "2.13.0"
assert version("torchvision").split("+")[0] == "0.28.0"
assert version("topaz-em") == "0.3.20"
version("mrcfile")
EOF
}
if have_pins; then
  say "pinned packages already installed"
else
  say "installing $TORCH_PIN (CPU wheel) first"
  "${PIP[@]}" install "$TORCH_PIN" \
    || die "pip install $TORCH_PIN failed (this needs the local CPU wheel in pip's find-links, e.g. /opt/wheels)"
  say "installing $TORCH_PIN $TV_PIN $TOPAZ_PIN mrcfile"
  "${PIP[@]}" install "$TORCH_PIN" "$TV_PIN" "$TOPAZ_PIN" mrcfile \
    || die "pip install of torchvision/topaz-em/mrcfile failed"
  have_pins || die "after pip install the pinned versions are still not all present"
fi
TORCH_V="$("$VPY" -c 'from importlib.metadata import version; print(version("torch"))')"
case "$TORCH_V" in
  *+cpu) ;;
  *) say "WARNING: torch in the venv is '$TORCH_V', not the +cpu build (a CUDA build works on the CPU but is multi-GB)" ;;
esac

# 4. torchvision patch ----------------------------------------------------------------
say "patching torchvision for the CPU torch (idempotent)"
"$VPY" - <<'EOF' || die "patching torchvision failed (see above)"
import importlib.util, os, re, sys

spec = importlib.util.find_spec("torchvision")  # locate without importing it
if spec is None or not spec.origin:
    sys.exit("torchvision is not installed in the venv")
tvdir = os.path.dirname(spec.origin)

# (a) disable the compiled ops extension (CUDA-linked, cannot load with the CPU torch)
for name in os.listdir(tvdir):
    if name.startswith("_C.") and name.endswith((".so", ".pyd")):
        src = os.path.join(tvdir, name)
        os.replace(src, src + ".disabled")
        print(f"  disabled {src}")

# (b) make the unconditional fake (meta) registrations conditional on the op existing
path = os.path.join(tvdir, "_meta_registrations.py")
text = open(path, encoding="utf-8").read()
MARK = "# deeppicker-relion: conditional fake registrations"
if MARK in text:
    print(f"  {path}: already patched")
else:
    pat = re.compile(r'^@torch\.library\.register_fake\((["\'])(torchvision::\w+)\1\)[ \t]*$', re.M)
    found = pat.findall(text)
    if not found:
        sys.exit(f"{path}: no '@torch.library.register_fake(\"torchvision::...\")' decorator found; "
                 "this torchvision differs from 0.28.0, check it by hand")
    text = pat.sub(lambda m: f'@_register_fake_if_op_exists("{m.group(2)}")', text)
    helper = f'''

{MARK}: PyPI's torchvision is a CUDA build whose
# _C extension cannot load beside a CPU torch; without it the torchvision::nms/qnms ops
# do not exist and registering fakes for them raised at import.
def _register_fake_if_op_exists(qualname):
    def wrapper(fn):
        ns, op = qualname.split("::")
        try:
            getattr(getattr(torch.ops, ns), op)
        except (AttributeError, RuntimeError):
            return fn
        return torch.library.register_fake(qualname)(fn)

    return wrapper
'''
    anchor = re.search(r"^import torchvision\.extension.*$", text, re.M)
    if anchor is None:
        anchor = re.search(r"^import torch\.library.*$", text, re.M)
    if anchor is None:
        sys.exit(f"{path}: could not find where to insert the helper; check it by hand")
    text = text[: anchor.end()] + helper + text[anchor.end():]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    print(f"  {path}: made {len(found)} registrations conditional ({', '.join(q for _, q in found)})")
EOF

# 5. verify ---------------------------------------------------------------------------
say "checking: import torchvision"
"$VPY" -c 'import torch, torchvision; print("  torch", torch.__version__, "torchvision", torchvision.__version__)' \
  || die "'import torchvision' still fails in $VENV"
say "checking: topaz --version"
[ -x "$VENV/bin/topaz" ] || die "$VENV/bin/topaz missing (topaz-em install incomplete)"
TOPAZ_VERSION="$("$VENV/bin/topaz" --version 2>&1)" || die "'topaz --version' failed: $TOPAZ_VERSION"
echo "  topaz $TOPAZ_VERSION"
case "$TOPAZ_VERSION" in *0.3.20*) ;; *) die "expected topaz 0.3.20, got '$TOPAZ_VERSION'" ;; esac
say "checking: load pretrained resnet16_u64 detector"
"$VPY" - <<'EOF' || die "loading the pretrained resnet16_u64 model failed"
import torch
from topaz.model.factory import load_model
model = load_model("resnet16_u64")
model.eval()
n = sum(p.numel() for p in model.parameters())
with torch.no_grad():
    out = model(torch.zeros(1, 1, 128, 128))
print(f"  resnet16_u64 loaded: {type(model).__name__}, {n} parameters, width {getattr(model, 'width', '?')}, "
      f"output {tuple(out.shape)}")
EOF
say "OK: Topaz ready in $VENV (run: $VENV/bin/topaz)"

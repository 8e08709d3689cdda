#!/usr/bin/env bash
# Creates the virtual environment .venv with a PyTorch that works with nnU-Net here, then autoseg.
#
# Why this order: nnunetv2 pulls timm -> torchvision. pip would otherwise resolve torch on its own
# (a multi-GB download, or a torch/torchvision pair that does not import). nnU-Net finds trainers
# by importing all of its trainer modules, and one imports timm/torchvision: a torchvision that
# does not import breaks `nnUNetv2_train -tr ...` and prediction. So torch and torchvision are
# installed first, as a pair known to import together, and pinned while the rest installs.
#
#   AUTOSEG_TORCH="torch==X torchvision==Y"   choose another pair (e.g. a CUDA build for your GPU)
#   VENV=path                                  where to create the environment (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${1:-}

if [ ! -x "$VENV/bin/python" ]; then
  echo "autoseg setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

if ! "$VPY" -c "import torch, torchvision.ops" >/dev/null 2>&1; then
  case "$(uname -m)" in
    aarch64|arm64) default_torch="torch==2.9.1 torchvision==0.24.1" ;;  # CPU wheels on PyPI
    *) default_torch="torch==2.14.1 torchvision==0.29.1" ;;  # runs on CPU and CUDA GPUs alike
  esac
  torch_spec=${AUTOSEG_TORCH:-$default_torch}
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "autoseg setup: NVIDIA GPU found; installing $torch_spec"
  else
    echo "autoseg setup: no NVIDIA GPU found; installing $torch_spec (it runs on the CPU)"
  fi
  # shellcheck disable=SC2086
  "${PIP[@]}" $torch_spec
else
  echo "autoseg setup: keeping the installed $("$VPY" -c 'import torch; print("torch", torch.__version__)')"
fi

constraints="$VENV/autoseg-torch-constraints.txt"
"$VPY" - > "$constraints" <<'PYEOF'
# The installed distributions' versions (torch.__version__ may carry a local tag such as +cu130
# that the wheel's metadata does not, and pip compares metadata).
from importlib.metadata import version
print(f"torch=={version('torch')}")
print(f"torchvision=={version('torchvision')}")
PYEOF

target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
echo "autoseg setup: installing autoseg${EXTRAS:+ with [$EXTRAS]} and nnU-Net (torch pinned: $(tr '\n' ' ' < "$constraints"))"
"${PIP[@]}" -c "$constraints" -e "$target"

# The check that matters: nnU-Net's own trainer lookup finds a generated autoseg trainer.
nnUNet_extTrainer="$("$VPY" -c 'from autoseg.paths import extension_trainer_dir; print(extension_trainer_dir())')" \
  "$VPY" - <<'PYEOF'
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    cls = recursive_find_trainer_class_by_name("nnUNetTrainer_autoseg_combo")
print(f"autoseg setup: done; nnU-Net finds {cls.__name__}")
PYEOF
# The report test renders HTML in a real browser: Debian's chromium, where the system allows it.
if [ "$EXTRAS" = "test" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "autoseg setup: installing Debian's chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "autoseg setup: chromium could not be installed; the browser test will skip and say so"
  else
    echo "autoseg setup: no chromium and no root apt-get; the browser test will skip and say so"
  fi
fi
# The slurm executor's tests run a real single-node Slurm (scripts/slurm-local.sh): Debian's Slurm
# daemons, munge for authentication, and slurmdbd with MariaDB so that sacct answers as on a cluster.
slurm_packages="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
if [ "$EXTRAS" = "test" ]; then
  missing=""
  for c in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing="$missing $c"
  done
  if [ -z "$missing" ]; then
    echo "autoseg setup: Slurm, munge and MariaDB are installed (the Slurm tests start them with scripts/slurm-local.sh)"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "autoseg setup: installing Debian's $slurm_packages for the single-node Slurm of the slurm executor's tests"
    # The packages' install scripts would start system daemons (MariaDB on 3306, a slurmctld without a
    # configuration); the tests start their own, so a policy-rc.d forbids that while they install.
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1; fi
    # shellcheck disable=SC2086
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $slurm_packages >/dev/null) \
      || echo "autoseg setup: the Slurm packages could not be installed; the Slurm tests will skip and say so"
    [ -n "$own_policy" ] && rm -f "$policy"
  elif [ "$(id -u)" != 0 ]; then
    echo "autoseg setup: not root, so Slurm ($slurm_packages) is not installed; the Slurm tests will skip and say so"
  else
    echo "autoseg setup: no apt-get, so Slurm ($slurm_packages) is not installed; the Slurm tests will skip and say so"
  fi
fi
touch "$VENV/.autoseg-installed${EXTRAS:+-$EXTRAS}"

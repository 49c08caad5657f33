# Sourced by scripts that need the real lerobot in a throw-away virtualenv (make_lerobot_fixtures.sh,
# check_lerobot_reads.sh). Needs TORCH_WHEEL, VENV_ROOT and PYTHON set by the caller.
#
# lerobot pins older torch and draccus than this project, so each version gets its own virtualenv with lerobot
# installed --no-deps, plus only what its dataset code imports and a CPU torch wheel.
COMMON_DEPS=(huggingface-hub==0.35.3 av==15.1.0 jsonlines==4.0.0 packaging pillow numpy pyarrow pandas)

# lerobot's dataset modules import torchvision at module level, but writing a dataset never calls it (videos are
# encoded with PyAV). Every torchvision wheel on PyPI links CUDA torch libraries that the CPU wheel lacks, so the
# throw-away venv gets a placeholder package whose attributes are classes that refuse to be instantiated.
install_torchvision_placeholder() {
  local site
  site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$site/torchvision/transforms/v2"
  local body='def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"torchvision.{name} is not installed in this fixture-writing environment")

    return Unavailable
'
  for module in torchvision torchvision/transforms torchvision/transforms/v2; do
    printf '%s' "$body" > "$site/$module/__init__.py"
  done
}

make_venv() {  # make_venv NAME LEROBOT_VERSION EXTRA_DEPS...
  local venv="$VENV_ROOT/$1" version="$2"
  shift 2
  if [ ! -f "$venv/.lerobot-installed" ]; then
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q "$TORCH_WHEEL"
    "$venv/bin/pip" install -q "${COMMON_DEPS[@]}" "$@"
    "$venv/bin/pip" install -q --no-deps "lerobot==$version"
    install_torchvision_placeholder "$venv"
    touch "$venv/.lerobot-installed"
  fi
  echo "$venv"
}


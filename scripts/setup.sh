#!/usr/bin/env bash
# Installs libtorch (from the PyPI torch wheel) and the test-time Python packages into a
# per-user cache keyed by version, then links it into this checkout as `.libtorch` and
# `.pydeps`. Idempotent: prints nothing and returns at once when already done.
#
# The torch version is written here and nowhere else: tch 0.24 binds libtorch 2.11.0.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${HONDO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hondo}/torch-${TORCH_VERSION}"
python="${PYTHON:-python3}"

if [ ! -f "$cache/.complete" ]; then
    echo "setup: installing torch==${TORCH_VERSION} and torchvision==${TORCHVISION_VERSION} into $cache (~5 GB, a few minutes)" >&2
    tmp="$cache.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$tmp" "torch==${TORCH_VERSION}" safetensors numpy pillow >&2
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --no-deps --target "$tmp" "torchvision==${TORCHVISION_VERSION}" >&2
    echo "$TORCH_VERSION" > "$tmp/.complete"
    rm -rf "$cache"
    mv "$tmp" "$cache"
fi

# The readers the tests check hondo's files with: TensorBoard's EventAccumulator, and onnx's
# checker with onnxruntime. Pinned, without their dependencies (torch's numpy, sympy and
# typing_extensions serve them), into the same cache under a marker of their own so that
# an existing cache gains them.
EXTRAS="tensorboard==2.21.0 protobuf==7.36.2 absl-py==2.5.1 packaging==26.4 six==1.17.0
markdown==3.11.3 werkzeug==3.1.9 onnx==1.23.2 onnxruntime==1.32.0 ml_dtypes==0.7.0
flatbuffers==25.12.19"
extras_marker="$cache/.extras-$(echo "$EXTRAS" | cksum | cut -d' ' -f1)"
if [ ! -f "$extras_marker" ]; then
    echo "setup: installing test readers (tensorboard, onnx, onnxruntime) into $cache" >&2
    # shellcheck disable=SC2086 # one word per package
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --no-deps --target "$cache" $EXTRAS >&2
    touch "$extras_marker"
fi

# gloo's headers, for compiling against c10d's ProcessGroupGloo (csrc/dist.cpp): the wheel
# links gloo into libtorch_cpu but ships no headers. Debian's libgloo-dev has the same
# gloo's headers; only its include/ is kept, and nothing of it is linked.
GLOO_DEB="libgloo-dev=0.0~git20220518.5b14351-3"
if [ ! -f "$cache/gloo/.complete" ]; then
    echo "setup: fetching gloo headers ($GLOO_DEB, Debian) into $cache/gloo" >&2
    work="$(mktemp -d)"
    ( cd "$work" && { apt-get download "$GLOO_DEB" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get download "$GLOO_DEB" >/dev/null; }; } )
    dpkg-deb -x "$work"/libgloo-dev_*.deb "$work/x"
    rm -rf "$cache/gloo"
    mkdir -p "$cache/gloo"
    cp -r "$work/x/usr/include" "$cache/gloo/include"
    rm -rf "$work"
    touch "$cache/gloo/.complete"
fi

# Links the build and the tests use (both ignored by git).
ln -sfn "$cache/torch" "$root/.libtorch"
ln -sfn "$cache" "$root/.pydeps"

#!/usr/bin/env bash
# Wheels that executing the chapters on the lent GPU machine needs and its image lacks (nbformat, nbclient,
# ipykernel and what they need, and setuptools, which the installed-wheel test builds the wheel with; the image
# has torch, triton, matplotlib, tiktoken, pytest, filelock). Run here (pip reaches the package registry), from
# the repository root; the wheels land in .whl/ (ignored by git, ~18 MB), built for the device's Python 3.12 on
# x86-64. Then every `run` that executes notebooks names `.whl` in `carry` and starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# (as ../.library/device/README.md describes; /tmp/site comes before the image's packages). The installed-wheel
# test starts each chapter's kernel with PYTHONPATH set to the wheel's folder only, so for it install into the
# image's own site-packages instead (drop `--target /tmp/site`; the machine is a fresh one each time).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir .whl
python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl nbformat nbclient ipykernel setuptools
# already in the device image (KINDS.md's package list): one version of each, theirs
for present in attrs packaging psutil pygments python_dateutil typing_extensions; do
    rm -f .whl/"$present"-*.whl
done
ls .whl | sed 's/-[0-9].*//' | tr '\n' ' '; echo; du -sh .whl

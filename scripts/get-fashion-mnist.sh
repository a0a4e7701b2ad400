#!/usr/bin/env bash
# Makes Fashion-MNIST available to kcl, the way kcl.data looks for it:
# $KCL_DATA/fashion-mnist, then /usr/share/datasets/fashion-mnist (Debian
# package dataset-fashion-mnist), then the Keras cache. If none has it and
# apt is usable (root or passwordless sudo), installs the Debian package;
# otherwise says that kcl will download it through keras.datasets.
set -u
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
dirs="${KCL_DATA:+$KCL_DATA/fashion-mnist }/usr/share/datasets/fashion-mnist $HOME/.keras/datasets/fashion-mnist"

have() {
  for f in $files; do [ -f "$1/$f" ] || return 1; done
}
for d in $dirs; do
  if have "$d"; then echo "data: Fashion-MNIST found in $d"; exit 0; fi
done

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" != none ]; then
    echo "data: installing the Debian package dataset-fashion-mnist"
    if $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
      have /usr/share/datasets/fashion-mnist && { echo "data: Fashion-MNIST installed in /usr/share/datasets/fashion-mnist"; exit 0; }
    fi
    echo "data: apt-get could not install dataset-fashion-mnist"
  fi
fi
echo "data: Fashion-MNIST not found locally; kcl will download it through keras.datasets (needs internet)."
exit 0

#!/bin/bash
# A class-balanced CIFAR-10 subset for the benchmark grid (docs/benchmarks/learning.md): the
# first N train and N test JPEGs of each
# class of ../shared/data/cifar10-jpg.tar.gz, hard-linked (no copy) into OUT/train and OUT/test.
#   bash bench/cifar_subset.sh /work/shared/data/cifar10-jpg.tar.gz data 200   -> data/cifar10-2k (2,000 + 2,000)
set -eu
archive=$1; root=$2; per_class=${3:-200}
mkdir -p "$root/cifar10"
[ -d "$root/cifar10/train" ] || tar xzf "$archive" -C "$root/cifar10"
out="$root/cifar10-$((per_class * 10 / 1000))k"
for split in train test; do
  for class in $(ls "$root/cifar10/$split"); do
    mkdir -p "$out/$split/$class"
    ls "$root/cifar10/$split/$class" | head -"$per_class" | while read -r f; do
      ln -f "$root/cifar10/$split/$class/$f" "$out/$split/$class/$f"
    done
  done
done
echo "$out"

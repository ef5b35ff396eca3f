#!/bin/bash
# The per-method learning check (docs/benchmarks/history.md: learning per method at 78 steps): every
# method on the same 5,000 CIFAR-10 images, 1 epoch, batch 64,
# ResNet-18 with the standard stem at 32 px (16x cheaper than the small stem, so a CPU budget holds
# 78 steps per method), each method's library defaults; kNN top-1 vs the same network at random init.
#   bash bench/learning_check.sh /tmp/cifar [method ...]   (CIFAR unpacked from ../shared/data/cifar10-jpg.tar.gz)
set -u
cifar=$1; shift
methods=${*:-simclr moco byol simsiam swav barlowtwins vicreg vicregl dino drlim simclr2}
mkdir -p runs/learning
for m in $methods; do
  skip=--skip-random; [ "$m" = simclr ] && skip=
  python bench/knn_vs_random.py --cifar "$cifar" --method "$m" --train-images 5000 --epochs 1 --batch-size 64 \
      --out "runs/learning/$m" --set small_stem=false $skip > "runs/learning/$m.log" 2>&1
  echo "$m rc=$?"; grep -E "^\| (random|$m)|^pretraining" "runs/learning/$m.log"
done

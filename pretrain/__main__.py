"""`python -m pretrain ARGS` is `sslforge ARGS`; torchrun starts its processes this way
(`torchrun --nproc-per-node=N -m pretrain pretrain ...`)."""
import sys

from pretrain.cli import main

sys.exit(main())

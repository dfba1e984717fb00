#!/usr/bin/env bash
# The main job: installs dependencies, builds zerotrain, and trains the default model on 2 ranks (ZeRO-2) on the
# built-in corpus, saving a checkpoint every 100 steps; the loss falls from ~5.5 to about 4. Extra arguments go to `zerotrain train`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash launch/install-deps.sh
if [ ! -x build/zerotrain ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build build -j"$(nproc)" --target zerotrain
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np "${ZT_RANKS:-2}" --oversubscribe --bind-to none build/zerotrain train --preset tiny --zero_stage 2 \
  --max_steps 300 --global_batch_size 32 --micro_batch_size 8 --learning_rate 3e-3 --warmup_steps 20 \
  --log_interval 25 --eval_interval 100 --save_interval 100 --output_dir output/demo \
  --allow_fresh_start "$@"  # run again, it trains again from scratch over the last run's checkpoints

# The scripts' shared helper, sourced by the run_*.sh scripts, gpu_check.sh and the Makefile (DATA_OVERRIDES):
# where CIFAR-10 comes from, which interpreter runs, and the hand-over to the runner.

# The runner overrides that read CIFAR-10 from a local copy, one argument per line: `--set dataset.source=npz
# --set dataset.path=DIR` when $CIFAR10_DIR (default ../shared/data/cifar10, from the repository root) holds
# train.npz, nothing otherwise (the runner files' own source, the Hugging Face hub).
data_overrides() {
  local cifar10_dir="${CIFAR10_DIR:-../shared/data/cifar10}"
  if [[ -f "$cifar10_dir/train.npz" ]]; then
    printf '%s\n' --set dataset.source=npz --set "dataset.path=$cifar10_dir"
  fi
}

# Run the experiment runner from the repository root with the data overrides first, so that `--set KEY=VALUE`
# among the script's arguments (passed last) wins. The interpreter is $PY when set (one that already has the
# package's dependencies), else the repository's .venv, set up or brought up to date by `make install`.
run_runner() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  local python="${PY:-}"
  if [[ -z "$python" ]]; then
    make --quiet install
    python=.venv/bin/python
  fi
  local data
  mapfile -t data < <(data_overrides)
  exec "$python" -m fedmpq_flwr.main "${data[@]}" "$@"
}

# Sourced by the experiment scripts: set up the virtual environment, then hand over to the runner,
# reading CIFAR-10 from a local copy (train.npz/test.npz) when there is one, as `make full` does.
# Arguments after the script's own go to the runner last, so `--set KEY=VALUE` there wins.
run_runner() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  make --quiet install
  local cifar10_dir="${CIFAR10_DIR:-../shared/data/cifar10}"
  local data=()
  if [[ -f "$cifar10_dir/train.npz" ]]; then
    data=(--set dataset.source=npz --set "dataset.path=$cifar10_dir")
  fi
  exec .venv/bin/python -m fedmpq_flwr.main "${data[@]}" "$@"
}

"""Flower's Deployment Engine: the helpers of fedmpq_flwr.deploy, experiments/deploy_local.sh end to end
(a real SuperLink and SuperNodes with TLS and SuperNode authentication), and SuperNodes that must not join.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flower_checks import check_results_contract, processes_with_env, stop_processes_with_env

from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.runner.deploy import (
    free_ports,
    online_nodes,
    resolve_run,
    stop,
    wait_superlink,
    write_certificates,
    write_federation,
    write_node_key,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT = REPO / "experiments" / "deploy_local.sh"
MARKER = "FEDMPQ_DEPLOY_TEST"  # inherited by every process a test starts, to find leftovers


# ---- helpers, no Flower process ----------------------------------------------------------------------


def tls_handshake(certs: dict[str, Path], cafile: Path, server_name: str = "127.0.0.1") -> None:
    """One TLS handshake with a server that presents certs["server.crt"], verified against `cafile`."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cafile))
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"x")
    finally:
        listener.close()
        thread.join(timeout=5)


def test_the_server_certificate_is_trusted_through_its_ca_only(tmp_path: Path) -> None:
    certs = write_certificates(tmp_path / "tls", ["127.0.0.1", "superlink.example.org"])
    other = write_certificates(tmp_path / "other", ["127.0.0.1"])
    tls_handshake(certs, certs["ca.crt"])
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(certs, other["ca.crt"])  # a client that trusts another CA
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(certs, certs["ca.crt"], server_name="10.0.0.9")  # a name the certificate does not carry
    assert all((certs[name].stat().st_mode & 0o777) == 0o600 for name in ("ca.key", "server.key"))


def test_node_keys_are_what_flower_reads(tmp_path: Path) -> None:
    private, public = write_node_key(tmp_path / "keys" / "node-0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert (private.stat().st_mode & 0o777) == 0o600


def test_the_federation_config_is_what_the_flwr_cli_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    home = tmp_path / "home"
    write_federation(home, "lab", "10.0.0.5:9093", tmp_path / "ca.crt", insecure=False)
    write_federation(home, "loop", "127.0.0.1:8000", None, insecure=True)
    monkeypatch.setenv("FLWR_HOME", str(home))
    lab = read_superlink_connection("lab")
    assert lab.address == "10.0.0.5:9093" and lab.root_certificates == str(tmp_path / "ca.crt")
    assert not lab.insecure
    assert read_superlink_connection(None).name == "loop" and read_superlink_connection("loop").insecure
    with pytest.raises(ValueError):
        write_federation(home, "x", "127.0.0.1:1", tmp_path / "ca.crt", insecure=True)


def test_resolve_run_takes_the_node_count_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bare = resolve_run(None, None, {"train": {"num_rounds": 2}}, num_clients=4, results_dir=None)
    assert bare["model"]["name"] == "tiny_cnn" and bare["dataset"]["name"] == "synthetic"  # `flwr run .` defaults
    assert bare["federation"]["num_clients"] == 4 and bare["train"]["num_rounds"] == 2
    assert bare["results_dir"] == str(tmp_path / "results")

    single = tmp_path / "config.yaml"
    single.write_text(yaml.safe_dump({"run_id": "one", "dataset": {"source": "npz", "path": "data"}}))
    config = resolve_run(single, None, {}, num_clients=2, results_dir=Path("out"))
    assert config["run_id"] == "one" and config["dataset"]["path"] == str(tmp_path / "data")
    assert config["results_dir"] == str(tmp_path / "out") and config == validate(config)

    runner = tmp_path / "runs.yaml"
    runner.write_text(
        yaml.safe_dump(
            {
                "defaults": {"model": {"name": "tiny_cnn"}, "dataset": {"name": "synthetic"}},
                "runs": [
                    {"run_id": "a", "description": "first", "seeds": [0, 1]},
                    {
                        "run_id": "b",
                        "description": "second",
                        "quant": {"budgets": [2, 3, 4]},
                        "federation": {"num_clients": 3},
                    },
                ],
            }
        )
    )
    assert resolve_run(runner, "a_seed1", {}, num_clients=2, results_dir=None)["seed"] == 1
    assert resolve_run(runner, "b", {}, num_clients=3, results_dir=None)["quant"]["budgets"] == [2, 3, 4]
    with pytest.raises(ConfigError, match="pick one run with --run"):
        resolve_run(runner, "a", {}, num_clients=3, results_dir=None)  # a variation of two seeds
    with pytest.raises(ConfigError, match="quant.budgets.*num_clients = 2"):
        resolve_run(runner, "b", {}, num_clients=2, results_dir=None)  # budgets for 3 nodes, 2 started


def test_the_script_refuses_bad_options_before_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    bad = subprocess.run([str(SCRIPT), "--nodes", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--nodes" in bad.stderr
    wrong_key = subprocess.run(
        [str(SCRIPT), "--set", "train.lrr=1", "--keep", str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong_key.returncode == 2 and "unknown key 'train.lrr'" in wrong_key.stderr
    assert not (tmp_path / "work" / "tls").exists()  # nothing was started


# ---- real SuperLink and SuperNodes -------------------------------------------------------------------


@pytest.mark.slow
def test_deploy_local_script_runs_the_experiment_with_tls_and_authentication(tmp_path: Path) -> None:
    """2 SuperNodes (each its own process loading its own data), TLS and SuperNode authentication on:
    the results contract of a simulation run holds, and nothing the script started is left."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHON": sys.executable, MARKER: marker, "OMP_NUM_THREADS": "1"}
    results_dir = tmp_path / "results"
    cmd = [
        str(SCRIPT),
        "--nodes",
        "2",
        "--results-dir",
        str(results_dir),
        "--keep",
        str(tmp_path / "work"),
        *("--set", "run_id=deploy_e2e", "--set", "train.num_rounds=2", "--set", "federation.device=cpu"),
        *("--set", "dataset.synthetic_train_size=600", "--set", "dataset.synthetic_test_size=200"),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finally:
        leftovers = processes_with_env(MARKER, marker)
        stop_processes_with_env(MARKER, marker)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TLS on, SuperNode authentication on" in proc.stderr
    run_dir = results_dir / "deploy_e2e"
    results = check_results_contract(run_dir, "deploy_e2e", rounds=2, clients_per_round=2)
    assert results["metadata"]["num_clients"] == 2 and results["final_accuracy"] > 0.15
    for name in ("config.yaml", "metrics.jsonl", "results.json", "final_model.pt", "features.npz"):
        assert (run_dir / name).is_file(), name
    assert '"round": 2' in (run_dir / "stdout.log").read_text()
    for i in range(2):  # each node joined with its registered key
        assert "registered successfully" in (run_dir / f"supernode-{i}.log").read_text()
    assert leftovers == []


@pytest.mark.slow
def test_supernodes_without_the_ca_or_a_registered_key_never_join(tmp_path: Path) -> None:
    """A SuperLink with TLS and SuperNode authentication: a SuperNode trusting another CA and one whose key
    was never registered stay out; one with both joins (so the refusals are not a broken setup)."""
    marker = uuid.uuid4().hex
    certs = write_certificates(tmp_path / "tls", ["127.0.0.1"])
    other_ca = write_certificates(tmp_path / "other", ["127.0.0.1"])["ca.crt"]
    link_port, *node_ports = free_ports(4)
    link = f"127.0.0.1:{link_port}"
    env = {
        **os.environ,
        MARKER: marker,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(tmp_path / "cli"),
    }
    write_federation(tmp_path / "cli", "fed", link, certs["ca.crt"], insecure=False)
    keys = {name: write_node_key(tmp_path / "keys" / name) for name in ("wrong_ca", "unregistered", "good")}
    started: list[subprocess.Popen] = []

    def start(cmd: list[str], log: Path, home: str) -> subprocess.Popen:
        with open(log, "w") as handle:
            proc = subprocess.Popen(cmd, env={**env, "FLWR_HOME": str(tmp_path / home)}, stdout=handle, stderr=handle)
        started.append(proc)
        return proc

    def supernode(name: str, root_ca: Path, port: int) -> subprocess.Popen:
        cmd = [str(BIN / "flower-supernode"), "--root-certificates", str(root_ca), "--superlink", link]
        cmd += ["--auth-supernode-private-key", str(keys[name][0]), "--port", str(port)]
        cmd += ["--node-config", "partition-id=0 num-partitions=1"]
        return start(cmd, tmp_path / f"{name}.log", name)

    try:
        superlink = start(
            [
                str(BIN / "flower-superlink"),
                *("--ssl-ca-certfile", str(certs["ca.crt"]), "--ssl-certfile", str(certs["server.crt"])),
                *("--ssl-keyfile", str(certs["server.key"]), "--enable-supernode-auth"),
                *("--host", "127.0.0.1", "--port", str(link_port), "--disable-runtime-dependency-installation"),
            ],
            tmp_path / "superlink.log",
            "superlink",
        )
        wait_superlink(link, certs["ca.crt"], timeout_s=60, pid=superlink.pid)
        for name in ("wrong_ca", "good"):  # registered; "unregistered" is not
            register = [str(BIN / "flwr"), "supernode", "register", str(keys[name][1]), "fed"]
            subprocess.run(register, env=env, check=True, capture_output=True, timeout=60)
        wrong_ca = supernode("wrong_ca", other_ca, node_ports[0])
        unregistered = supernode("unregistered", certs["ca.crt"], node_ports[1])
        refusals = {"wrong_ca": "CERTIFICATE_VERIFY_FAILED", "unregistered": "Failed to activate SuperNode"}

        def refused() -> bool:
            return all(text in (tmp_path / f"{name}.log").read_text() for name, text in refusals.items())

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not refused():
            time.sleep(0.5)
        assert refused(), {name: (tmp_path / f"{name}.log").read_text()[-1500:] for name in refusals}
        assert online_nodes("fed", tmp_path / "cli") == []  # neither joined (1.42 makes both give up: exit code 305)
        assert wrong_ca.poll() != 0 and unregistered.poll() != 0

        good = supernode("good", certs["ca.crt"], node_ports[2])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not online_nodes("fed", tmp_path / "cli"):
            assert good.poll() is None, (tmp_path / "good.log").read_text()[-2000:]
            time.sleep(1.0)
        assert len(online_nodes("fed", tmp_path / "cli")) == 1
    finally:
        stop([proc.pid for proc in started[1:]])  # the SuperNodes first: they tell the SuperLink they leave
        stop([proc.pid for proc in started[:1]])
        for proc in started:
            proc.wait(timeout=30)
    assert processes_with_env(MARKER, marker) == []

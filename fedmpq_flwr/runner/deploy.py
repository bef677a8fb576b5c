"""Helpers for running the app on Flower's Deployment Engine (a real SuperLink and SuperNodes).

`experiments/deploy_local.sh` uses them on one machine; docs/deployment.md shows them across machines.

    python -m fedmpq_flwr.deploy run-config [--config FILE [--run RUN_ID]] [--set KEY=VALUE ...]
        --num-clients N [--results-dir DIR] [--overwrite] --out RUN_CONFIG.toml
    python -m fedmpq_flwr.deploy certs --out DIR [--san 127.0.0.1 --san superlink.example.org ...]
    python -m fedmpq_flwr.deploy node-key --out DIR/node-0
    python -m fedmpq_flwr.deploy federation --flwr-home DIR --name NAME --address HOST:PORT
        (--root-certificates CA | --insecure)
    python -m fedmpq_flwr.deploy wait-superlink --address HOST:PORT (--root-certificates CA | --insecure)
    python -m fedmpq_flwr.deploy wait-nodes --federation NAME --count N [--pid PID ...]
    python -m fedmpq_flwr.deploy free-ports COUNT
    python -m fedmpq_flwr.deploy check-results RUN_DIR
    python -m fedmpq_flwr.deploy stop PID ...

`run-config` resolves and validates a run (a runner file or a single run's YAML, plus --set) for N
SuperNodes and writes it as the flat TOML file for `flwr run --run-config` (config/flower.py); it prints
the run's results folder, `<results_dir>/<run_id>`, which the ServerApp creates on the SuperLink's machine.
No torch is imported here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmpq_flwr.config import ConfigError, deep_merge, load_yaml, validate
from fedmpq_flwr.config.flower import app_defaults, write_run_config_toml
from fedmpq_flwr.rundir.provenance import git_commit
from fedmpq_flwr.rundir.results import is_complete
from fedmpq_flwr.runner.processes import terminate_then_kill

CERT_DAYS = 30


# ---- the run config -----------------------------------------------------------------------------------


def resolve_run(
    config_path: Path | None,
    run_id: str | None,
    overrides: dict[str, Any],
    num_clients: int,
    results_dir: Path | None,
) -> dict[str, Any]:
    """The validated config of one run for `num_clients` SuperNodes, with absolute paths.

    `config_path` is a runner file (a `runs` list; pick one with `run_id` when it has several) or a
    single run's config (such as a run's config.yaml), over the schema's defaults; None means the
    defaults of a bare `flwr run .` (pyproject.toml: a small synthetic federation).
    Relative `results_dir` and `dataset.path` are taken from the current directory.
    """
    from fedmpq_flwr.config.runner_file import expand_runs  # the runner's own resolution of a runner file

    nodes = {"federation": {"num_clients": num_clients}}
    fixed = deep_merge(overrides, nodes)
    document = load_yaml(str(config_path)) if config_path else app_defaults()
    if isinstance(document, dict) and "runs" in document:
        runs = expand_runs(Path(config_path), (results_dir or Path("results")).expanduser().resolve(), overrides)
        names = [run["run_id"] for run in runs]
        chosen = [run for run in runs if run_id in (run["run_id"], run["variation"])] if run_id else runs
        if len(chosen) != 1:
            raise ConfigError(f"{config_path}: pick one run with --run; its runs are: {', '.join(names)}")
        try:
            config = validate(deep_merge(chosen[0], nodes))  # the SuperNodes started decide the client count
        except ConfigError as err:
            where = f"{config_path}: run '{chosen[0]['run_id']}' on {num_clients} SuperNodes"
            raise ConfigError(f"{where}: {err}") from None
    else:
        if not isinstance(document, dict):
            raise ConfigError(f"{config_path}: expected a mapping of config keys, got {type(document).__name__}")
        if run_id:
            raise ConfigError(f"--run {run_id}: {config_path} is a single run's config, not a runner file")
        config = deep_merge(document or {}, fixed)
        if results_dir is not None:
            config["results_dir"] = str(results_dir)
        config = validate(config)
    config["results_dir"] = str(Path(config["results_dir"]).expanduser().resolve())
    if config["dataset"]["path"]:
        config["dataset"]["path"] = str(Path(config["dataset"]["path"]).expanduser().resolve())
    return config


def run_dir_of(config: dict[str, Any]) -> Path:
    return Path(config["results_dir"]) / config["run_id"]


# ---- TLS certificates and SuperNode keys -------------------------------------------------------------


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_certificates(out: Path, sans: Sequence[str], days: int = CERT_DAYS) -> dict[str, Path]:
    """A throwaway CA (ca.crt, ca.key) and a server certificate it signed (server.crt, server.key) for the
    host names and IP addresses in `sans`, the names SuperNodes and `flwr` use to reach the SuperLink."""
    if not sans:
        raise ValueError("a server certificate needs at least one host name or IP address (--san)")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmpq-flwr throwaway CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(name) for name in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    no_password = serialization.NoEncryption()
    paths = {name: out / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(pem))
    paths["server.crt"].write_bytes(server_cert.public_bytes(pem))
    _write_private(paths["ca.key"], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password))
    _write_private(paths["server.key"], server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, no_password))
    return paths


def write_node_key(path: Path) -> tuple[Path, Path]:
    """A SuperNode's key pair for SuperNode authentication: `path` (private, OpenSSH format, as
    `flower-supernode --auth-supernode-private-key` reads it) and `path`.pub (registered with
    `flwr supernode register`). Flower 1.42 takes NIST-curve EC keys; this one is P-384."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write_private(path, private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path = path.with_name(path.name + ".pub")
    public_path.write_bytes(public + f" {path.name}\n".encode())
    return path, public_path


# ---- the `flwr` CLI's SuperLink connection -----------------------------------------------------------


def write_federation(flwr_home: Path, name: str, address: str, root_certificates: Path | None, insecure: bool) -> Path:
    """Add (or replace) the SuperLink connection `name` in `flwr_home`/config.toml and make it the default."""
    if insecure == (root_certificates is not None):
        raise ValueError("give either root certificates or insecure, not both or neither")
    path = flwr_home / "config.toml"
    document = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlink = document.setdefault("superlink", {})
    connection: dict[str, Any] = {"address": address}
    if insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(root_certificates).expanduser().resolve())
    superlink[name] = connection
    superlink["default"] = name
    flwr_home.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(document))
    return path


# ---- waiting for Flower ------------------------------------------------------------------------------


def wait_superlink(address: str, root_certificates: Path | None, timeout_s: float, pid: int | None = None) -> None:
    """Wait until the SuperLink at `address` answers /health (over TLS when `root_certificates` is given);
    fail at once when its process `pid` exits."""
    if root_certificates is not None:
        scheme, verify = "https", ssl.create_default_context(cafile=str(root_certificates))
    else:
        scheme, verify = "http", True
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            raise RuntimeError(f"the SuperLink (process {pid}) exited before it answered (see its log)")
        try:
            if httpx.get(f"{scheme}://{address}/health", timeout=1.0, verify=verify).is_success:
                return
        except httpx.HTTPError as err:
            last = str(err)
        time.sleep(0.3)
    raise RuntimeError(f"the SuperLink at {address} did not answer within {timeout_s:.0f} s ({last})")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def online_nodes(federation: str, flwr_home: Path | None = None) -> list[dict[str, Any]]:
    """The SuperNodes that `flwr supernode list` reports online for the SuperLink connection `federation`
    of `flwr_home` (default: FLWR_HOME of the environment)."""
    flwr = Path(sys.executable).with_name("flwr")
    env = {**os.environ, **({"FLWR_HOME": str(flwr_home)} if flwr_home else {}), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.run(
        [str(flwr), "supernode", "list", federation, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    start = proc.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"`flwr supernode list` gave no JSON: {(proc.stdout + proc.stderr).strip()[-500:]}")
    answer = json.loads(proc.stdout[start:])
    if not answer.get("success"):
        raise RuntimeError(f"`flwr supernode list` failed: {answer}")
    return [node for node in answer.get("nodes", []) if node.get("status") == "online"]


def wait_nodes(federation: str, count: int, pids: Sequence[int], timeout_s: float) -> None:
    """Wait until `count` SuperNodes are online; fail at once when one of the SuperNode processes `pids` exits."""
    deadline = time.monotonic() + timeout_s
    online = 0
    while time.monotonic() < deadline:
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            raise RuntimeError(f"SuperNode process {dead[0]} exited before the federation was complete (see its log)")
        online = len(online_nodes(federation))
        if online >= count:
            return
        time.sleep(1.0)
    raise RuntimeError(f"{online} of {count} SuperNodes came online within {timeout_s:.0f} s")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that are free right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop(pids: Sequence[int], grace_s: float = 10.0, parent: int | None = None) -> None:
    """Terminate the processes `pids` and all their descendants (collected before any is signalled:
    Flower starts SuperExec in its own session), then kill what is left after `grace_s`.

    With `parent`, a pid is stopped only while it is still a child of `parent`: a pid that exited and
    was reused by an unrelated process is left alone.
    """
    tree: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            if parent is not None and root.ppid() != parent:
                continue
            for proc in (root, *root.children(recursive=True)):
                tree[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    terminate_then_kill(list(tree.values()), grace_s)


# ---- command line ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedmpq_flwr.deploy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run_config = commands.add_parser("run-config", help="write the run config TOML for `flwr run`")
    run_config.add_argument("--config", type=Path, help="a runner file or a single run's config (YAML)")
    run_config.add_argument("--run", help="the run_id (or variation) to pick from a runner file")
    run_config.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    run_config.add_argument("--num-clients", type=int, required=True, help="the number of SuperNodes")
    run_config.add_argument("--results-dir", type=Path, help="where the ServerApp writes <run_id>/")
    run_config.add_argument("--overwrite", action="store_true", help="replace a finished run of the same run_id")
    run_config.add_argument("--out", type=Path, required=True)

    certs = commands.add_parser("certs", help="a throwaway CA and a SuperLink server certificate")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--san", action="append", default=[], help="a SuperLink host name or IP (repeatable)")
    certs.add_argument("--days", type=int, default=CERT_DAYS)

    node_key = commands.add_parser("node-key", help="a SuperNode authentication key pair (PATH and PATH.pub)")
    node_key.add_argument("--out", type=Path, required=True)

    federation = commands.add_parser("federation", help="the `flwr` CLI's SuperLink connection")
    federation.add_argument("--flwr-home", type=Path, required=True)
    federation.add_argument("--name", required=True)
    federation.add_argument("--address", required=True, help="HOST:PORT of the SuperLink")
    tls = federation.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", type=Path)
    tls.add_argument("--insecure", action="store_true")

    superlink = commands.add_parser("wait-superlink", help="wait until a SuperLink answers")
    superlink.add_argument("--address", required=True)
    tls = superlink.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", type=Path)
    tls.add_argument("--insecure", action="store_true")
    superlink.add_argument("--timeout", type=float, default=60.0)
    superlink.add_argument("--pid", type=int, help="the SuperLink process to watch")

    nodes = commands.add_parser("wait-nodes", help="wait until COUNT SuperNodes are online")
    nodes.add_argument("--federation", required=True)
    nodes.add_argument("--count", type=int, required=True)
    nodes.add_argument("--pid", type=int, action="append", default=[], help="a SuperNode process to watch")
    nodes.add_argument("--timeout", type=float, default=120.0)

    ports = commands.add_parser("free-ports", help="print free TCP ports on 127.0.0.1")
    ports.add_argument("count", type=int)

    results = commands.add_parser("check-results", help="exit 0 when RUN_DIR holds a complete results.json")
    results.add_argument("run_dir", type=Path)

    commands.add_parser("commit", help="print the git commit of this checkout, for the ServerApp's results.json")

    stop_cmd = commands.add_parser("stop", help="stop processes and their descendants")
    stop_cmd.add_argument("pids", type=int, nargs="*")
    stop_cmd.add_argument("--parent", type=int, help="stop only pids that are still children of this process")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run-config":
            from fedmpq_flwr.config.runner_file import parse_overrides

            if args.num_clients < 1:
                raise ConfigError(f"--num-clients {args.num_clients}: need at least one SuperNode")
            config = resolve_run(
                args.config, args.run, parse_overrides(args.overrides), args.num_clients, args.results_dir
            )
            run_dir = run_dir_of(config)
            if is_complete(run_dir) and not args.overwrite:
                raise ConfigError(f"{run_dir} holds a finished run; pass --overwrite to replace it")
            if run_dir.exists() and args.overwrite:
                shutil.rmtree(run_dir)
            write_run_config_toml(config, args.out)
            print(run_dir)
        elif args.command == "certs":
            paths = write_certificates(args.out, args.san or ["127.0.0.1"], args.days)
            print("\n".join(str(path) for path in paths.values()))
        elif args.command == "node-key":
            print("\n".join(str(path) for path in write_node_key(args.out)))
        elif args.command == "federation":
            print(write_federation(args.flwr_home, args.name, args.address, args.root_certificates, args.insecure))
        elif args.command == "wait-superlink":
            wait_superlink(args.address, args.root_certificates, args.timeout, args.pid)
        elif args.command == "wait-nodes":
            wait_nodes(args.federation, args.count, args.pid, args.timeout)
        elif args.command == "free-ports":
            print(" ".join(str(port) for port in free_ports(args.count)))
        elif args.command == "check-results":
            if not is_complete(args.run_dir):
                print(f"no complete results.json in {args.run_dir}", file=sys.stderr)
                return 1
        elif args.command == "stop":
            stop(args.pids, parent=args.parent)
        elif args.command == "commit":
            print(git_commit())
    except (ConfigError, RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

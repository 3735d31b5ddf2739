#!/usr/bin/env python3
"""Cluster mode on a multi-primary engine: batchreg on a private 3-node MariaDB Galera
cluster, one replica per node.

Everything runs on 127.0.0.1 and is started here, and ended by its pid at the end, also
on failure: three mariadbd nodes (their own data dirs under a temp dir, their own SQL,
group-communication, IST and SST ports; rsync state transfer), three batchreg replicas
and the loadgen. Phases, one line of figures each:

  cluster  the first node bootstraps the cluster, the other two join it by SST.
  start    the three replicas are started at the same moment on a fresh database: all
           must start, and each migration must be applied (recorded) by exactly one of
           them and recorded once on every node.
  storm    three storms of the same fleet at once, each through all three replicas in
           another order (so each instance is written through three nodes at once, and
           certification conflicts happen): every answer 200000, and every node holds
           the same rows (checksums of ordered SELECTs of instance, instance_metadata,
           health_check).
  kill     one storm per replica, of one fleet; one node is SIGKILLed mid-storm and
           restarted (it rejoins by IST): the replicas on the other nodes keep
           answering 200000 while it is down; the one on the killed node answers every
           request 200000 when the store comes back within store.outage_wait, else
           500001 (counted), and answers 200000 again once its node is back.
  verify   zero acknowledged registrations missing from every node, identical rows.

Usage: python3 tests/faults/galera.py [--json FILE] [--count N] [--keep-dir]
Runs as root (mariadbd --user=root). Exits 1 when an assertion fails, 2 when the
cluster or the replicas cannot be set up. Builds the release binaries when missing.
"""

import argparse
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BATCHREG = TARGET / "release" / "batchreg"
LOADGEN = TARGET / "release" / "batchreg-loadgen"
GALERA = "/usr/lib/galera/libgalera_smm.so"
DATABASE = "batchreg"
NODES = 3
# The tables whose rows must be identical on every node, each in a stable order.
CHECKED_TABLES = {
    "instance": "id",
    "instance_metadata": "id, mkey",
    "health_check": "id",
}


class SetupError(Exception):
    """The cluster or the replicas could not be set up: no figure to judge."""


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_ports(count):
    """Ports free on 127.0.0.1 now, all distinct."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(what, timeout, probe, interval=0.2):
    """Calls probe until it returns a true value; that value, or SetupError."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SetupError(f"{what}: not within {timeout} s")
        time.sleep(interval)


class Processes:
    """Every process this run starts, ended by its pid at the end."""

    def __init__(self):
        self.started = []

    def spawn(self, args, log_path, err_path=None, **kwargs):
        """Starts `args` with its output in `log_path` (stderr in `err_path` if given)."""
        out = open(log_path, "ab")
        err = open(err_path, "ab") if err_path else None
        # A session of its own: mariadbd's state-transfer scripts stay in its group.
        proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=out,
            stderr=err or subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        out.close()
        if err:
            err.close()
        self.started.append(proc)
        return proc

    def end_all(self):
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            # What a node started itself (rsync daemons of a state transfer) is in the
            # group this run made for it, whose id is the node's pid.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Node:
    """One mariadbd of the cluster."""

    def __init__(self, index, base, ports, cluster_ports, processes):
        self.index = index
        self.dir = base / f"node{index}"
        self.datadir = self.dir / "data"
        self.sql_port, self.gcomm_port, self.ist_port, self.sst_port = ports
        self.processes = processes
        self.proc = None
        self.cnf = self.dir / "my.cnf"
        self.dir.mkdir(parents=True)
        self.datadir.mkdir()
        address = ",".join(f"127.0.0.1:{p}" for p in cluster_ports)
        self.cnf.write_text(
            f"""[mysqld]
datadir={self.datadir}
socket={self.dir}/mysqld.sock
pid-file={self.dir}/mysqld.pid
log-error={self.dir}/error.log
port={self.sql_port}
bind-address=127.0.0.1
user=root
innodb_buffer_pool_size=128M
max_connections=200
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider={GALERA}
wsrep_cluster_name=batchreg_faults
wsrep_cluster_address=gcomm://{address}
wsrep_node_name=node{index}
wsrep_node_address=127.0.0.1:{self.gcomm_port}
wsrep_node_incoming_address=127.0.0.1:{self.sql_port}
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm_port};ist.recv_addr=127.0.0.1:{self.ist_port};gcache.size=128M"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:{self.sst_port}
"""
        )

    def install(self):
        """The bootstrap node's data dir, with root allowed in over TCP without a password."""
        done = subprocess.run(
            [
                "mariadb-install-db",
                f"--defaults-file={self.cnf}",
                "--auth-root-authentication-method=normal",
                "--user=root",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise SetupError(f"mariadb-install-db node{self.index}: {done.stderr.decode()[-500:]}")

    def open_to_rsync(self):
        """The rsync daemon of a state transfer runs as nobody: it must own the data dir."""
        nobody = pwd.getpwnam("nobody")
        for path in [self.datadir, *self.datadir.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)

    def start(self, *extra):
        self.proc = self.processes.spawn(
            ["mariadbd", f"--defaults-file={self.cnf}", *extra], self.dir / "mariadbd.out"
        )

    def recovered_position(self):
        """The node's last committed position (uuid:seqno), read from InnoDB after a crash."""
        recovery_log = self.dir / "recover.log"
        recovery_log.unlink(missing_ok=True)
        subprocess.run(
            ["mariadbd", f"--defaults-file={self.cnf}", "--wsrep-recover", f"--log-error={recovery_log}"],
            capture_output=True,
            timeout=120,
        )
        found = re.findall(r"Recovered position: (\S+)", recovery_log.read_text(errors="replace"))
        return found[-1] if found else None

    def query(self, sql, timeout=60):
        """The rows of `sql` (tab-separated lines), or None when the node does not answer."""
        try:
            done = subprocess.run(
                ["mariadb", "-h127.0.0.1", f"-P{self.sql_port}", "-uroot", "-N", "-B", "-e", sql],
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        return done.stdout.decode()

    def state(self):
        out = self.query("SHOW STATUS LIKE 'wsrep_local_state_comment'", timeout=5)
        return out.split("\t")[1].strip() if out else None

    def status(self, name):
        out = self.query(f"SHOW STATUS LIKE '{name}'", timeout=10)
        return int(out.split("\t")[1]) if out else None

    def wait_synced(self, timeout):
        return wait_for(f"node{self.index} synced", timeout, lambda: self.state() == "Synced")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def checksums(self):
        """SHA-256 of each checked table's ordered rows, read once the node has applied
        everything committed before the read (wsrep_sync_wait)."""
        sums = {}
        for table, order in CHECKED_TABLES.items():
            out = self.query(
                f"SET SESSION wsrep_sync_wait = 1; SELECT * FROM {DATABASE}.{table} ORDER BY {order}"
            )
            if out is None:
                return None
            sums[table] = hashlib.sha256(out.encode()).hexdigest()[:16]
        return sums


class Replica:
    """One batchreg server, its store on one node."""

    def __init__(self, index, base, node, ports, processes, outage_wait):
        self.index = index
        self.node = node
        self.grpc_port, self.http_port = ports
        self.processes = processes
        self.dir = base / f"replica{index}"
        self.dir.mkdir()
        self.log = self.dir / "batchreg.log"
        self.config = self.dir / "batchreg.toml"
        self.config.write_text(
            f"""[server]
grpc_listen = "127.0.0.1:{self.grpc_port}"
http_listen = "127.0.0.1:{self.http_port}"
register_self = false

[store]
url = "mysql://root@127.0.0.1:{node.sql_port}/{DATABASE}"
outage_wait = "{outage_wait}s"

[naming]
existed_as_success = true
"""
        )
        self.proc = None

    @property
    def target(self):
        return f"127.0.0.1:{self.grpc_port}"

    def start(self):
        self.proc = self.processes.spawn(
            [BATCHREG, "serve", "--config", self.config],
            self.log,
            env={**os.environ, "RUST_LOG": "info"},
        )

    def ready(self):
        if self.proc.poll() is not None:
            raise SetupError(f"replica{self.index} exited with {self.proc.returncode}: {tail(self.log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self):
        """batchreg_requests_total of register by code, and store retries by reason."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        answers, retries = {}, {}
        for line in text.splitlines():
            if line.startswith("batchreg_requests_total{") and 'api="register"' in line:
                code = re.search(r'code="([^"]+)"', line).group(1)
                answers[code] = answers.get(code, 0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("batchreg_store_retries_total{") and 'engine="mysql"' in line:
                reason = re.search(r'reason="([^"]+)"', line).group(1)
                retries[reason] = retries.get(reason, 0) + float(line.rsplit(" ", 1)[1])
        return {"answers": answers, "retries": retries}

    def migrations_logged(self):
        """Names of the migrations this replica applied and recorded itself."""
        text = self.log.read_text(errors="replace")
        return [m.strip('"') for m in re.findall(r"applied MySQL migration migration=(\S+)", text)]

    def migrations_found_applied(self):
        """How many migrations this replica ran while another one recorded them first."""
        return self.log.read_text(errors="replace").count("applied by another replica meanwhile")


def tail(path, lines=5):
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class Checks:
    """Assertions that fail the run at its end but let the other figures be measured."""

    def __init__(self):
        self.failed = []

    def that(self, condition, message):
        if not condition:
            self.failed.append(message)
            print(f"FAIL {message}", flush=True)
        return condition


def loadgen_supports(flag):
    done = subprocess.run([LOADGEN, "storm", "--help"], capture_output=True, timeout=30)
    return flag in done.stdout.decode()


def storm(processes, base, name, targets, count, seed, acked_out):
    """Starts a loadgen storm of `count` instances of fleet `seed` over `targets`."""
    args = [
        LOADGEN, "storm",
        "--target", ",".join(targets),
        "--count", count,
        "--seed", seed,
        "--ttl", 0,
        "--timeout", "90s",
        "--connections", 2 * len(targets),
        # 3 storms of 128: however the requests pile up on one replica, its queue stays
        # below what admission by waiting time judges (max_batch x workers queued), so
        # every answer is the store's, not a 429001 of a replica slowed by conflicts.
        "--in-flight", 128,
        "--json", "--no-progress",
    ]
    if acked_out:
        args += ["--acked-out", base / f"{name}.acked"]
    return processes.spawn(args, base / f"{name}.json", base / f"{name}.err")


def storm_report(proc, base, name, timeout):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        return json.loads((base / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        log(f"{name}: no report: {tail(base / f'{name}.err')}")
        return {}


def acked_ids(base, names):
    ids = set()
    for name in names:
        path = base / f"{name}.acked"
        if path.exists():
            ids.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    return ids


def only_success(report):
    codes = report.get("codes", {})
    return bool(codes) and set(codes) == {"200000"} and codes["200000"] == report.get("count")


def other_codes(report):
    return {code: n for code, n in report.get("codes", {}).items() if code != "200000"}


def cluster_counter(nodes, name):
    values = [node.status(name) for node in nodes]
    return sum(v for v in values if v is not None)


def compare_nodes(nodes, checks, phase):
    """Checksums per node, once every node answers them; whether all are identical."""
    sums = [node.checksums() for node in nodes]
    identical = all(s is not None for s in sums) and all(s == sums[0] for s in sums)
    checks.that(identical, f"{phase}: rows differ between nodes: {sums}")
    return identical


def live_instances(node):
    out = node.query(f"SELECT COUNT(*) FROM {DATABASE}.instance WHERE flag = 0")
    return int(out) if out else None


def build_if_missing():
    if BATCHREG.exists() and LOADGEN.exists():
        return
    log(f"building {BATCHREG} and {LOADGEN}")
    subprocess.run(
        ["cargo", "build", "--release", "-p", "batchreg", "-p", "batchreg-loadgen"],
        cwd=ROOT,
        check=True,
    )


def phase_cluster(base, processes, figures):
    started = time.monotonic()
    ports = free_ports(4 * NODES)
    node_ports = [ports[4 * i: 4 * i + 4] for i in range(NODES)]
    cluster_ports = [p[1] for p in node_ports]
    nodes = [Node(i, base, node_ports[i], cluster_ports, processes) for i in range(NODES)]
    nodes[0].install()
    nodes[0].start("--wsrep-new-cluster")
    nodes[0].wait_synced(60)
    for node in nodes[1:]:
        node.open_to_rsync()
        node.start()
    for node in nodes[1:]:
        node.wait_synced(120)
    size = nodes[0].status("wsrep_cluster_size")
    if size != NODES:
        raise SetupError(f"cluster size {size}")
    took = time.monotonic() - started
    figures["cluster"] = {"nodes": NODES, "ready_s": round(took, 1)}
    print(f"phase=cluster nodes={NODES} size={size} ready_s={took:.1f} sst=rsync", flush=True)
    return nodes


def phase_start(base, processes, nodes, checks, figures, outage_wait):
    if nodes[0].query(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4") is None:
        raise SetupError("cannot create the database")
    ports = free_ports(2 * NODES)
    replicas = [
        Replica(i, base, nodes[i], ports[2 * i: 2 * i + 2], processes, outage_wait)
        for i in range(NODES)
    ]
    # The same moment: three spawns in a row, before any of them has connected.
    started = time.monotonic()
    for replica in replicas:
        replica.start()
    ready_after = []
    for replica in replicas:
        try:
            wait_for(f"replica{replica.index} ready", 60, replica.ready)
            ready_after.append(round(time.monotonic() - started, 2))
        except SetupError as error:
            checks.that(False, f"start: {error}")
            ready_after.append(None)
    all_started = checks.that(None not in ready_after, "start: every replica starts")
    # Each migration applied and recorded by one replica, recorded once on every node.
    logged = [name for r in replicas for name in r.migrations_logged()]
    per_migration = {name: logged.count(name) for name in sorted(set(logged))}
    checks.that(
        len(per_migration) >= 1 and set(per_migration.values()) == {1},
        f"start: each migration applied by one replica: {per_migration}",
    )
    recorded = []
    for node in nodes:
        out = node.query(
            f"SET SESSION wsrep_sync_wait = 1; SELECT version, COUNT(*) FROM "
            f"{DATABASE}.batchreg_migrations GROUP BY version ORDER BY version"
        )
        rows = [tuple(int(x) for x in line.split("\t")) for line in (out or "").splitlines()]
        recorded.append(rows)
    checks.that(
        all(r == recorded[0] for r in recorded)
        and recorded[0]
        and all(n == 1 for _, n in recorded[0])
        and [v for v, _ in recorded[0]] == list(range(1, len(recorded[0]) + 1))
        and len(recorded[0]) == len(per_migration),
        f"start: each migration recorded once on every node: {recorded}",
    )
    # Replicas that raced another to a migration: they ran it too and went on.
    raced = sum(r.migrations_found_applied() for r in replicas)
    figures["start"] = {
        "replicas_started": sum(t is not None for t in ready_after),
        "ready_after_s": ready_after,
        "applied_by_one_replica": per_migration,
        "found_applied_by_another": raced,
        "recorded": recorded[0],
    }
    print(
        f"phase=start replicas_started={figures['start']['replicas_started']}/{NODES} "
        f"ready_after_s={ready_after} migrations_applied={per_migration} "
        f"found_applied_by_another={raced} "
        f"recorded_versions={[v for v, _ in recorded[0]]} recorded_once_on_every_node="
        f"{all(r == recorded[0] for r in recorded)}",
        flush=True,
    )
    if not all_started:
        raise SetupError("not every replica started")
    return replicas


def phase_storm(base, processes, nodes, replicas, checks, figures, count, acked_out):
    targets = [r.target for r in replicas]
    conflicts_before = cluster_counter(nodes, "wsrep_local_cert_failures") + cluster_counter(
        nodes, "wsrep_local_bf_aborts"
    )
    started = time.monotonic()
    names = [f"storm{k}" for k in range(NODES)]
    procs = [
        storm(processes, base, name, targets[k:] + targets[:k], count, 1, acked_out)
        for k, name in enumerate(names)
    ]
    reports = [storm_report(p, base, n, 150) for p, n in zip(procs, names)]
    took = time.monotonic() - started
    answered = sum(r.get("count", 0) for r in reports)
    ok = sum(r.get("codes", {}).get("200000", 0) for r in reports)
    others = [other_codes(r) for r in reports]
    checks.that(all(only_success(r) for r in reports), f"storm: answers other than 200000: {others}")
    conflicts = (
        cluster_counter(nodes, "wsrep_local_cert_failures")
        + cluster_counter(nodes, "wsrep_local_bf_aborts")
        - conflicts_before
    )
    retries = {}
    for replica in replicas:
        for reason, n in (replica.metrics() or {}).get("retries", {}).items():
            retries[reason] = retries.get(reason, 0) + int(n)
    identical = compare_nodes(nodes, checks, "storm")
    live = [live_instances(n) for n in nodes]
    checks.that(live == [count] * NODES, f"storm: live instances per node {live}, fleet {count}")
    figures["storm"] = {
        "storms": NODES,
        "requests": NODES * count,
        "answered": answered,
        "ok": ok,
        "other_codes": others,
        "elapsed_s": round(took, 1),
        "rate_per_s": round(answered / took) if took else 0,
        "galera_conflicts": conflicts,
        "store_retries": {k: v for k, v in retries.items() if v},
        "instances_per_node": live,
        "nodes_identical": identical,
    }
    print(
        f"phase=storm storms={NODES} requests={NODES * count} answered={answered} ok_200000={ok} "
        f"other={others} elapsed_s={took:.1f} rate_per_s={figures['storm']['rate_per_s']} "
        f"galera_conflicts={conflicts} store_retries={figures['storm']['store_retries']} "
        f"instances_per_node={live} nodes_identical={identical}",
        flush=True,
    )
    return names


def answered_total(replica):
    """Register requests the replica has answered so far, whatever the code."""
    figures = replica.metrics()
    return sum(figures["answers"].values()) if figures else 0


class Sampler(threading.Thread):
    """Each replica's register answers by code, every 200 ms, with the time read."""

    def __init__(self, replicas):
        super().__init__(daemon=True)
        self.replicas = replicas
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            self.samples.append((now, [r.metrics() for r in self.replicas]))
            self.stop.wait(0.2)

    def answered(self, replica, since, until, code="200000"):
        """Answers of `code` the replica gave between the two times (nearest samples)."""
        inside = [
            s[replica]["answers"].get(code, 0)
            for t, s in self.samples
            if since <= t <= until and s[replica] is not None
        ]
        return int(inside[-1] - inside[0]) if len(inside) >= 2 else 0

    def longest_stall(self, replica, since, until):
        """The longest time between two reads that saw new answers of the replica,
        between the two times: how long it answered nothing while it had work (the
        quiet after its last answer is not counted)."""
        longest, last_change, last_count = 0.0, since, None
        for t, s in self.samples:
            if not since <= t <= until or s[replica] is None:
                continue
            count = sum(s[replica]["answers"].values())
            if count != last_count:
                if last_count is not None:
                    longest = max(longest, t - last_change)
                last_change, last_count = t, count
        return round(longest, 1)


def phase_kill(base, processes, nodes, replicas, checks, figures, count, acked_out, down_s, ride_through):
    victim = 1
    sampler = Sampler(replicas)
    sampler.start()
    names = [f"kill{k}" for k in range(NODES)]
    procs = [
        storm(processes, base, name, [replicas[k].target], count, 2, acked_out)
        for k, name in enumerate(names)
    ]
    # Mid-storm: once the replica on the victim's node has answered a quarter of its storm.
    baseline = answered_total(replicas[victim])
    wait_for(
        "the storm under way",
        60,
        lambda: answered_total(replicas[victim]) - baseline >= count // 4,
        interval=0.05,
    )
    killed_at = time.monotonic()
    nodes[victim].kill()
    # A node back before the others have evicted its dead self takes many rounds of
    # membership to be let in again: restart it once they have, as an operator would.
    survivor_node = nodes[(victim + 1) % NODES]
    wait_for(f"node{victim} evicted", 60, lambda: survivor_node.status("wsrep_cluster_size") == NODES - 1)
    evicted_at = time.monotonic()
    time.sleep(down_s)
    position = nodes[victim].recovered_position()
    nodes[victim].open_to_rsync()
    error_log = nodes[victim].dir / "error.log"
    log_before = error_log.stat().st_size
    restarted_at = time.monotonic()
    if position:
        nodes[victim].start(f"--wsrep-start-position={position}")
    else:
        nodes[victim].start()
    nodes[victim].wait_synced(120)
    synced_at = time.monotonic()
    with open(error_log, "rb") as f:
        f.seek(log_before)
        rejoin_log = f.read().decode(errors="replace")
    # The rsync script says which transfer the joiner took.
    transfer = "IST" if "rsync IST completed on joiner" in rejoin_log else "SST"
    reports = [storm_report(p, base, n, 150) for p, n in zip(procs, names)]
    # The replica on the killed node serves again: a small storm through it alone.
    recovery = storm(processes, base, "recovered", [replicas[victim].target], 1000, 3, acked_out)
    recovery_report = storm_report(recovery, base, "recovered", 60)
    sampler.stop.set()
    sampler.join()
    outage = synced_at - killed_at
    during = [sampler.answered(k, killed_at, synced_at) for k in range(NODES)]
    # How long each replica went without answering, from just before the kill to after
    # the node's return: the victim's pause is its outage as its clients saw it.
    stalls = [sampler.longest_stall(k, killed_at - 0.5, synced_at + 10) for k in range(NODES)]
    others = [other_codes(r) for r in reports]
    survivors = [k for k in range(NODES) if k != victim]
    for k in survivors:
        checks.that(only_success(reports[k]), f"kill: replica{k} (node up) answered {others[k]}")
        checks.that(during[k] > 0, f"kill: replica{k} answered nothing while node{victim} was down")
    victim_codes = reports[victim].get("codes", {})
    if outage < ride_through:
        checks.that(
            only_success(reports[victim]),
            f"kill: replica{victim} answered {others[victim]} though its node was back "
            f"within outage_wait ({outage:.1f} s < {ride_through} s)",
        )
    else:
        checks.that(
            set(victim_codes) <= {"200000", "500001"}
            and sum(victim_codes.values()) == count,
            f"kill: replica{victim} answered {victim_codes}",
        )
    checks.that(only_success(recovery_report), f"kill: replica{victim} after its node's return: {other_codes(recovery_report)}")
    figures["kill"] = {
        "killed_node": victim,
        "down_s": down_s,
        "outage_s": round(outage, 1),
        "evicted_after_s": round(evicted_at - killed_at, 1),
        "restart_to_synced_s": round(synced_at - restarted_at, 1),
        "rejoined_by": transfer,
        "outage_wait_s": ride_through,
        "requests": NODES * count,
        "codes_per_replica": [r.get("codes", {}) for r in reports],
        "answered_200000_while_down": during,
        "longest_pause_s": stalls,
        "victim_after_return": recovery_report.get("codes", {}),
    }
    print(
        f"phase=kill killed=node{victim} outage_s={outage:.1f} "
        f"evicted_after_s={evicted_at - killed_at:.1f} restart_to_synced_s="
        f"{synced_at - restarted_at:.1f} rejoined_by={transfer} outage_wait_s={ride_through} "
        f"codes_per_replica={figures['kill']['codes_per_replica']} "
        f"answered_200000_while_down={during} longest_pause_s={stalls} "

        f"victim_after_return={recovery_report.get('codes', {})}",
        flush=True,
    )
    return names + ["recovered"]


def phase_verify(base, nodes, checks, figures, storm_names, expected_live, acked_out):
    identical = compare_nodes(nodes, checks, "verify")
    live = [live_instances(n) for n in nodes]
    if acked_out:
        acked = acked_ids(base, storm_names)
        missing = []
        for node in nodes:
            stored = set(
                (node.query(
                    f"SET SESSION wsrep_sync_wait = 1; SELECT id FROM {DATABASE}.instance WHERE flag = 0"
                ) or "").split()
            )
            missing.append(len(acked - stored))
        how = f"acked_ids={len(acked)}"
    else:
        # Without the loadgen's list of acknowledged ids: every fleet registered is
        # stored whole, so nothing acknowledged can be missing.
        missing = [max(0, expected_live - n) if n is not None else None for n in live]
        how = f"fleets_registered={expected_live}"
    checks.that(missing == [0] * NODES, f"verify: acknowledged registrations missing per node {missing}")
    figures["verify"] = {"missing_per_node": missing, "instances_per_node": live, "nodes_identical": identical}
    print(
        f"phase=verify {how} missing_per_node={missing} instances_per_node={live} nodes_identical={identical}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="save the figures to FILE")
    parser.add_argument("--count", type=int, default=20000, help="instances per fleet")
    parser.add_argument("--down", type=float, default=1.0, help="seconds the killed node stays down")
    parser.add_argument(
        "--outage-wait",
        type=float,
        default=30.0,
        help="the replicas' store.outage_wait in seconds: a node's kill, restart and "
        "rejoin takes longer than the default 10 s (the others evict it after "
        "evs.suspect_timeout, then it catches up by IST)",
    )
    parser.add_argument("--keep-dir", action="store_true", help="keep the data dirs and logs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("galera.py runs as root (mariadbd --user=root, state transfer as nobody)")
        return 2
    if not Path(GALERA).exists():
        log(f"{GALERA} is missing (apt-get install galera-4)")
        return 2
    build_if_missing()
    base = Path(tempfile.mkdtemp(prefix="batchreg-galera-"))
    processes = Processes()
    checks = Checks()
    figures = {"count": args.count}
    started = time.monotonic()
    status = 0
    try:
        acked_out = loadgen_supports("--acked-out")
        nodes = phase_cluster(base, processes, figures)
        replicas = phase_start(base, processes, nodes, checks, figures, args.outage_wait)
        storms = phase_storm(base, processes, nodes, replicas, checks, figures, args.count, acked_out)
        storms += phase_kill(
            base, processes, nodes, replicas, checks, figures, args.count, acked_out, args.down, args.outage_wait
        )
        phase_verify(base, nodes, checks, figures, storms, 2 * args.count + 1000, acked_out)
    except SetupError as error:
        print(f"SETUP FAILED {error}", flush=True)
        status = 2
    except Exception as error:  # the cleanup below must run whatever happened
        print(f"ERROR {type(error).__name__}: {error}", flush=True)
        status = 2
    finally:
        processes.end_all()
        figures["wall_s"] = round(time.monotonic() - started, 1)
        figures["failed"] = checks.failed
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        if args.keep_dir or status or checks.failed:
            log(f"data dirs and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if status == 0 and checks.failed:
        status = 1
    print(
        f"galera: {'ok' if status == 0 else 'FAILED'} wall_s={figures['wall_s']} "
        f"failed={len(checks.failed)}",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())

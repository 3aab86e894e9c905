"""A real single-node SLURM cluster with accounting, started and stopped by the test suite.

MariaDB -> munged -> slurmdbd -> (register the cluster) -> slurmctld -> slurmd, every daemon
in the foreground as a child process with its config, state and logs under one temporary
folder, and stopped by PID afterwards. Clients (sbatch, sacct, scontrol, submitit,
Snakemake) find the cluster through ``SLURM_CONF``. Needs root and the Debian packages
slurmctld slurmd slurm-client munge slurmdbd mariadb-server (``.ci/run`` installs them).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd", "mariadb-install-db")
CLUSTER = "absvit"
DB_PASSWORD = "absvit-test"


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if not shutil.which(p, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 60, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"test cluster: {what} not ready after {timeout:.0f} s\n{tail}")


def _ok(cmd: list[str], env=None) -> bool:
    return subprocess.run(cmd, capture_output=True, env=env).returncode == 0


class SlurmCluster:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[tuple[str, subprocess.Popen]] = []
        for d in ("etc", "log", "run", "state", "spool", "mysql/data"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.conf = self.base / "etc" / "slurm.conf"
        # not a store an earlier test pointed MLflow at (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI)
        inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.env = {**inherited, "SLURM_CONF": str(self.conf), "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"}

    # -- daemons ---------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.base / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=kwargs.pop("env", self.env),
                                start_new_session=True, **kwargs)
        self.procs.append((name, proc))
        return proc

    def _start_mariadb(self) -> None:
        mysql = self.base / "mysql"
        shutil.chown(mysql, "mysql", "mysql")
        shutil.chown(mysql / "data", "mysql", "mysql")
        self.db_socket = mysql / "mysqld.sock"
        cnf = mysql / "my.cnf"
        cnf.write_text(f"[mysqld]\nuser=mysql\ndatadir={mysql / 'data'}\nsocket={self.db_socket}\n"
                       f"pid-file={mysql / 'mysqld.pid'}\nlog-error={mysql / 'error.log'}\nskip-networking\n"
                       "innodb_buffer_pool_size=512M\ninnodb_log_file_size=32M\n"
                       f"[client]\nsocket={self.db_socket}\n")
        subprocess.run(["mariadb-install-db", f"--defaults-file={cnf}", "--skip-test-db", "--user=mysql"],
                       check=True, capture_output=True, env=self.env)
        self._spawn("mariadbd", ["mariadbd", f"--defaults-file={cnf}"])
        client = ["mariadb", f"--defaults-file={cnf}", "-uroot"]
        _wait(lambda: _ok(client + ["-e", "select 1"]), "MariaDB", log=mysql / "error.log")
        sql = (f"CREATE DATABASE slurm_acct_db; CREATE USER 'slurm'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';")
        subprocess.run(client + ["-e", sql], check=True, capture_output=True)

    def _start_munge(self) -> None:
        if _ok(["sh", "-c", "munge -n | unmunge"]):
            return  # a munged is already serving this machine
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        self._spawn("munged", ["munged", "--foreground", "--force"], user="munge", group="munge")
        _wait(lambda: _ok(["sh", "-c", "munge -n | unmunge"]), "munged", log=self.base / "log" / "munged.out")

    def _write_configs(self) -> None:
        self.ports = {"ctld": _free_port(), "slurmd": _free_port(), "dbd": _free_port()}
        cpus = os.cpu_count() or 1
        mem_mib = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        b = self.base
        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={self.host}
SlurmctldPort={self.ports['ctld']}
SlurmdPort={self.ports['slurmd']}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={b / 'state'}
SlurmdSpoolDir={b / 'spool'}
SlurmctldPidFile={b / 'run' / 'slurmctld.pid'}
SlurmdPidFile={b / 'run' / 'slurmd.pid'}
SlurmctldLogFile={b / 'log' / 'slurmctld.log'}
SlurmdLogFile={b / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports['dbd']}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MailProg=/bin/true
KillWait=5
MinJobAge=600
SchedulerParameters=bf_interval=1
ReturnToService=2
NodeName={self.host} CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={mem_mib} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        dbd = b / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdPort={self.ports['dbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
PidFile={b / 'run' / 'slurmdbd.pid'}
LogFile={b / 'log' / 'slurmdbd.log'}
""")
        dbd.chmod(0o600)

    def start(self) -> "SlurmCluster":
        try:
            self._start_mariadb()
            self._start_munge()
            self._write_configs()
            self._spawn("slurmdbd", ["slurmdbd", "-D"], env={**self.env, "MYSQL_UNIX_PORT": str(self.db_socket)})
            _wait(lambda: _ok(["sacctmgr", "-n", "list", "cluster"], env=self.env), "slurmdbd",
                  log=self.base / "log" / "slurmdbd.log")
            subprocess.run(["sacctmgr", "-i", "add", "cluster", CLUSTER], check=True, capture_output=True, env=self.env)
            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._spawn("slurmd", ["slurmd", "-D"])
            _wait(lambda: self.node_state() == "idle", "the node", log=self.base / "log" / "slurmctld.log")
            _wait(lambda: _ok(["sacct", "-n"], env=self.env), "sacct")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    # -- clients ---------------------------------------------------------------------------

    def run(self, *cmd: str) -> str:
        return subprocess.run(list(cmd), check=True, capture_output=True, text=True, env=self.env).stdout

    def node_state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return out.stdout.strip()

    def job_states(self) -> dict[str, str]:
        """job id -> state of every job's allocation (not its steps), as ``sacct`` reports it."""
        out = self.run("sacct", "-n", "-X", "-P", "-o", "JobID,State")
        return dict(line.split("|", 1) for line in out.splitlines() if line)
